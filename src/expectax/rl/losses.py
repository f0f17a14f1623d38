"""REINFORCE as pure functions over arrays, in the style of rlax.

Every function is unbatched over what it does not need (a single trajectory of length ``T``, or
one batch of ``E`` episodes where a leave-one-out baseline needs them all) and checks the ranks
of its inputs on entry; batch with ``jax.vmap``. Names follow rlax: ``x_t`` is indexed by the
time step of the transition, ``x_tm1`` by the step before.

The score-function part is the core's: :func:`reinforce_loss` multiplies returns by
:func:`expectax.estimators.base.magic_box` of the log-probabilities of the actions taken, with
the baseline term of :class:`expectax.ScoreFunction` (Mao et al., 2019), so its gradient is the
REINFORCE estimator and its higher derivatives the score-function estimates of theirs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from expectax.estimators.base import magic_box

__all__ = [
    "MovingAverageState",
    "discounted_returns",
    "entropy_loss",
    "leave_one_out_baseline",
    "moving_average_baseline",
    "moving_average_init",
    "normalize_advantages",
    "reinforce_loss",
    "value_loss",
]


def _check_rank(name: str, x: jax.Array, ranks: int | tuple[int, ...], fn: str) -> None:
    ranks = (ranks,) if isinstance(ranks, int) else ranks
    if jnp.ndim(x) not in ranks:
        raise ValueError(
            f"{fn}: {name} must have rank {' or '.join(map(str, ranks))}, got shape "
            f"{jnp.shape(x)}. The function is unbatched: use jax.vmap over a batch axis."
        )


def _mask_or_ones(mask_t: jax.Array | None, like: jax.Array) -> jax.Array:
    if mask_t is None:
        return jnp.ones_like(like)
    return jnp.asarray(mask_t, like.dtype)


def discounted_returns(
    r_t: jax.Array, discount_t: jax.Array, v_t: jax.Array | float = 0.0
) -> jax.Array:
    r"""Discounted returns-to-go of one trajectory.

    .. math::

        G_t = r_t + \gamma_t\, G_{t+1}, \qquad G_T = v_T .

    Args:
      r_t: ``(T,)`` rewards, ``r_t`` received after the action at step ``t``.
      discount_t: ``(T,)`` discounts ``γ_t`` (0 where the episode terminates after step t), or a
        scalar used at every step.
      v_t: bootstrap value after the last step (scalar; 0 for complete episodes).

    Returns:
      ``(T,)`` returns-to-go ``G_t``.

    Example:
      >>> discounted_returns(jnp.ones(3), 0.5)   # [1.75, 1.5, 1.]

    References:
      Sutton & Barto (2018), "Reinforcement learning: an introduction", 2nd ed., section 3.3.
    """
    _check_rank("r_t", r_t, 1, "discounted_returns")
    _check_rank("discount_t", discount_t, (0, 1), "discounted_returns")
    _check_rank("v_t", v_t, 0, "discounted_returns")
    r_t = jnp.asarray(r_t)
    discount_t = jnp.broadcast_to(jnp.asarray(discount_t, r_t.dtype), r_t.shape)

    def body(g, rd):
        r, d = rd
        g = r + d * g
        return g, g

    # the carry starts from r_t (plus 0) so that it varies as r_t does: inside shard_map a
    # replicated initial carry for a per-device scan is an error
    g_T = jnp.asarray(v_t, r_t.dtype) + jnp.sum(jnp.zeros_like(r_t[:1]))
    _, g_t = jax.lax.scan(body, g_T, (r_t, discount_t), reverse=True)
    return g_t


def reinforce_loss(
    logp_t: jax.Array,
    returns_t: jax.Array,
    baseline_t: jax.Array | float | None = None,
    mask_t: jax.Array | None = None,
) -> jax.Array:
    r"""REINFORCE surrogate loss of one trajectory, with an optional baseline.

    .. math::

        L = -\sum_t m_t \big[\,\square(\log\pi_t)\, G_t + (1 - \square(\log\pi_t))\, b_t\big],
        \qquad \nabla L = -\sum_t m_t\, (G_t - b_t)\, \nabla_\theta \log \pi_\theta(a_t|s_t),

    with the magic box ``□(l) = exp(l − stop_gradient(l))`` of the core
    (:func:`expectax.estimators.base.magic_box`). Returns and baseline are constants
    (``stop_gradient``); its value is ``-Σ m_t G_t``.

    Args:
      logp_t: ``(T,)`` log-probabilities ``log π_θ(a_t|s_t)`` of the actions taken (functions
        of the parameters being differentiated).
      returns_t: ``(T,)`` returns-to-go ``G_t`` (or advantages, with ``baseline_t=None``).
      baseline_t: ``(T,)`` or scalar baseline ``b_t``; it must not depend on the action at step
        ``t`` (e.g. :func:`leave_one_out_baseline`, a critic's ``V(s_t)``).
      mask_t: ``(T,)`` 1 for steps that happened, 0 for padding after the episode ended.

    Returns:
      The scalar loss to minimise.

    References:
      Williams (1992), "Simple statistical gradient-following algorithms for connectionist
      reinforcement learning". Foerster et al. (2018), "DiCE: the infinitely differentiable
      Monte Carlo estimator". Mao et al. (2019), "A baseline for any order gradient estimation
      in stochastic computation graphs".
    """
    _check_rank("logp_t", logp_t, 1, "reinforce_loss")
    _check_rank("returns_t", returns_t, 1, "reinforce_loss")
    if baseline_t is not None:
        _check_rank("baseline_t", baseline_t, (0, 1), "reinforce_loss")
    if mask_t is not None:
        _check_rank("mask_t", mask_t, 1, "reinforce_loss")
    box = magic_box(logp_t)
    g = jax.lax.stop_gradient(returns_t)
    terms = box * g
    if baseline_t is not None:
        b = jax.lax.stop_gradient(jnp.broadcast_to(jnp.asarray(baseline_t, g.dtype), g.shape))
        terms = terms + (1.0 - box) * b
    return -jnp.sum(_mask_or_ones(mask_t, terms) * terms)


def leave_one_out_baseline(returns_et: jax.Array, mask_et: jax.Array | None = None) -> jax.Array:
    r"""Leave-one-out baseline over a batch of ``E`` episodes, per time step.

    .. math::

        b^{(i)}_t = \frac{1}{E - 1} \sum_{j \ne i} m^{(j)}_t G^{(j)}_t ,

    where an episode that has already ended contributes return 0 at step ``t``. Episode i's
    baseline uses only the other episodes, so it is independent of episode i's actions and the
    estimate stays unbiased.

    Args:
      returns_et: ``(E, T)`` returns-to-go of ``E ≥ 2`` episodes, padded after their end.
      mask_et: ``(E, T)`` 1 where a step happened, 0 for padding.

    Returns:
      ``(E, T)`` baselines.

    References:
      Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE samples, get a baseline for free!".
    """
    _check_rank("returns_et", returns_et, 2, "leave_one_out_baseline")
    num_episodes = returns_et.shape[0]
    if num_episodes < 2:
        raise ValueError(
            "leave_one_out_baseline: needs at least 2 episodes in returns_et (axis 0), got "
            f"{num_episodes}. Collect more episodes per batch or use another baseline."
        )
    g = returns_et * _mask_or_ones(mask_et, returns_et)
    # Sums of differences from one episode's return: where all returns at a step are equal the
    # differences are exactly 0, so the baseline equals the return and the advantage is exactly
    # 0 (summing the raw returns would leave float32 rounding residue of ~1e-7 × |G|).
    ref = g[:1]
    d = g - ref
    return ref + (jnp.sum(d, axis=0, keepdims=True) - d) / (num_episodes - 1)


class MovingAverageState(NamedTuple):
    """State of :func:`moving_average_baseline`: a bias-corrected exponential moving average.

    Attributes:
      mean_t: ``(T,)`` raw (uncorrected) moving average of the returns at each time step.
      count: int32 number of updates so far.
    """

    mean_t: jax.Array
    count: jax.Array


def moving_average_init(num_steps: int) -> MovingAverageState:
    """Initial state of :func:`moving_average_baseline` for episodes of up to ``num_steps``."""
    return MovingAverageState(jnp.zeros((num_steps,), jnp.float32), jnp.zeros((), jnp.int32))


def moving_average_baseline(
    state: MovingAverageState,
    returns_et: jax.Array,
    mask_et: jax.Array | None = None,
    decay: float = 0.9,
) -> tuple[jax.Array, MovingAverageState]:
    r"""Per-time-step exponential moving average of past returns, as a baseline.

    .. math::

        b_t = \frac{\bar G_t}{1 - \beta^k}, \qquad
        \bar G_t \leftarrow \beta \bar G_t + (1-\beta)
        \tfrac{1}{E}\textstyle\sum_i m^{(i)}_t G^{(i)}_t

    The baseline returned is computed from the *old* state (before the current batch), so it
    does not depend on the current actions and the estimate stays unbiased; the new state
    includes the batch. Bias correction as in Adam (0 before the first update).

    Args:
      state: the old state (:func:`moving_average_init`).
      returns_et: ``(E, T)`` returns-to-go of the current batch.
      mask_et: ``(E, T)`` validity mask.
      decay: ``β`` in ``[0, 1)``.

    Returns:
      ``(baseline_t, new_state)`` with ``baseline_t`` of shape ``(T,)``.

    References:
      Williams (1992); Kingma & Ba (2015) for the bias correction.
    """
    _check_rank("returns_et", returns_et, 2, "moving_average_baseline")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"moving_average_baseline: decay must be in [0, 1), got {decay}.")
    if state.mean_t.shape != returns_et.shape[1:]:
        raise ValueError(
            f"moving_average_baseline: state has {state.mean_t.shape} time steps but returns_et "
            f"has {returns_et.shape[1:]}; initialise with moving_average_init(T)."
        )
    correction = 1.0 - decay ** state.count.astype(jnp.float32)
    baseline_t = jnp.where(state.count > 0, state.mean_t / jnp.maximum(correction, 1e-12), 0.0)
    batch_mean = jnp.mean(returns_et * _mask_or_ones(mask_et, returns_et), axis=0)
    new_mean = decay * state.mean_t + (1.0 - decay) * batch_mean
    return jax.lax.stop_gradient(baseline_t), MovingAverageState(new_mean, state.count + 1)


def normalize_advantages(
    adv_t: jax.Array, mask_t: jax.Array | None = None, eps: float | jax.Array = 1e-6
) -> jax.Array:
    """Standardise advantages to mean 0 and standard deviation 1 over the valid entries.

    Any rank (e.g. ``(E, T)`` for a whole batch); padding (``mask == 0``) is set to 0. This
    rescales the gradient per batch (and recentres it), a common stabiliser of policy gradients.

    Advantages whose standard deviation is at most ``eps`` carry no signal and are returned as
    0, not divided by ``std + eps``: when every episode has the same return the advantages are
    rounding residue (~1e-7 × |G| in float32), and standardising residue turns it into a random
    unit-size gradient. Choose ``eps`` relative to the returns' scale; the trainer passes
    ``1e-5 · max(1, max|G|)``.

    Args:
      adv_t: advantages.
      mask_t: same shape, 1 for valid entries.
      eps: a standard deviation at most this counts as zero (absolute; a scalar, may be traced).
    """
    mask = _mask_or_ones(mask_t, adv_t)
    if mask.shape != adv_t.shape:
        raise ValueError(
            f"normalize_advantages: mask_t shape {mask.shape} must equal adv_t shape {adv_t.shape}."
        )
    n = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(adv_t * mask) / n
    std = jnp.sqrt(jnp.sum(jnp.square(adv_t - mean) * mask) / n)
    signal = std > eps
    return jnp.where(signal, (adv_t - mean) / jnp.where(signal, std, 1.0), 0.0) * mask


def entropy_loss(entropy_t: jax.Array, mask_t: jax.Array | None = None) -> jax.Array:
    """Negative summed policy entropy of one trajectory (add ``coef ·`` this to the loss).

    Args:
      entropy_t: ``(T,)`` entropies ``H[π_θ(·|s_t)]``.
      mask_t: ``(T,)`` validity mask.

    References:
      Williams & Peng (1991), "Function optimization using connectionist reinforcement learning
      algorithms"; Mnih et al. (2016), "Asynchronous methods for deep reinforcement learning".
    """
    _check_rank("entropy_t", entropy_t, 1, "entropy_loss")
    return -jnp.sum(_mask_or_ones(mask_t, entropy_t) * entropy_t)


def value_loss(v_t: jax.Array, returns_t: jax.Array, mask_t: jax.Array | None = None) -> jax.Array:
    """Squared-error loss ``½ Σ m_t (G_t − V(s_t))²`` of a learned state-value critic.

    Use ``stop_gradient(v_t)`` as the ``baseline_t`` of :func:`reinforce_loss`.

    Args:
      v_t: ``(T,)`` critic values ``V_φ(s_t)``.
      returns_t: ``(T,)`` returns-to-go (constants).
      mask_t: ``(T,)`` validity mask.

    References:
      Sutton et al. (2000), "Policy gradient methods for reinforcement learning with function
      approximation".
    """
    _check_rank("v_t", v_t, 1, "value_loss")
    _check_rank("returns_t", returns_t, 1, "value_loss")
    err = jax.lax.stop_gradient(returns_t) - v_t
    return 0.5 * jnp.sum(_mask_or_ones(mask_t, err) * jnp.square(err))
