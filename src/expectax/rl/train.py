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
the sampled policy, with keys used for nothing else, must also reach it. Only that confirmation
counts; training episodes and evaluation episodes are counted separately.

Every batch's randomness is derived from ``(seed, batch index, purpose)`` alone, and the state
is a pytree of arrays saved to an ``.npz`` checkpoint (no pickle, written to a temporary file
and renamed), so a run resumed from a checkpoint ends bitwise identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import time
import types
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from expectax import runio
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

BASELINES = ("none", "moving_average", "leave_one_out", "critic")
BACKENDS = ("auto", "gymnasium", "jax")
JAX_ENVS = ("CartPole-v1",)
HISTORY_COLUMNS = (
    "batch",
    "episodes",
    "train_return",
    "eval_return",
    "confirm_return",
    "eval_episodes",
    "loss",
    "grad_norm",
    "wall_time",
)
# Purposes of the per-batch keys: training episodes, periodic evaluation, confirmation.
_TRAIN, _EVAL, _CONFIRM = 0, 1, 2


class TrainingError(ValueError):
    """Training stopped because it cannot go on usefully (NaN/inf, a gradient stuck at zero)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every hyperparameter of a run (each is a flag of ``expectax rl``).

    The defaults solve CartPole-v1 (see ``docs/rl.md`` for how often, on held-out seeds).
    """

    env_id: str = "CartPole-v1"
    backend: str = "auto"
    policy: str = "auto"
    hidden: tuple[int, ...] = (128,)
    input_gain: float = 3.0
    episodes: int = 200
    batch_episodes: int = 4
    learning_rate: float = 1e-2
    lr_final_fraction: float = 1.0
    adam_b1: float = 0.5  # less momentum than Adam's 0.9: fewer collapses (docs/rl.md)
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = None
    gamma: float = 0.99
    baseline: str = "leave_one_out"
    normalize_advantages: bool = False
    entropy_coef: float = 0.0
    value_coef: float = 0.5
    eval_every: int = 0
    eval_episodes: int = 100
    confirm_episodes: int = 100
    solve_threshold: float | None = None
    stop_when_solved: bool = True
    max_zero_grad_batches: int = 20
    late_return: float | None = None
    late_batch_factor: int = 1
    skip_zero_grad_steps: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and what to do."""
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}.")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {self.baseline!r}.")
        if not self.hidden or any(int(h) < 1 for h in self.hidden):
            raise ValueError(
                f"hidden sizes must be positive integers (e.g. --hidden 128), got "
                f"{list(self.hidden)}."
            )
        for name in ("episodes", "batch_episodes", "eval_episodes"):
            v = getattr(self, name)
            if v < 1:
                raise ValueError(f"{name} must be ≥ 1, got {v}.")
        if self.confirm_episodes < 100:
            raise ValueError(
                f"confirm_episodes must be ≥ 100 (a smaller evaluation is too noisy to call a "
                f"run solved), got {self.confirm_episodes}."
            )
        if self.baseline == "leave_one_out" and self.batch_episodes < 2:
            raise ValueError(
                f"batch_episodes must be ≥ 2 with the leave-one-out baseline, got "
                f"{self.batch_episodes}: use --batch-episodes 2 or more, or another --baseline."
            )
        if self.episodes < self.batch_episodes:
            raise ValueError(
                f"episodes ({self.episodes}) must be at least batch_episodes "
                f"({self.batch_episodes})."
            )
        if not 0.0 <= self.lr_final_fraction <= 1.0:
            raise ValueError(f"lr_final_fraction must be in [0, 1], got {self.lr_final_fraction}.")
        for name in ("adam_b1", "adam_b2"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                flag = name.replace("_", "-")
                raise ValueError(f"{name} must be in [0, 1), got {v}: e.g. --{flag} 0.5.")
        if not (math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ValueError(
                f"adam_eps must be a positive finite number, got {self.adam_eps}: e.g. "
                "--adam-eps 1e-8."
            )
        if self.max_grad_norm is not None and not (
            math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0
        ):
            raise ValueError(
                f"max_grad_norm must be a positive finite number (or None: no clipping), got "
                f"{self.max_grad_norm}: e.g. --max-grad-norm 100, or leave the flag out."
            )
        for name in ("learning_rate", "gamma", "input_gain", "entropy_coef", "value_coef"):
            v = getattr(self, name)
            if not math.isfinite(v):
                flag = "lr" if name == "learning_rate" else name.replace("_", "-")
                raise ValueError(
                    f"{name} must be a finite number, got {v}: pass a finite --{flag}."
                )
        if self.solve_threshold is not None and not math.isfinite(self.solve_threshold):
            raise ValueError(f"solve_threshold must be finite, got {self.solve_threshold}.")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}.")
        if self.learning_rate <= 0:
            raise ValueError(
                f"learning_rate must be positive, got {self.learning_rate}: e.g. --lr 0.01."
            )
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be ≥ 0 (0: never), got {self.eval_every}.")
        if self.late_batch_factor < 1:
            raise ValueError(f"late_batch_factor must be ≥ 1, got {self.late_batch_factor}.")
        if self.late_return is not None and not math.isfinite(self.late_return):
            raise ValueError(f"late_return must be finite, got {self.late_return}.")
        if self.max_zero_grad_batches < 1:
            raise ValueError(
                f"max_zero_grad_batches must be ≥ 1, got {self.max_zero_grad_batches}."
            )
        runio.check_seed(self.seed, "seed")
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
    grad_acc: Any  # gradients summed since the last Adam step (like params)
    acc_count: jax.Array  # int32 batches in grad_acc
    late: jax.Array  # bool: a training batch has reached config.late_return


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


def _policy(config: Config, info_or_none: EnvInfo | None = None) -> Policy:
    import gymnasium as gym

    if info_or_none is None:
        obs_space = gym.spaces.Box(-np.inf, np.inf, (cartpole.OBS_DIM,), np.float32)
        action_space = gym.spaces.Discrete(cartpole.NUM_ACTIONS)
    else:
        obs_space, action_space = info_or_none.obs_space, info_or_none.action_space
    return policy_for_space(
        config.policy, obs_space, action_space, tuple(config.hidden), config.input_gain
    )


def greedy_action(d) -> jax.Array:
    """The most likely action of a policy's distribution (the mean for a Gaussian)."""
    import numpyro.distributions as dist

    if isinstance(d, dist.CategoricalLogits):
        return jnp.argmax(d.logits, axis=-1)
    if isinstance(d, dist.BernoulliLogits):
        return (d.logits > 0).astype(jnp.int32)
    return d.mean


