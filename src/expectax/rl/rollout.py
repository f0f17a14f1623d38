"""Collecting episodes: a :class:`Batch` of whole episodes padded to the time limit, sampled from
the policy (:func:`sample_actions`, or :func:`greedy_action`), by the pure-JAX CartPole
(:func:`jax_rollout`, a ``while_loop``) or by a Gymnasium vector environment
(:class:`_GymRunner`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from expectax.rl import cartpole
from expectax.rl.env_info import EnvInfo
from expectax.rl.policies import Policy
from expectax.rl.sharded import EpisodeAxis

__all__ = ["Batch", "greedy_action", "jax_rollout", "mean_and_se", "sample_actions"]


class Batch(NamedTuple):
    """``E`` episodes padded to ``T`` steps."""

    obs: jax.Array  # (E, T, obs_dim)
    actions: jax.Array  # (E, T) or (E, T, action_dim)
    rewards: jax.Array  # (E, T)
    mask: jax.Array  # (E, T) 1 where the step happened


def mean_and_se(batch: Batch, ax: EpisodeAxis | None = None) -> tuple[jax.Array, jax.Array]:
    """Mean and standard error (sample standard deviation, ``ddof=1``, over ``sqrt(n)``) of the
    episodes' returns, over all of ``ax``'s episodes (default: all local).

    The mean is the one every evaluation reports (``ax.mean`` of the summed rewards, bitwise);
    the SE comes from the centred second moment (a second reduction over the episodes, a
    ``psum`` when they are split over devices), so no ``E[R²] − E[R]²`` cancellation. Needs
    ``n ≥ 2`` episodes (a confirmation has ≥ 100)."""
    returns = jnp.sum(batch.rewards, axis=1)
    ax = ax if ax is not None else EpisodeAxis(returns.shape[0])
    mean = ax.mean(returns)
    n = ax.total
    ss = ax.sum(jnp.square(returns - mean), axis=None)
    return mean, jnp.sqrt(ss / ((n - 1) * n))


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
