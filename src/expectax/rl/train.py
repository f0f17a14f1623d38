"""REINFORCE training on Gymnasium environments or on the pure-JAX CartPole.

One readable trainer (CleanRL's shape): collect a batch of whole episodes with the current
policy, compute returns-to-go, subtract a baseline, take one Adam step on the REINFORCE loss
(:func:`expectax.rl.losses.reinforce_loss`, the core's magic box), evaluate now and then, log,
checkpoint. Two backends drive the same update:

- ``"gymnasium"``: any classic-control environment through ``gymnasium.make_vec`` (its
  numpy-vectorised implementation where one exists, e.g. CartPole, else ``sync``); the policy
  acts through one jitted call per step.
- ``"jax"``: CartPole-v1 only, with :mod:`expectax.rl.cartpole`; rollout, update and evaluation
  are one jitted function (:func:`make_jax_trainer`), which the benchmark vmaps over seeds.
- ``"auto"`` (the default): ``"jax"`` where a pure-JAX version of the environment exists
  (CartPole-v1), else ``"gymnasium"``.

Every batch's randomness is derived from ``(seed, batch index)`` alone, and the state is a
pytree of arrays saved to an ``.npz`` checkpoint (no pickle, written to a temporary file and
renamed), so a run resumed from a checkpoint ends bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from expectax.estimators.base import log_prob
from expectax.rl import cartpole
from expectax.rl.losses import (
    MovingAverageState,
    discounted_returns,
    entropy_loss,
    leave_one_out_baseline,
    moving_average_baseline,
    moving_average_init,
    normalize_advantages,
    reinforce_loss,
    value_loss,
)
from expectax.rl.policies import Policy, mlp_apply, mlp_init, policy_for_space

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

BASELINES = ("none", "moving_average", "leave_one_out", "critic")
BACKENDS = ("auto", "gymnasium", "jax")
JAX_ENVS = ("CartPole-v1",)
HISTORY_COLUMNS = ("batch", "episodes", "train_return", "eval_return", "loss", "wall_time")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every hyperparameter of a run (each is a flag of ``expectax rl``).

    The defaults solve CartPole-v1 (see ``docs/rl.md``).
    """

    env_id: str = "CartPole-v1"
    backend: str = "auto"
    policy: str = "auto"
    hidden: tuple[int, ...] = (128,)
    input_gain: float = 2.0
    episodes: int = 200
    batch_episodes: int = 8
    learning_rate: float = 1e-2
    gamma: float = 0.99
    baseline: str = "leave_one_out"
    normalize_advantages: bool = False
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    eval_every: int = 1
    eval_episodes: int = 100
    solve_threshold: float | None = None
    stop_when_solved: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field."""
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}.")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}.")
        if self.batch_episodes < 1 or (
            self.baseline == "leave_one_out" and self.batch_episodes < 2
        ):
            raise ValueError(
                f"batch_episodes must be ≥ 2 with the leave-one-out baseline (≥ 1 otherwise), "
                f"got {self.batch_episodes}."
            )
        if self.episodes < self.batch_episodes:
            raise ValueError(
                f"episodes ({self.episodes}) must be at least batch_episodes "
                f"({self.batch_episodes})."
            )
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        if self.eval_every < 0 or self.eval_episodes < 1:
            raise ValueError("eval_every must be ≥ 0 (0: never) and eval_episodes ≥ 1.")
        if self.backend == "jax" and self.env_id not in JAX_ENVS:
            raise ValueError(
                f"backend 'jax' implements only CartPole-v1, got env {self.env_id!r}: use "
                "--backend gymnasium for other environments."
            )

    @property
    def resolved_backend(self) -> str:
        """``"jax"`` for ``backend="auto"`` on an environment with a pure-JAX version (CartPole-v1),
        else ``"gymnasium"``."""
        if self.backend == "auto":
            return "jax" if self.env_id in JAX_ENVS else "gymnasium"
        return self.backend

    @property
    def num_batches(self) -> int:
        return self.episodes // self.batch_episodes


class TrainState(NamedTuple):
    """Everything a run carries from batch to batch (all arrays: it is the checkpoint)."""

    params: Any  # {"policy": ..., "critic": ... or absent}
    opt_state: Any
    baseline_state: MovingAverageState
    batch: jax.Array  # int32 batches done
    episodes: jax.Array  # int32 training episodes consumed


class Batch(NamedTuple):
    """``E`` episodes padded to ``T`` steps."""

    obs: jax.Array  # (E, T, obs_dim)
    actions: jax.Array  # (E, T) or (E, T, action_dim)
    rewards: jax.Array  # (E, T)
    mask: jax.Array  # (E, T) 1 where the step happened


@dataclasses.dataclass(frozen=True)
class EnvInfo:
    """What the trainer needs to know about an environment."""

    env_id: str
    obs_space: Any
    action_space: Any
    max_steps: int
    reward_threshold: float | None
    vectorization_mode: str


def make_env_info(env_id: str) -> EnvInfo:
    """Look an environment up in Gymnasium's registry; unknown ids list close matches."""
    import gymnasium as gym

    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown environment id {env_id!r} (not in gymnasium's registry).{hint} "
            'List them with `python -c "import gymnasium; gymnasium.pprint_registry()"`.'
        )
    spec = gym.spec(env_id)
    env = gym.make(env_id)
    try:
        max_steps = spec.max_episode_steps
        if max_steps is None:
            raise ValueError(
                f"environment {env_id!r} has no time limit (max_episode_steps); REINFORCE "
                "needs episodes that end: register it with max_episode_steps."
            )
        mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
        return EnvInfo(
            env_id,
            env.observation_space,
            env.action_space,
            int(max_steps),
            spec.reward_threshold,
            mode,
        )
    finally:
        env.close()


