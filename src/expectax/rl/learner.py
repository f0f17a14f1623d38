"""The policy-gradient update shared by both backends: :class:`TrainState` (all a run carries,
all arrays), its initial value, and one step of REINFORCE on a :class:`~expectax.rl.rollout.Batch`
(baselines, leave-one-out and advantage normalisation over all episodes, including those of
other devices, gradient accumulation late in training, Adam)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from expectax.estimators.base import log_prob
from expectax.rl.config import Config
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
from expectax.rl.policies import Policy, mlp_apply, mlp_init
from expectax.rl.rollout import Batch
from expectax.rl.sharded import EpisodeAxis

__all__ = ["TrainState"]


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