def _act(d, key: jax.Array, greedy: bool) -> jax.Array:
    return greedy_action(d) if greedy else d.sample(key)


def sample_actions(
    policy: Policy, params, obs: jax.Array, key: jax.Array, greedy: bool = False
) -> jax.Array:
    """Actions for a batch of observations ``(N, obs_dim)``: ``key`` split into ``N`` keys, one
    sample of each observation's distribution (the random-number path of every rollout)."""
    return _sample_with_keys(policy, params, obs, jax.random.split(key, obs.shape[0]), greedy)


def _sample_with_keys(policy: Policy, params, obs: jax.Array, keys: jax.Array, greedy: bool):
    return jax.vmap(lambda o, k: _act(policy.apply(params, o), k, greedy))(obs, keys)


# --------------------------------------------------------------------------------------------
# The update: shared by both backends.


def _make_update(
    config: Config,
    policy: Policy,
    optimizer: optax.GradientTransformation,
    axis: EpisodeAxis | None = None,
):
    """The update on a batch; ``axis`` says how the batch's episodes lie (default: all local,
    the plain ``jnp`` reductions) and provides every cross-episode reduction."""

    def loss_fn(params, batch: Batch, baseline_state):
        ax = axis if axis is not None else EpisodeAxis(batch.rewards.shape[0])
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
            baseline = _leave_one_out(returns, mask, ax)
        elif config.baseline == "moving_average":
            if ax.sharded:  # the batch mean over all devices' episodes, as one row
                g = ax.sum(returns * mask, axis=0, keepdims=True) / ax.total
                b_t, new_baseline_state = moving_average_baseline(baseline_state, g)
            else:
                b_t, new_baseline_state = moving_average_baseline(baseline_state, returns, mask)
            baseline = jnp.broadcast_to(b_t, returns.shape)
        else:  # critic
            v = jax.vmap(jax.vmap(mlp_apply, in_axes=(None, 0)), in_axes=(None, 0))(
                params["critic"], batch.obs
            )[..., 0]
            baseline = jax.lax.stop_gradient(v)
            extra = config.value_coef * ax.mean(jax.vmap(value_loss)(v, returns, mask))
        if config.normalize_advantages:
            # A standard deviation within float32 rounding of the returns' scale is no signal:
            # such advantages become 0 instead of rounding residue blown up to unit size.
            scale = ax.max(jnp.abs(returns) * mask)
            eps = 1e-5 * jnp.maximum(scale, 1.0)
            adv = _normalize(returns - baseline, mask, eps, ax)
            pg = jax.vmap(reinforce_loss, in_axes=(0, 0, None, 0))(logp, adv, None, mask)
        else:
            pg = jax.vmap(reinforce_loss)(logp, returns, baseline, mask)
        loss = ax.mean(pg) + extra
        if config.entropy_coef:
            loss = loss + config.entropy_coef * ax.mean(jax.vmap(entropy_loss)(d.entropy(), mask))
        return loss, new_baseline_state

    def update(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        (loss, baseline_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, state.baseline_state
        )
        ax = axis if axis is not None else EpisodeAxis(batch.rewards.shape[0])
        train_return = ax.mean(jnp.sum(batch.rewards * batch.mask, axis=1))
        # Late in training (after a batch reached late_return) one Adam step per
        # late_batch_factor batches, on their mean gradient: a larger batch, less noise.
        acc = jax.tree_util.tree_map(jnp.add, state.grad_acc, grads)
        count = state.acc_count + 1
        k = jnp.where(state.late, config.late_batch_factor, 1)
        take = count >= k
        reset = take
        if config.skip_zero_grad_steps:
            # a batch whose gradient is exactly 0 (every episode's return equal, e.g. all 500)
            # carries no information: Adam would still step along its old momentum
            empty = optax.tree.norm(acc) == 0
            take = take & ~empty
            reset = take | empty
        mean_grads = jax.tree_util.tree_map(lambda a: a / count, acc)
        updates, opt_state = optimizer.update(mean_grads, state.opt_state, state.params)
        stepped = optax.apply_updates(state.params, updates)
        pick = lambda a, b: jax.tree_util.tree_map(lambda x, y: jnp.where(take, x, y), a, b)  # noqa: E731
        params = pick(stepped, state.params)
        late = state.late
        if config.late_return is not None:
            late = late | (train_return >= config.late_return)
        new = TrainState(
            params,
            pick(opt_state, state.opt_state),
            baseline_state,
            state.batch + 1,
            state.episodes + ax.total,
            jax.tree_util.tree_map(lambda a: jnp.where(reset, jnp.zeros_like(a), a), acc),
            jnp.where(reset, 0, count).astype(jnp.int32),
            late,
        )
        finite = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)])
        )
        return new, {
            "loss": loss,
            "train_return": train_return,
            "grad_norm": optax.tree.norm(grads),
            "params_finite": finite,
        }

    return update


