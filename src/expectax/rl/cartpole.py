"""A pure-JAX CartPole-v1 with the dynamics of Gymnasium's ``CartPoleEnv``.

The state and the step are plain arrays and functions, so a whole training loop that uses the
environment can be ``jit``-compiled and ``vmap``-ped over seeds. The dynamics are Gymnasium's
(Euler integration, ``tau = 0.02``, force ±10, thresholds ±2.4 m and ±12°, reward 1 on every
step including the one that terminates, truncation after 500 steps as ``gym.make`` adds a
``TimeLimit``), computed in float32 where Gymnasium keeps float64; the tests compare the two step
by step from identical states.

References:
  Barto, Sutton & Anderson (1983), "Neuronlike adaptive elements that can solve difficult
  learning control problems". Florian (2007), "Correct equations for the dynamics of the
  cart-pole system". Gymnasium's ``gymnasium/envs/classic_control/cartpole.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "MAX_EPISODE_STEPS",
    "NUM_ACTIONS",
    "OBS_DIM",
    "REWARD_THRESHOLD",
    "CartPoleState",
    "TimeStep",
    "reset",
    "random_rollout",
    "step",
    "step_autoreset",
    "uniforms_from_words",
]

GRAVITY = 9.8
MASSCART = 1.0
MASSPOLE = 0.1
TOTAL_MASS = MASSPOLE + MASSCART
LENGTH = 0.5  # half the pole's length
POLEMASS_LENGTH = MASSPOLE * LENGTH
FORCE_MAG = 10.0
TAU = 0.02
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
MAX_EPISODE_STEPS = 500
REWARD_THRESHOLD = 475.0
OBS_DIM = 4
NUM_ACTIONS = 2
RESET_BOUND = 0.05


class CartPoleState(NamedTuple):
    """The environment's state.

    Attributes:
      physics: ``(4,)`` float32 ``(x, x_dot, theta, theta_dot)``, also the observation.
      t: int32 number of steps taken in the current episode.
    """

    physics: jax.Array
    t: jax.Array


class TimeStep(NamedTuple):
    """What one step returns (Gymnasium's ``obs, reward, terminated, truncated``)."""

    obs: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array


def _initial_state(u: jax.Array) -> CartPoleState:
    physics = (2.0 * u - 1.0) * RESET_BOUND
    return CartPoleState(physics.astype(jnp.float32), jnp.zeros((), jnp.int32))


def reset(key: jax.Array) -> tuple[CartPoleState, jax.Array]:
    """Start an episode: each state variable uniform on ``[-0.05, 0.05)``, as Gymnasium does.

    Returns:
      ``(state, obs)`` with ``obs`` of shape ``(4,)``.
    """
    state = _initial_state(jax.random.uniform(key, (OBS_DIM,)))
    return state, state.physics


def step(state: CartPoleState, action: jax.Array) -> tuple[CartPoleState, TimeStep]:
    """One step of CartPole-v1 with ``action`` in ``{0, 1}`` (push left, push right).

    Args:
      state: the current state (unbatched; ``vmap`` for many environments).
      action: scalar int, 1 pushes right.

    Returns:
      ``(next_state, TimeStep(obs, reward, terminated, truncated))``: reward 1.0 (also on the
      terminating step), ``terminated`` when the cart leaves ±2.4 or the pole passes ±12°,
      ``truncated`` when the episode reaches 500 steps.
    """
    if jnp.ndim(action) != 0:
        raise ValueError(
            f"step: action must be a scalar (got shape {jnp.shape(action)}); vmap step over "
            "environments to act in many at once."
        )
    x, x_dot, theta, theta_dot = state.physics
    force = jnp.where(action == 1, FORCE_MAG, -FORCE_MAG)
    costheta = jnp.cos(theta)
    sintheta = jnp.sin(theta)
    temp = (force + POLEMASS_LENGTH * jnp.square(theta_dot) * sintheta) / TOTAL_MASS
    thetaacc = (GRAVITY * sintheta - costheta * temp) / (
        LENGTH * (4.0 / 3.0 - MASSPOLE * jnp.square(costheta) / TOTAL_MASS)
    )
    xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS
    x = x + TAU * x_dot
    x_dot = x_dot + TAU * xacc
    theta = theta + TAU * theta_dot
    theta_dot = theta_dot + TAU * thetaacc
    physics = jnp.stack([x, x_dot, theta, theta_dot]).astype(jnp.float32)
    t = state.t + 1
    terminated = (
        (x < -X_THRESHOLD)
        | (x > X_THRESHOLD)
        | (theta < -THETA_THRESHOLD)
        | (theta > THETA_THRESHOLD)
    )
    truncated = t >= MAX_EPISODE_STEPS
    reward = jnp.ones((), jnp.float32)
    return CartPoleState(physics, t), TimeStep(physics, reward, terminated, truncated)


def step_autoreset(
    state: CartPoleState, action: jax.Array, reset_uniform: jax.Array
) -> tuple[CartPoleState, TimeStep]:
    """Step, and start a new episode in place when this one ends (Gymnasium's SAME_STEP mode).

    Args:
      state: the current state.
      action: scalar int in ``{0, 1}``.
      reset_uniform: ``(4,)`` uniform ``[0, 1)`` numbers for the new episode's initial state,
        drawn by the caller (for a vector of environments draw all of a step's randomness in
        one call: it is the usual bottleneck).

    Returns:
      ``(next_state, timestep)``: ``timestep`` reports the step that was taken (its ``obs`` is
      the final observation of an ending episode); ``next_state`` is already reset if it ended.
    """
    next_state, ts = step(state, action)
    done = ts.terminated | ts.truncated
    fresh = _initial_state(reset_uniform)
    next_state = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), fresh, next_state)
    return next_state, ts


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijective avalanche mix of uint32 words."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


