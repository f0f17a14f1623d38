"""The pure-JAX CartPole against Gymnasium's, step by step from identical states."""

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expectax.rl import cartpole

_step = jax.jit(cartpole.step)


def _gym_env():
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    return env


def _set(env, physics, elapsed=0):
    env.unwrapped.state = np.asarray(physics, np.float64)
    env.unwrapped.steps_beyond_terminated = None
    env.get_wrapper_attr("_elapsed_steps")  # exists
    tl = env
    while not isinstance(tl, gym.wrappers.TimeLimit):
        tl = tl.env
    tl._elapsed_steps = elapsed


def test_single_steps_match_gymnasium_from_identical_states():
    env = _gym_env()
    rng = np.random.default_rng(0)
    # states across the whole observation range, many of them about to terminate
    states = rng.uniform([-2.6, -3, -0.25, -3.5], [2.6, 3, 0.25, 3.5], size=(200, 4))
    states = states.astype(np.float32)
    n_term = 0
    for s in states:
        for a in (0, 1):
            _set(env, s)
            obs, r, term, trunc, _ = env.step(a)
            st, ts = _step(cartpole.CartPoleState(jnp.asarray(s), jnp.int32(0)), jnp.int32(a))
            np.testing.assert_allclose(np.asarray(ts.obs), obs, rtol=1e-5, atol=1e-6)
            assert float(ts.reward) == r
            assert bool(ts.terminated) == term
            assert bool(ts.truncated) == trunc
            n_term += term
    assert 25 < n_term < 350  # the sample exercised termination both ways


def test_episodes_match_gymnasium_including_termination_step():
    env = _gym_env()
    rng = np.random.default_rng(1)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        state = cartpole.CartPoleState(jnp.asarray(env.unwrapped.state, jnp.float32), jnp.int32(0))
        for _ in range(500):
            a = int(rng.integers(2))
            obs, r, term, trunc, _ = env.step(a)
            state, ts = _step(state, jnp.int32(a))
            np.testing.assert_allclose(np.asarray(ts.obs), obs, rtol=1e-4, atol=1e-5)
            assert (bool(ts.terminated), bool(ts.truncated), float(ts.reward)) == (term, trunc, r)
            if term or trunc:
                break
        assert term  # random actions drop the pole well before 500 steps


def test_truncation_at_500_steps_like_time_limit():
    env = _gym_env()
    s = np.array([0.01, 0.0, 0.0, 0.0], np.float32)
    _set(env, s, elapsed=499)
    obs, r, term, trunc, _ = env.step(1)
    st, ts = _step(cartpole.CartPoleState(jnp.asarray(s), jnp.int32(499)), jnp.int32(1))
    assert (term, trunc) == (False, True)
    assert (bool(ts.terminated), bool(ts.truncated)) == (False, True)
    np.testing.assert_allclose(np.asarray(ts.obs), obs, rtol=1e-5, atol=1e-6)
    # not truncated one step earlier
    _set(env, s, elapsed=498)
    assert env.step(1)[3] is False
    assert not bool(_step(cartpole.CartPoleState(jnp.asarray(s), jnp.int32(498)), 1)[1].truncated)


def test_reset_distribution_and_autoreset():
    states, obs = jax.vmap(cartpole.reset)(jax.random.split(jax.random.key(0), 1000))
    assert obs.shape == (1000, 4)
    assert float(jnp.min(obs)) >= -0.05 and float(jnp.max(obs)) < 0.05
    assert int(jnp.max(states.t)) == 0
    # a terminating step resets in place, and reports the final observation
    s = cartpole.CartPoleState(jnp.array([2.39, 1.0, 0.0, 0.0]), jnp.int32(7))
    nxt, ts = cartpole.step_autoreset(s, jnp.int32(1), jnp.full((4,), 0.75))
    assert bool(ts.terminated) and float(ts.obs[0]) > 2.4
    np.testing.assert_allclose(np.asarray(nxt.physics), 0.025, rtol=1e-6)
    assert int(nxt.t) == 0


def test_random_rollout_counts_episodes():
    ended = jax.jit(cartpole.random_rollout, static_argnums=(1, 2))(jax.random.key(0), 16, 200)
    # random play ends an episode every ~22 steps
    assert 16 * 200 / 40 < int(ended) < 16 * 200 / 10


def test_step_rejects_batched_action():
    s = cartpole.CartPoleState(jnp.zeros(4), jnp.int32(0))
    with pytest.raises(ValueError, match="action must be a scalar.*vmap"):
        cartpole.step(s, jnp.zeros(3, jnp.int32))


def test_uniforms_from_words_are_uniform(strict_ranks):
    words = jax.random.bits(jax.random.key(4), (50_000,), jnp.uint32)
    actions, u = cartpole.uniforms_from_words(words)
    n = words.shape[0]
    assert u.shape == (n, 4) and float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(actions.mean()) - 0.5) < 5 * np.sqrt(0.25 / n)
    se_mean = np.sqrt(1 / 12 / n)
    assert np.all(np.abs(np.asarray(u.mean(0)) - 0.5) < 5 * se_mean)
    # E[u²] = 1/3 with Var[u²] = 4/45; the 4 lanes and the action bit are uncorrelated
    assert np.all(np.abs(np.asarray((u**2).mean(0)) - 1 / 3) < 5 * np.sqrt(4 / 45 / n))
    c = np.corrcoef(np.concatenate([np.asarray(u), np.asarray(actions)[:, None]], 1).T)
    assert np.all(np.abs(c[np.triu_indices(5, 1)]) < 5 / np.sqrt(n))