# --------------------------------------------------------------------------------------------
# The update: shared by both backends.


def _make_update(config: Config, policy: Policy, optimizer: optax.GradientTransformation):
    def loss_fn(params, batch: Batch, baseline_state):
        mask = batch.mask
        returns = jax.vmap(discounted_returns, in_axes=(0, None))(batch.rewards, config.gamma)
        apply = jax.vmap(jax.vmap(policy.apply, in_axes=(None, 0)), in_axes=(None, 0))
        d = apply(params["policy"], batch.obs)
        logp = log_prob(d, batch.actions)  # numpyro's Bernoulli-logits gradient is wrong at 0
        new_baseline_state = baseline_state
        extra = 0.0
        if config.baseline == "none":
            baseline = jnp.zeros_like(returns)
        elif config.baseline == "leave_one_out":
            baseline = leave_one_out_baseline(returns, mask)
        elif config.baseline == "moving_average":
            b_t, new_baseline_state = moving_average_baseline(baseline_state, returns, mask)
            baseline = jnp.broadcast_to(b_t, returns.shape)
        else:  # critic
            v = jax.vmap(jax.vmap(mlp_apply, in_axes=(None, 0)), in_axes=(None, 0))(
                params["critic"], batch.obs
            )[..., 0]
            baseline = jax.lax.stop_gradient(v)
            extra = config.value_coef * jnp.mean(jax.vmap(value_loss)(v, returns, mask))
        if config.normalize_advantages:
            adv = normalize_advantages(returns - baseline, mask)
            pg = jax.vmap(reinforce_loss, in_axes=(0, 0, None, 0))(logp, adv, None, mask)
        else:
            pg = jax.vmap(reinforce_loss)(logp, returns, baseline, mask)
        loss = jnp.mean(pg) + extra
        if config.entropy_coef:
            loss = loss + config.entropy_coef * jnp.mean(jax.vmap(entropy_loss)(d.entropy(), mask))
        return loss, new_baseline_state

    def update(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        (loss, baseline_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, state.baseline_state
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new = TrainState(
            params,
            opt_state,
            baseline_state,
            state.batch + 1,
            state.episodes + batch.rewards.shape[0],
        )
        train_return = jnp.mean(jnp.sum(batch.rewards * batch.mask, axis=1))
        return new, {"loss": loss, "train_return": train_return}

    return update


def _init_state(config: Config, policy: Policy, optimizer, obs_dim: int, max_steps: int):
    key = jax.random.key(config.seed)
    k_policy, k_critic = jax.random.split(jax.random.fold_in(key, 2**31 - 1))
    params = {"policy": policy.init(k_policy)}
    if config.baseline == "critic":
        params["critic"] = mlp_init(k_critic, (obs_dim, *config.hidden, 1), final_scale=1.0)
    return TrainState(
        params,
        optimizer.init(params),
        moving_average_init(max_steps),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32),
    )


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


def _jax_rollout(policy: Policy, params, key: jax.Array, num_episodes: int) -> Batch:
    """``num_episodes`` CartPole episodes of up to 500 steps, padded (one scan over time)."""
    T = cartpole.MAX_EPISODE_STEPS
    k_reset, k_act = jax.random.split(key)
    states, obs0 = jax.vmap(cartpole.reset)(jax.random.split(k_reset, num_episodes))
    vstep = jax.vmap(cartpole.step)

    def act(o, k):
        return policy.apply(params, o).sample(k)

    def body(carry, k):
        states, obs, done = carry
        actions = jax.vmap(act)(obs, jax.random.split(k, num_episodes))
        states, ts = vstep(states, actions)
        valid = ~done
        out = (obs, actions, ts.reward * valid, valid.astype(jnp.float32))
        done = done | ts.terminated | ts.truncated
        return (states, ts.obs, done), out

    init = (states, obs0, jnp.zeros((num_episodes,), bool))
    _, (obs, actions, rewards, mask) = jax.lax.scan(body, init, jax.random.split(k_act, T))
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    return Batch(swap(obs), swap(actions), swap(rewards), swap(mask))


def make_jax_trainer(config: Config) -> JaxTrainer:
    """The JAX backend's pure functions for ``config`` (CartPole-v1).

    ``step(state, key)`` collects a batch with the pure-JAX CartPole and applies one update;
    ``evaluate(params, key)`` is the mean return of ``config.eval_episodes`` episodes of the
    sampled policy. Both are jittable and vmappable (e.g. over seeds in
    ``benchmarks/rl_cartpole.py``).
    """
    import gymnasium as gym

    config.validate()
    obs_space = gym.spaces.Box(-np.inf, np.inf, (cartpole.OBS_DIM,), np.float32)
    policy = policy_for_space(
        config.policy,
        obs_space,
        gym.spaces.Discrete(cartpole.NUM_ACTIONS),
        config.hidden,
        config.input_gain,
    )
    optimizer = optax.adam(config.learning_rate)
    update = _make_update(config, policy, optimizer)

    def init():
        return _init_state(config, policy, optimizer, cartpole.OBS_DIM, cartpole.MAX_EPISODE_STEPS)

    def step(state, key):
        batch = _jax_rollout(policy, state.params["policy"], key, config.batch_episodes)
        return update(state, batch)

    def evaluate(params, key):
        batch = _jax_rollout(policy, params["policy"], key, config.eval_episodes)
        return jnp.mean(jnp.sum(batch.rewards, axis=1))

    return JaxTrainer(init, lambda p, k, n: _jax_rollout(policy, p["policy"], k, n), step, evaluate)


# --------------------------------------------------------------------------------------------
# The Gymnasium backend.


class _GymRunner:
    """Collects padded batches of whole episodes from a Gymnasium vector environment."""

    def __init__(self, info: EnvInfo, policy: Policy):
        import gymnasium as gym

        self.info = info
        self.gym = gym
        self.envs: dict[int, Any] = {}
        self.continuous = isinstance(info.action_space, gym.spaces.Box)
        if self.continuous:
            self.low = np.asarray(info.action_space.low)
            self.high = np.asarray(info.action_space.high)

        def act(params, obs, key):
            keys = jax.random.split(key, obs.shape[0])
            return jax.vmap(lambda o, k: policy.apply(params["policy"], o).sample(k))(obs, keys)

        self.act = jax.jit(act)

    def _envs(self, n: int):
        if n not in self.envs:
            self.envs[n] = self.gym.make_vec(
                self.info.env_id, num_envs=n, vectorization_mode=self.info.vectorization_mode
            )
        return self.envs[n]

    def close(self) -> None:
        for envs in self.envs.values():
            envs.close()

    def rollout(self, params, key: jax.Array, env_seed: int, n: int, where: str) -> Batch:
        envs = self._envs(n)
        T = self.info.max_steps
        obs, _ = envs.reset(seed=env_seed)
        obs_dim = obs.shape[1]
        act_shape = tuple(self.info.action_space.shape)
        obs_buf = np.zeros((n, T, obs_dim), np.float32)
        act_buf = np.zeros((n, T, *act_shape), np.float32 if self.continuous else np.int32)
        rew_buf = np.zeros((n, T), np.float32)
        mask = np.zeros((n, T), np.float32)
        done = np.zeros(n, bool)
        for t in range(T):
            _check_finite(obs, "observation", self.info.env_id, where, t)
            actions = np.asarray(
                self.act(params, jnp.asarray(obs, jnp.float32), jax.random.fold_in(key, t))
            )
            valid = ~done
            obs_buf[valid, t] = obs[valid]
            act_buf[valid, t] = actions[valid]
            mask[valid, t] = 1.0
            env_actions = np.clip(actions, self.low, self.high) if self.continuous else actions
            obs, reward, terminated, truncated, _ = envs.step(env_actions)
            _check_finite(np.asarray(reward)[valid], "reward", self.info.env_id, where, t)
            rew_buf[valid, t] = np.asarray(reward, np.float32)[valid]
            done = done | terminated | truncated
            if done.all():
                break
        return Batch(
            jnp.asarray(obs_buf), jnp.asarray(act_buf), jnp.asarray(rew_buf), jnp.asarray(mask)
        )


def _check_finite(x: np.ndarray, what: str, env_id: str, where: str, t: int) -> None:
    x = np.asarray(x)
    if not np.all(np.isfinite(x)):
        bad = x.ravel()[~np.isfinite(x.ravel())][0]
        raise ValueError(
            f"environment {env_id!r} returned a non-finite {what} ({bad}) "
            f"at step {t} of {where}. REINFORCE cannot learn from NaN or inf: fix the environment, "
            "or wrap it (e.g. gymnasium.wrappers.TransformReward / TransformObservation) to keep "
            "values finite."
        )


# --------------------------------------------------------------------------------------------
# Checkpoints.


def save_checkpoint(
    path: str | os.PathLike, state: TrainState, history: dict, config: Config
) -> None:
    """Write ``state``, the history and the config to ``path`` (.npz, no pickle) atomically.

    The file is written next to ``path`` under a temporary name, flushed to disk, then renamed
    over ``path`` (``os.replace``), so a crash leaves either the old or the new checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"state_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    for col in HISTORY_COLUMNS:
        arrays[f"history_{col}"] = np.asarray(history[col], np.float64)
    arrays["config"] = np.array(json.dumps(dataclasses.asdict(config), sort_keys=True))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, template: TrainState, config: Config):
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``template``."""
    with np.load(path, allow_pickle=False) as data:
        saved = json.loads(str(data["config"]))
        mine = json.loads(json.dumps(dataclasses.asdict(config), sort_keys=True))
        differ = sorted(k for k in mine if k not in ("episodes",) and saved.get(k) != mine[k])
        if differ:
            raise ValueError(
                f"checkpoint {str(path)!r} was written with different settings ({', '.join(differ)}"
                f": {[saved.get(k) for k in differ]} vs now {[mine[k] for k in differ]}); resume "
                "with the same flags or start a new run in another --out directory."
            )
        leaves, treedef = jax.tree_util.tree_flatten(template)
        loaded = [data[f"state_{i:04d}"] for i in range(len(leaves))]
        for a, b in zip(leaves, loaded, strict=True):
            if np.shape(a) != b.shape or np.asarray(a).dtype != b.dtype:
                raise ValueError(f"checkpoint {str(path)!r} does not match this model's shapes.")
        state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in loaded])
        history = {c: list(data[f"history_{c}"]) for c in HISTORY_COLUMNS}
    return state, history