# numpy, not jnp: importing expectax creates no JAX arrays (so JAX can still be configured)
_LANES = np.array([0x9E3779B9, 0x7F4A7C15, 0xF39CC060, 0x1B873593], np.uint32)


def uniforms_from_words(words: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One random uint32 per environment → (a fair action bit, 4 uniforms for a reset).

    The action is the word's top bit; the 4 reset uniforms (24-bit resolution) are MurmurHash3
    mixes of the word with 4 constants. One word per environment and step is all the
    randomness a random-action rollout needs: drawing 5 uniforms per step instead made the
    random-number generator (threefry) 80% of the run time.

    Args:
      words: ``(N,)`` uint32 random words.

    Returns:
      ``(actions, u)`` of shapes ``(N,)`` int32 and ``(N, 4)`` float32 in ``[0, 1)``.
    """
    actions = (words >> 31).astype(jnp.int32)
    mixed = _fmix32(words[:, None] ^ _LANES[None, :])
    u = (mixed >> 8).astype(jnp.float32) * jnp.float32(1.0 / (1 << 24))
    return actions, u


def random_rollout(key: jax.Array, num_envs: int, num_steps: int) -> jax.Array:
    """Run ``num_envs`` environments for ``num_steps`` steps with uniformly random actions.

    All randomness of a step (actions and reset states of every environment) comes from one
    draw of ``num_envs`` random words (:func:`uniforms_from_words`). Returns the number of
    episodes that ended (so the work cannot be optimised away); used by
    ``benchmarks/rl_env_speed.py``.
    """
    key_reset, key_run = jax.random.split(key)
    states = jax.vmap(_initial_state)(jax.random.uniform(key_reset, (num_envs, OBS_DIM)))
    vstep = jax.vmap(step_autoreset)

    def body(carry, k):
        states, ended = carry
        actions, u = uniforms_from_words(jax.random.bits(k, (num_envs,), jnp.uint32))
        states, ts = vstep(states, actions, u)
        ended = ended + jnp.sum(ts.terminated | ts.truncated)
        return (states, ended), None

    (_, ended), _ = jax.lax.scan(
        body, (states, jnp.zeros((), jnp.int32)), jax.random.split(key_run, num_steps)
    )
    return ended
