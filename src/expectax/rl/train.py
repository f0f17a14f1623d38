"""REINFORCE training on Gymnasium environments or on the pure-JAX CartPole.

One readable trainer (CleanRL's shape): collect a batch of whole episodes with the current
policy, compute returns-to-go, subtract a baseline, take one Adam step on the REINFORCE loss
(:func:`expectax.rl.losses.reinforce_loss`, the core's magic box), log, checkpoint. Two
backends drive the same update:

- ``"gymnasium"``: any classic-control environment through ``gymnasium.make_vec`` (its
  numpy-vectorised implementation where one exists, e.g. CartPole, else ``sync``); the policy
  acts through one jitted call per step.
- ``"jax"``: CartPole-v1 only, with :mod:`expectax.rl.cartpole`; rollout and update are one
  jitted function (:func:`make_jax_trainer`), which the benchmark vmaps over seeds. The
  rollout is a ``while_loop`` that stops when every episode of the batch has ended.
- ``"auto"`` (the default): ``"jax"`` where a pure-JAX version of the environment exists
  (CartPole-v1), else ``"gymnasium"``.

**Solved** means confirmed: when a training batch's mean return reaches the threshold (or a
periodic evaluation does), a *fresh* evaluation of ``confirm_episodes`` (≥ 100) episodes of
the sampled policy, with keys used for nothing else, must also reach it, by a margin of
``confirm_margin`` standard errors of its own mean (``mean − k·SE ≥ threshold``; ``k = 0``: the
mean alone). Only that confirmation counts; training episodes and evaluation episodes are
counted separately.

Every batch's randomness is derived from ``(seed, batch index, purpose)`` alone, and the state
is a pytree of arrays saved to an ``.npz`` checkpoint (no pickle, written to a temporary file
and renamed), so a run resumed from a checkpoint ends bitwise identical to an uninterrupted one.

This module is the training loop (:func:`train`, :func:`make_jax_trainer`); the pieces it
drives are one idea per module, and their names are importable from here too:
:mod:`~expectax.rl.config` (:class:`Config`, the optimiser), :mod:`~expectax.rl.env_info`
(what an environment is), :mod:`~expectax.rl.rollout` (collecting episodes, both backends),
:mod:`~expectax.rl.learner` (the update), :mod:`~expectax.rl.checkpoints` and
:mod:`~expectax.rl.outputs` (the files in ``--out``, through :mod:`expectax.runio`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from expectax import runio
from expectax.rl import cartpole

# The pieces of the trainer, one idea per module; their names stay importable from here.
from expectax.rl.checkpoints import (  # noqa: F401
    _read_npz,
    _saved_config,
    _unreadable,
    load_checkpoint,
    save_checkpoint,
)
from expectax.rl.config import (  # noqa: F401
    BACKENDS,
    BASELINES,
    JAX_ENVS,
    Config,
    TrainingError,
    make_optimizer,
)
from expectax.rl.env_info import EnvInfo, _policy, make_env_info  # noqa: F401
from expectax.rl.learner import (  # noqa: F401
    TrainState,
    _init_state,
    _leave_one_out,
    _make_update,
    _normalize,
)
from expectax.rl.outputs import (  # noqa: F401
    HISTORY_COLUMNS,
    OUTPUT_FILES,
    check_out_dir,
    plot_curve,
    write_log,
)
from expectax.rl.rollout import (  # noqa: F401
    Batch,
    _check_finite,
    _GymRunner,
    _rollout,
    _sample_with_keys,
    greedy_action,
    jax_rollout,
    mean_and_se,
    sample_actions,
)
from expectax.rl.sharded import EpisodeAxis, check_episode_mesh, shard_replicated

__all__ = [
    "Batch",
    "Config",
    "TrainState",
    "load_checkpoint",
    "make_env_info",
    "make_jax_trainer",
    "save_checkpoint",
    "train",
]

# Purposes of the per-batch keys: training episodes, periodic evaluation, confirmation.
_TRAIN, _EVAL, _CONFIRM = 0, 1, 2


def _batch_key(seed: int, batch: int, purpose: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), batch), purpose)


def _batch_seed(seed: int, batch: int, purpose: int) -> int:
    return int(np.random.SeedSequence([seed, batch, purpose]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------
# The pure-JAX backend.


class JaxTrainer(NamedTuple):
    """Pure functions of the JAX backend (jit them, vmap them over seeds)."""

    init: Callable[[], TrainState]
    rollout: Callable[[Any, jax.Array, int], Batch]
    step: Callable[[TrainState, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
    evaluate: Callable[[Any, jax.Array], jax.Array]
    confirm: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]


def check_trainer_mesh(config: Config, mesh: Any, axis_name: Any = None) -> tuple[Any, Any, int]:
    """Refuse a ``mesh`` the trainer cannot split ``config``'s episodes over: another backend
    than ``"jax"``, or a batch, confirmation or (with ``eval_every``) evaluation size that is
    not a multiple of the axis size. Returns ``(mesh, axis_name, devices)``."""
    if config.resolved_backend != "jax":
        raise ValueError(
            f"mesh (--devices) splits episodes over devices on the pure-JAX backend only "
            f"(CartPole-v1); {config.env_id!r} runs on the {config.resolved_backend} backend: "
            "drop mesh/--devices, or use --env CartPole-v1 --backend jax."
        )
    sizes = {"batch_episodes": config.batch_episodes, "confirm_episodes": config.confirm_episodes}
    if config.eval_every:
        sizes["eval_episodes"] = config.eval_episodes
    return check_episode_mesh(mesh, axis_name, sizes)


def make_jax_trainer(config: Config, *, mesh: Any = None, axis_name: Any = None) -> JaxTrainer:
    """The JAX backend's pure functions for ``config`` (CartPole-v1).

    ``step(state, key)`` collects a batch with the pure-JAX CartPole and applies one update;
    ``evaluate(params, key)`` is the mean return of ``config.eval_episodes`` episodes of the
    sampled policy; ``confirm(params, key)`` is ``(mean, se)`` over ``config.confirm_episodes``:
    the same mean and the standard error of it (sample standard deviation of the episodes'
    returns over ``sqrt(n)``, :func:`~expectax.rl.rollout.mean_and_se`), which the confirmation
    rule ``mean − confirm_margin·se ≥ threshold`` needs. All are jittable and vmappable (e.g. over
    seeds in ``benchmarks/rl_cartpole.py``).

    With ``mesh`` (a ``jax.sharding.Mesh``) and ``axis_name`` (one of its axes; may be omitted
    for a one-axis mesh), ``step``, ``evaluate`` and ``confirm`` split their episodes over that
    axis with ``jax.shard_map`` (:mod:`expectax.rl.sharded`): each device simulates its block of
    the episodes, drawn from the same keys as without a mesh, and every cross-episode
    reduction of the update (batch means, leave-one-out and moving-average baselines,
    advantage normalisation) is a collective. The state enters and leaves replicated; for a
    key, the result equals the single-device one up to the order of float sums over episodes.
    ``batch_episodes`` and ``confirm_episodes`` (and ``eval_episodes`` when ``eval_every`` is
    set) must be multiples of the axis size; otherwise a ``ValueError`` says which sizes
    would do. ``rollout`` stays unsharded.
    """
    config.validate()
    policy = _policy(config)
    optimizer = make_optimizer(config)

    def init():
        return _init_state(config, policy, optimizer, cartpole.OBS_DIM, cartpole.MAX_EPISODE_STEPS)

    def rollout(p, k, n):
        return jax_rollout(policy, p["policy"], k, n)

    if mesh is None:
        if axis_name is not None:
            raise ValueError(
                f"axis_name={axis_name!r} needs mesh: pass mesh=jax.sharding.Mesh(...) too, or "
                "neither."
            )
        update = _make_update(config, policy, optimizer)

        def step(state, key):
            batch = jax_rollout(policy, state.params["policy"], key, config.batch_episodes)
            return update(state, batch)

        def mean_return(params, key, n):
            batch = jax_rollout(policy, params["policy"], key, n)
            return jnp.mean(jnp.sum(batch.rewards, axis=1))

        def confirm(params, key):
            return mean_and_se(jax_rollout(policy, params["policy"], key, config.confirm_episodes))

        return JaxTrainer(
            init, rollout, step, lambda p, k: mean_return(p, k, config.eval_episodes), confirm
        )

    mesh, axis_name, devices = check_trainer_mesh(config, mesh, axis_name)
    ax = EpisodeAxis(config.batch_episodes, axis_name, devices)
    update = _make_update(config, policy, optimizer, ax)

    def step_body(state, key):
        return update(state, _rollout(policy, state.params["policy"], key, ax, False))

    sharded_step = shard_replicated(step_body, mesh, axis_name, 2)

    def sharded_mean_return(n: int, name: str, with_se: bool = False):
        check_episode_mesh(mesh, axis_name, {name: n})
        eax = EpisodeAxis(n, axis_name, devices)

        def body(params, key):
            batch = _rollout(policy, params["policy"], key, eax, False)
            stats = mean_and_se(batch, eax)  # the SE's reduction is a psum over the devices
            return stats if with_se else stats[0]

        return shard_replicated(body, mesh, axis_name, 2)

    confirm = sharded_mean_return(config.confirm_episodes, "confirm_episodes", with_se=True)

    def evaluate(params, key):  # eval_episodes is checked when evaluate is used
        return sharded_mean_return(config.eval_episodes, "eval_episodes")(params, key)

    return JaxTrainer(init, rollout, sharded_step, evaluate, confirm)


# --------------------------------------------------------------------------------------------
# The driver.


def confirmed(mean: float, se: float, margin: float, threshold: float) -> bool:
    """The confirmation rule: ``mean − margin·se ≥ threshold`` (``mean`` and ``se`` of a fresh
    evaluation). With ``margin == 0`` the mean alone decides, also where ``se`` is unknown (NaN:
    a row of a checkpoint written before the SE was recorded)."""
    if not np.isfinite(mean):
        return False
    return bool((mean - margin * se if margin else mean) >= threshold)


def train(
    config: Config,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    checkpoint_every: int = 1,
    throttle: float = 0.0,
    callback: Callable[[dict[str, float]], None] | None = None,
    mesh: Any = None,
    axis_name: Any = None,
) -> dict[str, Any]:
    """Train REINFORCE with ``config``; write checkpoint, CSV log, summary and curve.

    Args:
      config: the run's settings.
      out_dir: where ``checkpoint.npz``, ``log.csv``, ``summary.json`` and ``curve.png`` go
        (``None``: nothing is written and ``resume`` is not possible). A directory that
        already holds a run is refused unless ``resume`` or ``overwrite``.
      resume: continue from ``out_dir/checkpoint.npz`` if it exists.
      overwrite: replace the run in ``out_dir`` (ignored with ``resume``).
      progress: show a rich progress bar.
      checkpoint_every: save every this many batches (and at the end, and on Ctrl-C); ≥ 1.
      throttle: seconds to sleep after each batch (for tests that kill a run part-way).
      callback: called after each batch with that batch's log row (a dict by column).
      mesh, axis_name: split each batch's episodes (and the evaluations') over this axis of a
        ``jax.sharding.Mesh`` (JAX backend only; see :func:`make_jax_trainer`). The numbers
        equal the single-device run's up to float rounding, so a run may resume on another
        number of devices (not bitwise).

    Returns:
      A dict with ``state``, ``history`` (lists per column), ``episodes_to_solve`` (training
      episodes when a fresh evaluation first confirmed the threshold; ``None`` if never),
      ``solved``, ``confirm_return`` and ``confirm_se`` (the confirming evaluation's mean and its
      standard error), ``eval_episodes`` (evaluation episodes used, not counted
      in training), ``final_eval`` (the final policy's fresh evaluation when training did not
      stop on a confirmation, else ``None``), ``interrupted``, ``wall_time`` and ``threshold``.

    Raises:
      ValueError: bad settings, an unusable ``out_dir`` or checkpoint;
        :class:`TrainingError` (a ``ValueError``) when the loss or the parameters become NaN
        or inf, or the gradient is exactly zero for ``config.max_zero_grad_batches`` batches.
    """
    config.validate()
    if mesh is not None:  # refused before any output is written
        check_trainer_mesh(config, mesh, axis_name)
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(
            f"checkpoint_every must be an integer ≥ 1 (batches between checkpoints), got "
            f"{checkpoint_every!r}."
        )
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        check_out_dir(out, resume=resume, overwrite=overwrite)
    info = make_env_info(config.env_id)
    policy = _policy(config, info)
    threshold = (
        config.solve_threshold if config.solve_threshold is not None else info.reward_threshold
    )
    optimizer = make_optimizer(config)
    obs_dim = int(info.obs_space.shape[0])
    state = _init_state(config, policy, optimizer, obs_dim, info.max_steps)
    history: dict[str, list] = {c: [] for c in HISTORY_COLUMNS}
    ckpt = out / "checkpoint.npz" if out is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state, history = load_checkpoint(ckpt, state, config)

    if config.resolved_backend == "jax":
        trainer = make_jax_trainer(config, mesh=mesh, axis_name=axis_name)
        jstep = jax.jit(trainer.step)
        jeval = jax.jit(trainer.evaluate)
        jconfirm = jax.jit(trainer.confirm)
        runner = None

        def do_batch(state, b):
            return jstep(state, _batch_key(config.seed, b, _TRAIN))

        def do_eval(params, b, purpose):
            """``(mean, se)`` of a fresh evaluation (``se`` NaN for a periodic one)."""
            key = _batch_key(config.seed, b, purpose)
            if purpose == _CONFIRM:
                mean, se = jconfirm(params, key)
                return float(mean), float(se)
            return float(jeval(params, key)), math.nan

    else:
        runner = _GymRunner(info, policy)
        update = jax.jit(_make_update(config, policy, optimizer))

        def do_batch(state, b):
            batch = runner.rollout(
                state.params,
                _batch_key(config.seed, b, _TRAIN),
                _batch_seed(config.seed, b, _TRAIN),
                config.batch_episodes,
                f"training batch {b}",
            )
            return update(state, batch)

        def do_eval(params, b, purpose):
            """``(mean, se)`` of a fresh evaluation (``se`` NaN for a periodic one)."""
            n = config.confirm_episodes if purpose == _CONFIRM else config.eval_episodes
            batch = runner.rollout(
                params,
                _batch_key(config.seed, b, purpose),
                _batch_seed(config.seed, b, purpose),
                n,
                f"evaluation after batch {b}",
            )
            if purpose == _CONFIRM:
                mean, se = mean_and_se(batch)
                return float(mean), float(se)
            return float(jnp.mean(jnp.sum(batch.rewards, axis=1))), math.nan

    def solved_at(history):
        """``(episodes, mean, se)`` of the first confirmation that held, or ``None``s."""
        if threshold is None:
            return None, None, None
        cols = ("episodes", "confirm_return", "confirm_se")
        for ep, c, se in zip(*(history[c] for c in cols), strict=True):
            if confirmed(c, se, config.confirm_margin, threshold):
                return int(ep), float(c), float(se)
        return None, None, None

    def zero_grad_run(history):
        n = 0
        for g in reversed(history["grad_norm"]):
            if g != 0.0:
                break
            n += 1
        return n

    def save():
        if out is not None:
            save_checkpoint(ckpt, state, history, config)
            write_log(out / "log.csv", history)

    interrupted = False
    t0 = time.perf_counter() - (history["wall_time"][-1] if history["wall_time"] else 0.0)
    bar = runio.progress(quiet=not progress)
    try:
        try:
            with bar:
                task = bar.add_task(
                    f"REINFORCE {config.env_id}",
                    total=config.num_batches,
                    completed=int(state.batch),
                )
                while int(state.batch) < config.num_batches and not (
                    config.stop_when_solved and solved_at(history)[0] is not None
                ):
                    b = int(state.batch)
                    new_state, metrics = do_batch(state, b)
                    loss = float(metrics["loss"])
                    if not (math.isfinite(loss) and bool(metrics["params_finite"])):
                        what = "the loss" if not math.isfinite(loss) else "the parameters"
                        raise TrainingError(
                            f"training diverged at batch {b + 1}: {what} became NaN or inf "
                            f"(learning rate {config.learning_rate:g}); lower --lr. "
                            + (
                                f"The checkpoint in {str(out)!r} holds the last finite batch."
                                if out is not None
                                else ""
                            )
                        )
                    train_return = float(metrics["train_return"])
                    ev = float("nan")
                    if config.eval_every and (b + 1) % config.eval_every == 0:
                        ev, _ = do_eval(new_state.params, b, _EVAL)
                    n_eval = config.eval_episodes * int(np.isfinite(ev))
                    conf = conf_se = float("nan")
                    # confirmations decide "solved"; once one has held, none are needed
                    solved_before = solved_at(history)[0] is not None
                    if (
                        threshold is not None
                        and not solved_before
                        and (train_return >= threshold or (np.isfinite(ev) and ev >= threshold))
                    ):
                        conf, conf_se = do_eval(new_state.params, b, _CONFIRM)
                        n_eval += config.confirm_episodes
                    state = new_state
                    prev_eval = history["eval_episodes"][-1] if history["eval_episodes"] else 0
                    row = (
                        b + 1,
                        int(state.episodes),
                        train_return,
                        ev,
                        conf,
                        conf_se,
                        prev_eval + n_eval,
                        loss,
                        float(metrics["grad_norm"]),
                        time.perf_counter() - t0,
                    )
                    for c, v in zip(HISTORY_COLUMNS, row, strict=True):
                        history[c].append(v)
                    if (b + 1) % checkpoint_every == 0:
                        save()
                    bar.update(
                        task,
                        completed=b + 1,
                        description=f"REINFORCE {config.env_id} | train {train_return:7.1f}"
                        + (f" | confirm {conf:7.1f} ± {conf_se:.1f}" if np.isfinite(conf) else ""),
                    )
                    if callback is not None:
                        callback(dict(zip(HISTORY_COLUMNS, row, strict=True)))
                    # a solved policy whose episodes all reach the maximum has a zero gradient too
                    if not solved_before and zero_grad_run(history) >= config.max_zero_grad_batches:
                        save()
                        raise TrainingError(
                            f"the gradient was exactly zero for {config.max_zero_grad_batches} "
                            f"batches in a row (up to batch {b + 1}): every episode of each batch "
                            f"had the same return (last batch mean {train_return:g}), so every "
                            "advantage is 0 and REINFORCE cannot learn. The policy never found a "
                            "better episode: try another --seed, a larger --batch-episodes, "
                            "--input-gain or --entropy-coef."
                        )
                    if throttle:
                        time.sleep(throttle)
        except KeyboardInterrupt:
            interrupted = True
        ets, conf, conf_se = solved_at(history)
        final_eval = None
        if not interrupted and history["episodes"] and not (config.stop_when_solved and ets):
            final_eval, _ = do_eval(state.params, config.num_batches + 1, _CONFIRM)
    finally:
        if runner is not None:
            runner.close()
    save()
    eval_used = int(history["eval_episodes"][-1]) if history["eval_episodes"] else 0
    if final_eval is not None:
        eval_used += config.confirm_episodes
    summary = {
        "env_id": config.env_id,
        "seed": config.seed,
        "threshold": threshold,
        "solved": ets is not None,
        "episodes_to_solve": ets,
        "confirm_return": conf,
        "confirm_se": conf_se,
        "training_episodes": int(state.episodes),
        "eval_episodes": eval_used,
        "final_eval": final_eval,
        "interrupted": interrupted,
        "wall_time": history["wall_time"][-1] if history["wall_time"] else 0.0,
        "config": dataclasses.asdict(config),
    }
    if out is not None:
        runio.write_json(out / "summary.json", summary)
        if history["episodes"]:
            plot_curve(
                out / "curve.png",
                history,
                f"REINFORCE on {config.env_id} (seed {config.seed})",
                threshold,
            )
    return {"state": state, "history": history, **summary}


class _CallableModule(types.ModuleType):
    """``expectax.rl.train`` names both this module and its :func:`train`: importing the module
    makes the package attribute the module, so the module calls the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