def _write_csv(path: Path, history: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HISTORY_COLUMNS)
        for row in zip(*(history[c] for c in HISTORY_COLUMNS), strict=True):
            w.writerow([int(row[0]), int(row[1]), *(f"{v:.6g}" for v in row[2:])])
    os.replace(tmp, path)


def plot_curve(path: Path, history: dict, title: str, threshold: float | None) -> None:
    """Learning curve PNG: training-batch returns and evaluation returns against episodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ep = np.asarray(history["episodes"])
    ax.plot(ep, history["train_return"], label="training batch mean", alpha=0.7)
    ev = np.asarray(history["eval_return"])
    ok = np.isfinite(ev)
    if ok.any():
        ax.plot(ep[ok], ev[ok], "o-", ms=3, label="evaluation mean (sampled policy)")
    if threshold is not None:
        ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"solved ({threshold:g})")
    ax.set_xlabel("training episodes")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The driver.


def train(
    config: Config,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    checkpoint_every: int = 1,
    throttle: float = 0.0,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train REINFORCE with ``config``; write checkpoint, CSV log and curve under ``out_dir``.

    Args:
      config: the run's settings.
      out_dir: where ``checkpoint.npz``, ``log.csv`` and ``curve.png`` go (``None``: nothing
        is written and ``resume`` is not possible).
      resume: continue from ``out_dir/checkpoint.npz`` if it exists.
      progress: show a rich progress bar.
      checkpoint_every: save every this many batches (and at the end, and on Ctrl-C).
      throttle: seconds to sleep after each batch (for tests that kill a run part-way).
      callback: called after each batch with that batch's log row (a dict by column).

    Returns:
      A dict with ``state``, ``history`` (lists per column), ``episodes_to_solve`` (``None``
      if not solved), ``solved``, ``interrupted`` and ``wall_time``.
    """
    config.validate()
    info = make_env_info(config.env_id)
    policy = policy_for_space(
        config.policy, info.obs_space, info.action_space, config.hidden, config.input_gain
    )
    threshold = (
        config.solve_threshold if config.solve_threshold is not None else info.reward_threshold
    )
    optimizer = optax.adam(config.learning_rate)
    obs_dim = int(info.obs_space.shape[0])
    state = _init_state(config, policy, optimizer, obs_dim, info.max_steps)
    history: dict[str, list] = {c: [] for c in HISTORY_COLUMNS}
    out = Path(out_dir) if out_dir is not None else None
    ckpt = out / "checkpoint.npz" if out is not None else None
    if resume and ckpt is not None and ckpt.exists():
        state, history = load_checkpoint(ckpt, state, config)

    if config.resolved_backend == "jax":
        trainer = make_jax_trainer(config)
        jstep = jax.jit(trainer.step)
        jeval = jax.jit(trainer.evaluate)
        runner = None

        def do_batch(state, b):
            st, m = jstep(state, _batch_key(config.seed, b, 0))
            return st, m

        def do_eval(params, b):
            return float(jeval(params, _batch_key(config.seed, b, 1)))

    else:
        runner = _GymRunner(info, policy)
        update = jax.jit(_make_update(config, policy, optimizer))

        def do_batch(state, b):
            batch = runner.rollout(
                state.params,
                _batch_key(config.seed, b, 0),
                _batch_seed(config.seed, b, 0),
                config.batch_episodes,
                f"training batch {b}",
            )
            return update(state, batch)

        def do_eval(params, b):
            batch = runner.rollout(
                params,
                _batch_key(config.seed, b, 1),
                _batch_seed(config.seed, b, 1),
                config.eval_episodes,
                f"evaluation after batch {b}",
            )
            return float(jnp.mean(jnp.sum(batch.rewards, axis=1)))

    def solved_at(history):
        if threshold is None:
            return None
        for ep, ev in zip(history["episodes"], history["eval_return"], strict=True):
            if np.isfinite(ev) and ev >= threshold:
                return int(ep)
        return None

    def save():
        if out is not None:
            save_checkpoint(ckpt, state, history, config)
            _write_csv(out / "log.csv", history)

    interrupted = False
    t0 = time.perf_counter() - (history["wall_time"][-1] if history["wall_time"] else 0.0)
    bar = _progress(progress, config)
    try:
        with bar:
            task = bar.add_task(
                f"REINFORCE {config.env_id}", total=config.num_batches, completed=int(state.batch)
            )
            while int(state.batch) < config.num_batches and not (
                config.stop_when_solved and solved_at(history) is not None
            ):
                b = int(state.batch)
                new_state, metrics = do_batch(state, b)
                ev = float("nan")
                if config.eval_every and (b + 1) % config.eval_every == 0:
                    ev = do_eval(new_state.params, b)
                state = new_state
                row = (
                    b + 1,
                    int(state.episodes),
                    float(metrics["train_return"]),
                    ev,
                    float(metrics["loss"]),
                    time.perf_counter() - t0,
                )
                for c, v in zip(HISTORY_COLUMNS, row, strict=True):
                    history[c].append(v)
                if (b + 1) % checkpoint_every == 0:
                    save()
                bar.update(
                    task,
                    completed=b + 1,
                    description=f"REINFORCE {config.env_id} | train {row[2]:7.1f} | eval {ev:7.1f}",
                )
                if callback is not None:
                    callback(dict(zip(HISTORY_COLUMNS, row, strict=True)))
                if throttle:
                    time.sleep(throttle)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if runner is not None:
            runner.close()
    save()
    if out is not None and history["episodes"]:
        plot_curve(
            out / "curve.png",
            history,
            f"REINFORCE on {config.env_id} (seed {config.seed})",
            threshold,
        )
    return {
        "state": state,
        "history": history,
        "episodes_to_solve": solved_at(history),
        "solved": solved_at(history) is not None,
        "interrupted": interrupted,
        "wall_time": history["wall_time"][-1] if history["wall_time"] else 0.0,
        "threshold": threshold,
    }


def _progress(enabled: bool, config: Config):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
    )