def _leave_one_out(returns: jax.Array, mask: jax.Array, ax: EpisodeAxis) -> jax.Array:
    """:func:`~expectax.rl.losses.leave_one_out_baseline` over all of ``ax``'s episodes."""
    if not ax.sharded:
        return leave_one_out_baseline(returns, mask)
    g = returns * mask  # the same differences from global episode 0's return
    ref = ax.first(g)
    d = g - ref
    return ref + (ax.sum(d, axis=0, keepdims=True) - d) / (ax.total - 1)


def _normalize(adv: jax.Array, mask: jax.Array, eps: jax.Array, ax: EpisodeAxis) -> jax.Array:
    """:func:`~expectax.rl.losses.normalize_advantages` over all of ``ax``'s episodes."""
    if not ax.sharded:
        return normalize_advantages(adv, mask, eps=eps)
    n = jnp.maximum(ax.sum(mask, axis=None), 1.0)
    mean = ax.sum(adv * mask, axis=None) / n
    std = jnp.sqrt(ax.sum(jnp.square(adv - mean) * mask, axis=None) / n)
    signal = std > eps
    return jnp.where(signal, (adv - mean) / jnp.where(signal, std, 1.0), 0.0) * mask


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Adam (``adam_b1``, ``adam_b2``, ``adam_eps``) at ``config.learning_rate``, decayed
    linearly to ``lr_final_fraction`` of it over the budget's batches (1.0: constant); with
    ``max_grad_norm``, the gradient is first clipped to that global norm."""
    lr: Any = config.learning_rate
    if config.lr_final_fraction != 1.0:
        lr = optax.linear_schedule(
            config.learning_rate,
            config.learning_rate * config.lr_final_fraction,
            max(config.num_batches - 1, 1),
        )
    adam = optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    if config.max_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adam)


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
        jax.tree_util.tree_map(jnp.zeros_like, params),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), bool),
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
    confirm: Callable[[Any, jax.Array], jax.Array]


def jax_rollout(
    policy: Policy, params, key: jax.Array, num_episodes: int, greedy: bool = False
) -> Batch:
    """``num_episodes`` CartPole episodes of up to 500 steps, padded to 500.

    A ``while_loop`` over time that stops as soon as every episode has ended (an early policy's
    episodes last ~20 steps). Each step splits one key into one per episode and samples each
    episode's action from its distribution (:func:`sample_actions`, shared with the Gymnasium
    backend and ``benchmarks/rl_env_speed.py``); ``greedy`` takes the most likely action.
    """
    return _rollout(policy, params, key, EpisodeAxis(num_episodes), greedy)


def _rollout(policy: Policy, params, key: jax.Array, ax: EpisodeAxis, greedy: bool) -> Batch:
    """:func:`jax_rollout` of this device's ``ax.local`` episodes of ``ax.total``: episode
    ``i`` takes key ``i`` of each split, so its steps do not depend on the number of devices
    (each device's loop stops when its own episodes have ended)."""
    T = cartpole.MAX_EPISODE_STEPS
    n = ax.local
    k_reset, k_act = jax.random.split(key)
    states, obs0 = jax.vmap(cartpole.reset)(ax.split(k_reset))
    vstep = jax.vmap(cartpole.step)

    def cond(carry):
        t, _, _, done, _ = carry
        return (t < T) & ~jnp.all(done)

    def body(carry):
        t, states, obs, done, bufs = carry
        keys = ax.split(jax.random.fold_in(k_act, t))
        actions = _sample_with_keys(policy, params, obs, keys, greedy)
        actions = actions.astype(jnp.int32)
        states, ts = vstep(states, actions)
        valid = (~done).astype(jnp.float32)
        o, a, r, m = bufs
        bufs = (o.at[t].set(obs), a.at[t].set(actions), r.at[t].set(ts.reward * valid),
                m.at[t].set(valid))  # fmt: skip
        done = done | ts.terminated | ts.truncated
        return t + 1, states, ts.obs, done, bufs

    bufs = (
        jnp.zeros((T, n, cartpole.OBS_DIM), jnp.float32),
        jnp.zeros((T, n), jnp.int32),
        jnp.zeros((T, n), jnp.float32),
        jnp.zeros((T, n), jnp.float32),
    )
    done = jnp.zeros((n,), bool)
    init = (jnp.zeros((), jnp.int32), states, obs0, *ax.varying((done, bufs)))
    *_, (obs, actions, rewards, mask) = jax.lax.while_loop(cond, body, init)
    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    return Batch(swap(obs), swap(actions), swap(rewards), swap(mask))


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
    sampled policy, ``confirm(params, key)`` the same over ``config.confirm_episodes``. All are
    jittable and vmappable (e.g. over seeds in
    ``benchmarks/rl_cartpole.py``).

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

        return JaxTrainer(
            init,
            rollout,
            step,
            lambda p, k: mean_return(p, k, config.eval_episodes),
            lambda p, k: mean_return(p, k, config.confirm_episodes),
        )

    mesh, axis_name, devices = check_trainer_mesh(config, mesh, axis_name)
    ax = EpisodeAxis(config.batch_episodes, axis_name, devices)
    update = _make_update(config, policy, optimizer, ax)

    def step_body(state, key):
        return update(state, _rollout(policy, state.params["policy"], key, ax, False))

    sharded_step = shard_replicated(step_body, mesh, axis_name, 2)

    def sharded_mean_return(n: int, name: str):
        check_episode_mesh(mesh, axis_name, {name: n})
        eax = EpisodeAxis(n, axis_name, devices)

        def body(params, key):
            batch = _rollout(policy, params["policy"], key, eax, False)
            return eax.mean(jnp.sum(batch.rewards, axis=1))

        return shard_replicated(body, mesh, axis_name, 2)

    confirm = sharded_mean_return(config.confirm_episodes, "confirm_episodes")

    def evaluate(params, key):  # eval_episodes is checked when evaluate is used
        return sharded_mean_return(config.eval_episodes, "eval_episodes")(params, key)

    return JaxTrainer(init, rollout, sharded_step, evaluate, confirm)


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

        def act(params, obs, key, greedy):
            return sample_actions(policy, params["policy"], obs, key, greedy)

        self.act = jax.jit(act, static_argnums=3)

    def _envs(self, n: int):
        if n not in self.envs:
            self.envs[n] = self.gym.make_vec(
                self.info.env_id, num_envs=n, vectorization_mode=self.info.vectorization_mode
            )
        return self.envs[n]

    def close(self) -> None:
        for envs in self.envs.values():
            envs.close()

    def rollout(
        self, params, key: jax.Array, env_seed: int, n: int, where: str, greedy: bool = False
    ) -> Batch:
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
                self.act(params, jnp.asarray(obs, jnp.float32), jax.random.fold_in(key, t), greedy)
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


def _unreadable(path, why: str) -> ValueError:
    return ValueError(
        f"checkpoint {str(path)!r} cannot be read ({why}): it is truncated, corrupt or not an "
        "expectax rl checkpoint. Delete it (or pass --overwrite) to start afresh, or point "
        "--out/--checkpoint at the directory of a complete run."
    )


def _read_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, never unpickling; every failure is one ``ValueError``."""
    try:
        with open(path, "rb") as fh:
            data = np.load(fh, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise _unreadable(path, "not an .npz archive")
            with data:
                return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ValueError(
            f"no checkpoint at {str(path)!r}: train first (expectax rl --out DIR) and pass that "
            "DIR."
        ) from None
    except ValueError as err:
        if str(err).startswith("checkpoint "):
            raise
        raise _unreadable(path, "not a plain-array .npz; pickled data is never loaded") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise _unreadable(path, type(err).__name__) from None


def _saved_config(path, data: dict[str, np.ndarray]) -> dict:
    try:
        return json.loads(str(data["config"]))
    except (KeyError, json.JSONDecodeError):
        raise _unreadable(path, "no valid config inside") from None


def load_checkpoint(path: str | os.PathLike, template: TrainState, config: Config):
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``template``.

    Raises ``ValueError`` (one line that says what to do) for a missing, truncated, corrupt or
    pickled file, one written with other settings, or one holding NaN or inf.
    """
    data = _read_npz(path)
    saved = _saved_config(path, data)
    mine = json.loads(json.dumps(dataclasses.asdict(config), sort_keys=True))
    missing = sorted(k for k in mine if k not in saved)
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} was written by an older version of expectax rl (it has "
            f"no {', '.join(missing)}): it cannot be resumed or evaluated; train again into a "
            "new --out (or pass --overwrite)."
        )
    differ = sorted(k for k in mine if k not in ("episodes",) and saved.get(k) != mine[k])
    if differ:
        raise ValueError(
            f"checkpoint {str(path)!r} was written with different settings ({', '.join(differ)}"
            f": {[saved.get(k) for k in differ]} vs now {[mine[k] for k in differ]}); resume "
            "with the same flags or start a new run in another --out directory."
        )
    leaves, treedef = jax.tree_util.tree_flatten(template)
    try:
        loaded = [data[f"state_{i:04d}"] for i in range(len(leaves))]
        history = {c: list(data[f"history_{c}"]) for c in HISTORY_COLUMNS}
    except KeyError as err:
        raise _unreadable(path, f"{err.args[0]} missing") from None
    for a, b in zip(leaves, loaded, strict=True):
        if np.shape(a) != b.shape or np.asarray(a).dtype != b.dtype:
            raise _unreadable(path, "its arrays do not match this model's shapes")
        if np.issubdtype(b.dtype, np.floating) and not np.all(np.isfinite(b)):
            raise ValueError(
                f"checkpoint {str(path)!r} holds NaN or inf parameters: it cannot be resumed "
                "or evaluated. Start afresh (--overwrite) with a smaller --lr."
            )
    state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in loaded])
    return state, history


def _write_csv(path: Path, history: dict) -> None:
    rows = [dict(zip(HISTORY_COLUMNS, r, strict=True)) for r in zip(*history.values(), strict=True)]
    for r in rows:
        for c in ("batch", "episodes", "eval_episodes"):
            r[c] = int(r[c])
    runio.write_csv(path, rows, HISTORY_COLUMNS)


def plot_curve(path: Path, history: dict, title: str, threshold: float | None) -> None:
    """Learning curve PNG: training-batch returns and evaluation returns against episodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ep = np.asarray(history["episodes"])
    ax.plot(ep, history["train_return"], label="training batch mean", alpha=0.7)
    for col, label, style in (
        ("eval_return", "periodic evaluation (sampled policy)", "o-"),
        ("confirm_return", "confirmation (fresh episodes)", "s"),
    ):
        ev = np.asarray(history[col])
        ok = np.isfinite(ev)
        if ok.any():
            ax.plot(ep[ok], ev[ok], style, ms=3, label=label)
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
# Output directories.

OUTPUT_FILES = ("checkpoint.npz", "log.csv", "summary.json", "curve.png")


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot be written, or that holds a run and neither ``resume``
    nor ``overwrite`` was asked for; checked before any training."""
    try:
        runio.prepare_out(out, OUTPUT_FILES, overwrite=overwrite or resume)
    except runio.OutputError as err:
        msg = str(err)
        if "earlier run" in msg:
            msg = msg.replace("pass --overwrite", "pass --resume to continue it, --overwrite")
        raise ValueError(msg) from None
    if overwrite and not resume:
        for f in OUTPUT_FILES:
            (out / f).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# The driver.


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
      ``solved``, ``confirm_return``, ``eval_episodes`` (evaluation episodes used, not counted
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
            f = jconfirm if purpose == _CONFIRM else jeval
            return float(f(params, _batch_key(config.seed, b, purpose)))

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
            batch = runner.rollout(
                params,
                _batch_key(config.seed, b, purpose),
                _batch_seed(config.seed, b, purpose),
                config.confirm_episodes if purpose == _CONFIRM else config.eval_episodes,
                f"evaluation after batch {b}",
            )
            return float(jnp.mean(jnp.sum(batch.rewards, axis=1)))

    def solved_at(history):
        if threshold is None:
            return None, None
        for ep, c in zip(history["episodes"], history["confirm_return"], strict=True):
            if np.isfinite(c) and c >= threshold:
                return int(ep), float(c)
        return None, None

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
            _write_csv(out / "log.csv", history)

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
                        ev = do_eval(new_state.params, b, _EVAL)
                    n_eval = config.eval_episodes * int(np.isfinite(ev))
                    conf = float("nan")
                    # confirmations decide "solved"; once one has held, none are needed
                    solved_before = solved_at(history)[0] is not None
                    if (
                        threshold is not None
                        and not solved_before
                        and (train_return >= threshold or (np.isfinite(ev) and ev >= threshold))
                    ):
                        conf = do_eval(new_state.params, b, _CONFIRM)
                        n_eval += config.confirm_episodes
                    state = new_state
                    prev_eval = history["eval_episodes"][-1] if history["eval_episodes"] else 0
                    row = (
                        b + 1,
                        int(state.episodes),
                        train_return,
                        ev,
                        conf,
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
                        + (f" | confirm {conf:7.1f}" if np.isfinite(conf) else ""),
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
        ets, conf = solved_at(history)
        final_eval = None
        if not interrupted and history["episodes"] and not (config.stop_when_solved and ets):
            final_eval = do_eval(state.params, config.num_batches + 1, _CONFIRM)
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
