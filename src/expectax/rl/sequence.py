r"""Policy gradients for sequence models (RLOO, GRPO, Dr. GRPO, REINFORCE++, ReMax, KL k1/k2/k3).

Pure functions over arrays in the style of rlax, for the setting of language-model training with
outcome rewards: ``G`` prompts (groups), ``K`` sampled completions per prompt, ``T`` (padded)
tokens per completion. Shapes are named by suffix:

- ``rewards_gk``: ``(G, K)`` one scalar reward per completion;
- ``logp_gkt``, ``old_logp_gkt``, ``ref_logp_gkt``: ``(G, K, T)`` log-probabilities
  ``log π(y_t | x, y_{<t})`` of the sampled tokens under the current (differentiated), the
  sampling ("old") and the reference policy;
- ``mask_gkt``: ``(G, K, T)`` 1 for tokens of the completion (up to and including EOS), 0 for
  padding.

A completion's gradient is the score-function (REINFORCE) term
``A_{gk} Σ_t m_{gkt} ∇ log π(y_t|·)``; the per-token surrogate multiplies the advantage by the
core's magic box :func:`expectax.estimators.base.magic_box` of the token log-probability (or by
the importance ratio ``π/π_old``, which has the same gradient at ``π = π_old``), and
:func:`aggregate_loss` says how tokens and sequences are averaged. Which combination estimates
which gradient is measured exactly on an enumerable policy in
``docs/sequence-policy-gradients.md``; in short:

- unbiased for ``∇ E[R]``: :func:`reinforce_advantages` with a baseline that does not depend on
  the sample, :func:`rloo_advantages`, :func:`remax_advantages`, with
  ``loss_agg_mode="seq-mean-token-sum"``; ``"seq-mean-token-sum-norm"`` (Dr. GRPO's constant)
  is the same up to the known factor ``1/constant``;
- :func:`dr_grpo_advantages` (group mean including the sample itself) estimates
  ``(K−1)/K · ∇ E[R]``;
- :func:`grpo_advantages` (std normalisation) and :func:`reinforce_pp_advantages` (batch
  normalisation), and the aggregations ``"token-mean"`` and ``"seq-mean-token-mean"`` are
  biased for ``∇ E[R]``: they change the objective, not only the scale.

NumPy in, NumPy out: when no argument is a JAX array, the inputs are converted at the boundary
and the result comes back as a ``numpy.ndarray``, so that PyTorch or NumPy trainers can call the
advantage and KL functions (``torch.from_numpy`` on the result); the loss functions need JAX
arrays to be differentiated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from expectax.estimators.base import magic_box

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "LOSS_AGG_MODES",
    "advantages",
    "aggregate_loss",
    "clipped_surrogate",
    "dr_grpo_advantages",
    "grpo_advantages",
    "importance_ratios",
    "kl_estimate",
    "kl_loss",
    "kl_penalized_rewards",
    "reinforce_advantages",
    "reinforce_pp_advantages",
    "remax_advantages",
    "rloo_advantages",
    "sequence_policy_loss",
]

LOSS_AGG_MODES = (
    "seq-mean-token-sum",
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
KLEstimator = Literal["k1", "k2", "k3"]
LossAggMode = Literal[
    "seq-mean-token-sum", "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"
]


# --------------------------------------------------------------------------------------------
# Boundary helpers: rank/shape checks, concrete-value checks, NumPy in → NumPy out.


def _numpy_boundary(fn):
    """Convert NumPy inputs to JAX and back: NumPy out when no argument is a JAX array."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        values = list(args) + list(kwargs.values())
        any_jax = any(isinstance(v, jax.Array) for v in values)
        any_numpy = any(isinstance(v, np.ndarray) for v in values)
        out = fn(*args, **kwargs)
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(out))
        if any_numpy and not any_jax and not traced:  # inside jit the result stays a tracer
            return jax.tree_util.tree_map(np.asarray, out)
        return out

    return wrapper


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _host(x) -> np.ndarray | None:
    """``x`` as a NumPy array when its values are known, ``None`` under a trace.

    Value checks compute on this host copy (never with ``jnp``, whose operations inside
    ``jax.jit`` return tracers even on concrete inputs, so that ``bool(...)`` of them raises
    ``TracerBoolConversionError``): an array closed over by a jitted function is still checked,
    a traced one passes through.
    """
    if not _is_concrete(x):
        return None
    return np.asarray(x)


def _as_array(name: str, x, fn: str, rank: int | tuple[int, ...]) -> jax.Array:
    ranks = (rank,) if isinstance(rank, int) else rank
    if x is None:
        raise TypeError(f"{fn}: {name} is required, got None.")
    if not hasattr(x, "shape") and not isinstance(x, int | float):
        # lists and tuples: accept, as NumPy would
        x = np.asarray(x)
    # NumPy in, or a JAX array closed over by a jitted function: keep it concrete (not a
    # constant of the trace), so that the value checks still see it
    with jax.ensure_compile_time_eval():
        arr = jnp.asarray(x)
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            arr = arr.astype(jnp.float32)
    if arr.ndim not in ranks:
        want = " or ".join(map(str, ranks))
        raise ValueError(
            f"{fn}: {name} must have rank {want} ({_SHAPE_HINT.get(name, '')}), got shape "
            f"{arr.shape}. Reshape a flat batch of G·K completions with .reshape(G, K, ...)."
        )
    return arr


_SHAPE_HINT = {
    "rewards_gk": "groups × completions, (G, K)",
    "greedy_rewards_g": "one greedy reward per group, (G,)",
    "logp_gkt": "(G, K, T)",
    "old_logp_gkt": "(G, K, T)",
    "ref_logp_gkt": "(G, K, T)",
    "mask_gkt": "(G, K, T)",
    "loss_gkt": "(G, K, T)",
    "advantages": "(G, K) or (G, K, T)",
    "ratio_gkt": "(G, K, T)",
}


def _check_finite(name: str, x: jax.Array, fn: str) -> None:
    arr = _host(x)
    if arr is not None and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0].tolist()
        what = (
            "Fix the reward function or drop the completion (and its group) before computing "
            "advantages."
            if "reward" in name
            else f"Check how {name} was computed (a NaN reward or model output upstream?)."
        )
        raise ValueError(
            f"{fn}: {name} has a non-finite entry (NaN or inf) at index {tuple(bad)}. {what}"
        )


def _check_logp(name: str, x: jax.Array, fn: str) -> None:
    """Log-probabilities must be finite and ≤ 0 (catches logits, probabilities of 0, NaN)."""
    arr = _host(x)
    if arr is None:
        return
    if np.any(np.isnan(arr)):
        bad = tuple(np.argwhere(np.isnan(arr))[0].tolist())
        raise ValueError(
            f"{fn}: {name} contains NaN (first at index {bad}); compute log-probs with "
            "log_softmax and check the model's outputs."
        )
    if np.any(np.isinf(arr)):
        bad = tuple(np.argwhere(np.isinf(arr))[0].tolist())
        raise ValueError(
            f"{fn}: {name} is infinite at index {bad}: a sampled token of probability 0 under "
            "that policy means log-probs of another policy or batch (or padding filled with "
            "-inf). Pass log_softmax(logits) gathered at the sampled tokens of this batch, and "
            "fill padding with 0 (it is masked)."
        )
    if np.any(arr > 1e-5):
        bad = tuple(np.argwhere(arr > 1e-5)[0].tolist())
        raise ValueError(
            f"{fn}: {name} must hold log-probabilities (≤ 0), got a maximum of "
            f"{float(arr.max()):.4g} (first positive at index {bad}). Pass log_softmax(logits) "
            "gathered at the sampled tokens, not the logits themselves."
        )


def _check_mask_values(name: str, m: jax.Array, fn: str) -> None:
    """A mask holds 1 for real tokens and 0 for padding (weights in [0, 1] are accepted)."""
    arr = _host(m)
    if arr is None:
        return
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > 1)
    if np.any(bad):
        where = tuple(np.argwhere(bad)[0].tolist())
        raise ValueError(
            f"{fn}: {name} must hold 1 for tokens and 0 for padding (or weights in [0, 1]), "
            f"got {arr[where]!r} at index {where}. Pass a 0/1 mask, e.g. "
            "(tokens != pad_id).astype(float)."
        )


def _check_same_shape(fn: str, ref_name: str, ref: jax.Array, **others) -> None:
    for name, x in others.items():
        if x is not None and x.shape != ref.shape:
            raise ValueError(
                f"{fn}: {name} has shape {x.shape} but {ref_name} has shape {ref.shape}; they "
                "must be equal (the same completions, token for token)."
            )


def _check_group_size(fn: str, rewards_gk: jax.Array, minimum: int, why: str) -> None:
    k = rewards_gk.shape[1]
    if k < minimum:
        raise ValueError(
            f"{fn}: rewards_gk has K={k} completion(s) per group (axis 1); {why} needs "
            f"K ≥ {minimum}. Sample more completions per prompt, or use reinforce_advantages "
            "with a baseline that does not need the group."
        )


def _mask(mask_gkt, like: jax.Array, fn: str, like_name: str = "logp_gkt") -> jax.Array:
    if mask_gkt is None:
        return jnp.ones_like(like)
    m = _as_array("mask_gkt", mask_gkt, fn, 3)
    _check_same_shape(fn, like_name, like, mask_gkt=m)
    _check_mask_values("mask_gkt", m, fn)
    return m.astype(like.dtype)


def _check_nonnegative(name: str, value, fn: str) -> None:
    """A coefficient ≥ 0 (checked when concrete: a traced schedule passes through)."""
    arr = _host(value)
    if arr is not None and not np.all(arr >= 0):
        raise ValueError(f"{fn}: {name} must be ≥ 0 (and not NaN), got {value!r}.")


def _check_eps(eps, fn: str, name: str = "eps") -> None:
    """A stabiliser added to a standard deviation: finite and ≥ 0 (checked when concrete)."""
    arr = _host(eps)
    if arr is not None and not (arr.ndim == 0 and np.isfinite(arr) and arr >= 0):
        raise ValueError(
            f"{fn}: {name} must be a finite scalar ≥ 0 (it is added to the standard deviation "
            f"before dividing), got {eps!r}. Use a small positive value such as 1e-4 (TRL) or "
            "1e-6 (verl)."
        )


def _safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den``, and 0 where ``den == 0`` (a group of equal rewards with ``eps = 0``)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _group_mean(r_gk: jax.Array) -> jax.Array:
    # mean as ref + mean(r − ref): identical rewards give exactly zero deviations
    ref = r_gk[:, :1]
    return ref + jnp.mean(r_gk - ref, axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Advantages: (G, K) rewards → (G, K) advantages (constants: stop_gradient).


@_numpy_boundary
def reinforce_advantages(rewards_gk, baseline=0.0) -> jax.Array:
    r"""REINFORCE advantages with a baseline that does not depend on the group's samples.

    .. math::

        A_{gk} = R_{gk} - b_g .

    Unbiased for ``∇ E[R]`` whenever ``b`` is independent of the completions it is subtracted
    from: a constant, a per-prompt value, or a moving average of *earlier* batches (e.g.
    :func:`expectax.rl.moving_average_baseline` on ``rewards_gk.reshape(-1, 1)``, which returns
    the baseline from the old state).

    Args:
      rewards_gk: ``(G, K)`` rewards.
      baseline: scalar or ``(G,)`` baseline per group.

    Returns:
      ``(G, K)`` advantages.

    References:
      Williams (1992), "Simple statistical gradient-following algorithms for connectionist
      reinforcement learning".
    """
    fn = "reinforce_advantages"
    r = _as_array("rewards_gk", rewards_gk, fn, 2)
    _check_finite("rewards_gk", r, fn)
    with jax.ensure_compile_time_eval():
        b = jnp.asarray(baseline, r.dtype)
    _check_finite("baseline", b, fn)
    if b.ndim == 1:
        if b.shape != r.shape[:1]:
            raise ValueError(
                f"{fn}: baseline has shape {b.shape}; expected a scalar or one value per group "
                f"{r.shape[:1]}."
            )
        b = b[:, None]
    elif b.ndim != 0:
        raise ValueError(
            f"{fn}: baseline must be a scalar or (G,), got shape {b.shape}. A baseline per "
            "completion that uses the group's rewards is rloo_advantages."
        )
    return jax.lax.stop_gradient(r - b)


@_numpy_boundary
def rloo_advantages(rewards_gk) -> jax.Array:
    r"""REINFORCE leave-one-out (RLOO) advantages.

    .. math::

        A_{gk} = R_{gk} - \frac{1}{K-1}\sum_{j \ne k} R_{gj}
               = \frac{K}{K-1}\Big(R_{gk} - \bar R_g\Big).

    Each completion's baseline uses only the other ``K − 1`` completions of its group, which are
    independent of it: unbiased for ``∇ E[R]``.

    Args:
      rewards_gk: ``(G, K)`` rewards, ``K ≥ 2``.

    Returns:
      ``(G, K)`` advantages.

    References:
      Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE samples, get a baseline for free!".
      Ahmadian et al. (2024), "Back to basics: revisiting REINFORCE style optimization for
      learning from human feedback in LLMs", arXiv:2402.14740.
    """
    fn = "rloo_advantages"
    r = _as_array("rewards_gk", rewards_gk, fn, 2)
    _check_group_size(fn, r, 2, "a leave-one-out baseline")
    _check_finite("rewards_gk", r, fn)
    k = r.shape[1]
    ref = r[:, :1]
    d = r - ref
    baseline = ref + (jnp.sum(d, axis=1, keepdims=True) - d) / (k - 1)
    return jax.lax.stop_gradient(r - baseline)


@_numpy_boundary
def grpo_advantages(rewards_gk, eps: float = 1e-4, ddof: int = 1) -> jax.Array:
    r"""GRPO's group-normalised advantages.

    .. math::

        A_{gk} = \frac{R_{gk} - \bar R_g}{\operatorname{std}_g(R) + \varepsilon} .

    The division by the group's standard deviation makes the gradient invariant to the reward
    scale and weights prompts by ``1/std`` ("difficulty bias"); both the mean (which includes
    the sample itself) and the std depend on the sample, so the estimate is **biased** for
    ``∇ E[R]`` and for any fixed multiple of it (measured in
    ``docs/sequence-policy-gradients.md``). A group whose rewards are all equal gets exactly
    zero advantages.

    Args:
      rewards_gk: ``(G, K)`` rewards, ``K ≥ 2``.
      eps: added to the std, as in TRL's ``GRPOTrainer`` (1e-4); a finite scalar ≥ 0. With
        ``eps = 0`` a group of equal rewards gets zero advantages (not 0/0).
      ddof: 1 for the sample std (``torch.std``'s default, used by TRL), 0 for the population
        std.

    Returns:
      ``(G, K)`` advantages.

    References:
      Shao et al. (2024), "DeepSeekMath: pushing the limits of mathematical reasoning in open
      language models", arXiv:2402.03300, section 4.1.
    """
    fn = "grpo_advantages"
    r = _as_array("rewards_gk", rewards_gk, fn, 2)
    _check_group_size(fn, r, 2, "a group mean and std")
    _check_finite("rewards_gk", r, fn)
    if ddof not in (0, 1):
        raise ValueError(f"{fn}: ddof must be 0 or 1, got {ddof}.")
    _check_eps(eps, fn)
    d = r - _group_mean(r)
    std = jnp.sqrt(jnp.sum(d**2, axis=1, keepdims=True) / (r.shape[1] - ddof))
    return jax.lax.stop_gradient(_safe_divide(d, std + eps))


@_numpy_boundary
def dr_grpo_advantages(rewards_gk) -> jax.Array:
    r"""Dr. GRPO's advantages: the group mean subtracted, no std normalisation.

    .. math::

        A_{gk} = R_{gk} - \bar R_g = \frac{K-1}{K}\, A^{\text{RLOO}}_{gk}.

    Because the mean includes the sample itself, the expected gradient is exactly
    ``(K − 1)/K · ∇ E[R]``: unbiased in direction, shrunk by a known factor (the RLOO
    advantages are this times ``K/(K − 1)``).

    Args:
      rewards_gk: ``(G, K)`` rewards, ``K ≥ 2``.

    Returns:
      ``(G, K)`` advantages.

    References:
      Liu et al. (2025), "Understanding R1-Zero-like training: a critical perspective",
      arXiv:2503.20783.
    """
    fn = "dr_grpo_advantages"
    r = _as_array("rewards_gk", rewards_gk, fn, 2)
    _check_group_size(fn, r, 2, "a group-mean baseline")
    _check_finite("rewards_gk", r, fn)
    return jax.lax.stop_gradient(r - _group_mean(r))


@_numpy_boundary
def reinforce_pp_advantages(
    rewards_gk, mask_gk=None, group_baseline: bool = False, eps: float = 1e-8
) -> jax.Array:
    r"""REINFORCE++ advantages: normalised over the whole batch, not per group.

    .. math::

        A_{gk} = \frac{\tilde R_{gk} - \operatorname{mean}(\tilde R)}{\operatorname{std}(\tilde R)
        + \varepsilon}, \qquad \tilde R_{gk} = R_{gk}\ \text{or}\ R_{gk} - \bar R_g
        \ (\text{"REINFORCE++-baseline"}),

    with mean and std over all ``G·K`` completions. Batch normalisation divides by a statistic
    of the batch the sample belongs to: biased for ``∇ E[R]``, the bias shrinking as the batch
    grows (as ``1/(G K)``) towards ``∇ E[R] / std(R)``.

    Args:
      rewards_gk: ``(G, K)`` rewards (with any KL penalty already applied, e.g.
        :func:`kl_penalized_rewards`).
      mask_gk: optional ``(G, K)`` 1 for completions that count in the batch statistics.
      group_baseline: subtract the group mean first (REINFORCE++-baseline).
      eps: added to the std.

    Returns:
      ``(G, K)`` advantages.

    References:
      Hu (2025), "REINFORCE++: a simple and efficient approach for aligning large language
      models", arXiv:2501.03262.
    """
    fn = "reinforce_pp_advantages"
    r = _as_array("rewards_gk", rewards_gk, fn, 2)
    _check_finite("rewards_gk", r, fn)
    _check_eps(eps, fn)
    if group_baseline:
        _check_group_size(fn, r, 2, "group_baseline=True")
        r = r - _group_mean(r)
    m = jnp.ones_like(r) if mask_gk is None else _as_array("mask_gk", mask_gk, fn, 2)
    _check_same_shape(fn, "rewards_gk", r, mask_gk=m)
    if mask_gk is not None:
        _check_mask_values("mask_gk", m, fn)
        m_host = _host(m)
        if m_host is not None and not np.any(m_host > 0):
            raise ValueError(
                f"{fn}: mask_gk excludes every completion, so the batch mean and std are "
                "undefined. Keep at least one completion (1 in mask_gk) or skip the batch."
            )
    n = jnp.maximum(jnp.sum(m), 1.0)
    mean = jnp.sum(r * m) / n
    std = jnp.sqrt(jnp.sum(jnp.square(r - mean) * m) / n)
    return jax.lax.stop_gradient(_safe_divide(r - mean, std + eps) * m)


@_numpy_boundary
def remax_advantages(rewards_gk, greedy_rewards_g) -> jax.Array:
    r"""ReMax advantages: the reward of the greedy completion of the same prompt as baseline.

    .. math::

        A_{gk} = R_{gk} - R(\hat y_g), \qquad \hat y_{g,t} = \arg\max_v \pi(v \mid x_g,
        \hat y_{g,<t}).

    The greedy completion is a deterministic function of the parameters, independent of the
    sampled completions: unbiased for ``∇ E[R]`` (one extra greedy decode per prompt).

    Args:
      rewards_gk: ``(G, K)`` rewards of the sampled completions.
      greedy_rewards_g: ``(G,)`` reward of each prompt's greedy completion.

    Returns:
      ``(G, K)`` advantages.

    References:
      Li et al. (2024), "ReMax: a simple, effective, and efficient reinforcement learning method
      for aligning large language models", arXiv:2310.10505.
    """
    fn = "remax_advantages"
    r = _as_array("rewards_gk", rewards_gk, fn, 2)
    b = _as_array("greedy_rewards_g", greedy_rewards_g, fn, 1)
    if b.shape != r.shape[:1]:
        raise ValueError(
            f"{fn}: greedy_rewards_g has shape {b.shape} but rewards_gk has {r.shape[0]} groups; "
            "pass one greedy reward per group."
        )
    _check_finite("rewards_gk", r, fn)
    _check_finite("greedy_rewards_g", b, fn)
    return jax.lax.stop_gradient(r - b[:, None])


#: The names :func:`advantages` dispatches on (one per advantage estimator above).
ADVANTAGE_ESTIMATORS = (
    "reinforce",
    "rloo",
    "grpo",
    "dr-grpo",
    "reinforce++",
    "reinforce++-baseline",
    "remax",
)


def advantages(name: str, rewards_gk, *, baseline=0.0, greedy_rewards_g=None) -> jax.Array:
    """The ``(G, K)`` advantages of the estimator ``name``, one of :data:`ADVANTAGE_ESTIMATORS`.

    A registry in one function (what a trainer's ``--advantage`` flag selects):
    ``"reinforce"`` is :func:`reinforce_advantages` with ``baseline``, ``"remax"``
    :func:`remax_advantages` with ``greedy_rewards_g``, ``"reinforce++-baseline"``
    :func:`reinforce_pp_advantages` with ``group_baseline=True``; the others take only the
    rewards.
    """
    estimators: dict[str, Callable[[], jax.Array]] = {
        "reinforce": lambda: reinforce_advantages(rewards_gk, baseline),
        "rloo": lambda: rloo_advantages(rewards_gk),
        "grpo": lambda: grpo_advantages(rewards_gk),
        "dr-grpo": lambda: dr_grpo_advantages(rewards_gk),
        "reinforce++": lambda: reinforce_pp_advantages(rewards_gk),
        "reinforce++-baseline": lambda: reinforce_pp_advantages(rewards_gk, group_baseline=True),
        "remax": lambda: remax_advantages(rewards_gk, greedy_rewards_g),
    }
    if name not in estimators:
        raise ValueError(
            f"advantages: unknown estimator {name!r}; one of {', '.join(ADVANTAGE_ESTIMATORS)}."
        )
    return estimators[name]()


# --------------------------------------------------------------------------------------------
# KL to the reference policy.


def _k_of_log_ratio(log_r: jax.Array, estimator: str, fn: str) -> jax.Array:
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * jnp.square(log_r)
    if estimator == "k3":
        return jnp.expm1(log_r) - log_r
    raise ValueError(f"{fn}: estimator must be 'k1', 'k2' or 'k3', got {estimator!r}.")


@_numpy_boundary
def kl_estimate(
    logp_gkt, ref_logp_gkt, mask_gkt=None, estimator: KLEstimator = "k3", level: str = "token"
) -> jax.Array:
    r"""Schulman's single-sample estimators of ``KL(π ‖ π_ref)`` at the sampled tokens.

    With ``x ~ π`` and ``ρ = π_ref(x)/π(x)``:

    .. math::

        k_1 = -\log\rho, \qquad k_2 = \tfrac12 (\log\rho)^2, \qquad k_3 = (\rho - 1) - \log\rho .

    ``E_π[k1] = E_π[k3] = KL(π‖π_ref)`` (k3 ≥ 0, lower variance when π ≈ π_ref); k2 is biased
    (its expectation is KL only to second order). Per token (``level="token"``) the masked sum
    over ``t`` of ``k(ρ_t)`` with ``ρ_t = π_ref(y_t|y_{<t})/π(y_t|y_{<t})`` is, for k1 and k3,
    unbiased for the KL of whole sequences (chain rule); with ``level="sequence"`` the estimator
    is applied once to ``ρ = Π_t ρ_t``.

    Their *gradients* (used as a loss, :func:`kl_loss`) and their use as a reward penalty
    (:func:`kl_penalized_rewards`) estimate different things; see those functions.

    Args:
      logp_gkt: ``(G, K, T)`` log-probabilities under the current policy π.
      ref_logp_gkt: ``(G, K, T)`` under the reference policy.
      mask_gkt: ``(G, K, T)`` token mask.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
      level: ``"token"`` → ``(G, K, T)`` per-token values (0 on padding); ``"sequence"`` →
        ``(G, K)`` per-sequence values.

    References:
      Schulman (2020), "Approximating KL divergence", http://joschu.net/blog/kl-approx.html.
    """
    return _kl_estimate(logp_gkt, ref_logp_gkt, mask_gkt, estimator, level, "kl_estimate")


def _kl_estimate(logp_gkt, ref_logp_gkt, mask_gkt, estimator, level, fn: str) -> jax.Array:
    if level not in ("token", "sequence"):
        raise ValueError(f"{fn}: level must be 'token' or 'sequence', got {level!r}.")
    if estimator not in ("k1", "k2", "k3"):
        raise ValueError(f"{fn}: estimator must be 'k1', 'k2' or 'k3', got {estimator!r}.")
    lp = _as_array("logp_gkt", logp_gkt, fn, 3)
    ref = _as_array("ref_logp_gkt", ref_logp_gkt, fn, 3)
    _check_same_shape(fn, "logp_gkt", lp, ref_logp_gkt=ref)
    _check_logp("logp_gkt", lp, fn)
    _check_logp("ref_logp_gkt", ref, fn)
    m = _mask(mask_gkt, lp, fn)
    log_r = (jax.lax.stop_gradient(ref) - lp) * m
    if level == "token":
        return _k_of_log_ratio(log_r, estimator, fn) * m
    return _k_of_log_ratio(jnp.sum(log_r, axis=-1), estimator, fn)


@_numpy_boundary
def kl_penalized_rewards(
    rewards_gk,
    logp_gkt,
    ref_logp_gkt,
    mask_gkt=None,
    beta: float = 0.1,
    estimator: KLEstimator = "k1",
) -> jax.Array:
    r"""Rewards with a KL penalty folded in (PPO-RLHF / RLOO / REINFORCE++ style).

    .. math::

        \tilde R_{gk} = R_{gk} - \beta \sum_t m_{gkt}\, k(\rho_{gkt}) ,

    a constant (``stop_gradient``). With ``k1`` the penalty is ``β log π(y)/π_ref(y)`` and the
    score-function gradient of ``E[R̃]`` is **unbiased for** ``∇(E[R] − β KL(π‖π_ref))``
    (the missing pathwise term ``E[∇ k1] = E[∇ log π] = 0``). With ``k3`` the value is unbiased
    but the gradient is not: ``E_π[∇ k3] = −E_{π_ref}[∇ log π] ≠ 0`` is dropped. ``k2`` is
    biased in both.

    Args:
      rewards_gk: ``(G, K)`` rewards.
      logp_gkt, ref_logp_gkt, mask_gkt: as in :func:`kl_estimate`.
      beta: the KL coefficient ``β ≥ 0``.
      estimator: ``"k1"`` (recommended here), ``"k2"`` or ``"k3"``.

    Returns:
      ``(G, K)`` penalised rewards.

    References:
      Ziegler et al. (2019), "Fine-tuning language models from human preferences"; Schulman
      (2020).
    """
    fn = "kl_penalized_rewards"
    r = _as_array("rewards_gk", rewards_gk, fn, 2)
    _check_finite("rewards_gk", r, fn)
    lp = _as_array("logp_gkt", logp_gkt, fn, 3)
    if lp.shape[:2] != r.shape:
        raise ValueError(
            f"{fn}: logp_gkt has (G, K) = {lp.shape[:2]} but rewards_gk has shape {r.shape}."
        )
    _check_nonnegative("beta", beta, fn)
    k = _kl_estimate(lp, ref_logp_gkt, mask_gkt, estimator, "token", fn)
    return jax.lax.stop_gradient(r - beta * jnp.sum(k, axis=-1))


@_numpy_boundary
def kl_loss(
    logp_gkt,
    ref_logp_gkt,
    mask_gkt=None,
    estimator: KLEstimator = "k3",
    loss_agg_mode: LossAggMode = "seq-mean-token-sum",
    level: str = "token",
    constant: float | None = None,
) -> jax.Array:
    r"""KL to the reference as a differentiable loss term (GRPO style: ``loss + β · kl_loss``).

    The gradient flows through ``log π`` of the sampled tokens only (no score-function term for
    the sampling), so what it estimates depends on the estimator:

    - ``k1``: ``E_π[∇ k1] = E_π[∇ log π] = 0`` — no KL gradient at all, in expectation;
    - ``k2``: ``∇ k2 = (log π − log π_ref) ∇ log π``, the REINFORCE estimator of ``∇ KL`` with
      the k1 reward — **unbiased for ∇KL(π‖π_ref) at** ``level="sequence"``; per token
      (``level="token"``) it drops the KL of later tokens from each token's weight, biased for
      sequences longer than one token;
    - ``k3`` (GRPO's choice): ``E_π[∇ k3] = −Σ_y π_ref(y) ∇ log π(y) = ∇ KL(π_ref‖π)``, the
      gradient of the *reverse* KL at one token; for sequences (per token, prefixes sampled from
      π) it is neither KL's gradient.

    Args:
      logp_gkt, ref_logp_gkt, mask_gkt: as in :func:`kl_estimate`.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
      loss_agg_mode: how per-token values are averaged (:func:`aggregate_loss`); ignored at
        ``level="sequence"`` (mean over sequences).
      level: ``"token"`` or ``"sequence"``, as in :func:`kl_estimate`.
      constant: the constant of ``"seq-mean-token-sum-norm"``.

    Returns:
      The scalar loss term.

    References:
      Schulman (2020); Shao et al. (2024) (GRPO's k3 loss); Tang & Munos (2025), "On a few
      pitfalls in KL divergence gradient estimation for RL", arXiv:2506.09477.
    """
    fn = "kl_loss"
    k = _kl_estimate(logp_gkt, ref_logp_gkt, mask_gkt, estimator, level, fn)
    if level == "sequence":
        return jnp.mean(k)
    m = _mask(mask_gkt, k, fn)
    return _aggregate(k, m, loss_agg_mode, constant, fn)


# --------------------------------------------------------------------------------------------
# Ratios, clipping, aggregation and the policy loss.


@_numpy_boundary
def importance_ratios(logp_gkt, old_logp_gkt=None) -> jax.Array:
    r"""Per-token importance ratios ``π(y_t|·)/π_old(y_t|·)``.

    .. math::

        \rho_{gkt} = \exp(\log\pi_\theta - \log\pi_{\text{old}}) ;\qquad
        \text{on-policy } (\pi_{\text{old}} = \text{None}):\ \rho = \square(\log\pi_\theta),

    the core's magic box (value 1, gradient ``∇ log π``), so that the first of several PPO
    steps on one batch and a plain REINFORCE step are the same computation. ``old_logp_gkt`` is
    a constant (``stop_gradient``).

    Args:
      logp_gkt: ``(G, K, T)`` current log-probabilities (differentiated).
      old_logp_gkt: ``(G, K, T)`` log-probabilities under the policy that sampled the batch, or
        ``None`` for on-policy.

    Returns:
      ``(G, K, T)`` ratios.
    """
    return _ratios(logp_gkt, old_logp_gkt, "importance_ratios")


def _ratios(logp_gkt, old_logp_gkt, fn: str) -> jax.Array:
    lp = _as_array("logp_gkt", logp_gkt, fn, 3)
    _check_logp("logp_gkt", lp, fn)
    if old_logp_gkt is None:
        return magic_box(lp)
    old = _as_array("old_logp_gkt", old_logp_gkt, fn, 3)
    _check_same_shape(fn, "logp_gkt", lp, old_logp_gkt=old)
    _check_logp("old_logp_gkt", old, fn)
    return jnp.exp(lp - jax.lax.stop_gradient(old))


def clipped_surrogate(
    ratio_gkt, advantages, clip_eps: float = 0.2, clip_eps_high: float | None = None
) -> jax.Array:
    r"""PPO's clipped surrogate, per token (a loss: minimise).

    .. math::

        \ell_{gkt} = -\min\big(\rho_{gkt} A,\ \operatorname{clip}(\rho_{gkt}, 1-\epsilon_{lo},
        1+\epsilon_{hi})\, A\big).

    At ``ρ = 1`` (the first step on a batch) the gradient is ``−A ∇ log π``. The clip keeps
    later steps on the same batch near the sampling policy; it biases the gradient wherever it
    is active. ``clip_eps_high`` > ``clip_eps`` is DAPO's "clip-higher".

    Args:
      ratio_gkt: ``(G, K, T)`` ratios (:func:`importance_ratios`).
      advantages: ``(G, K)`` per-sequence or ``(G, K, T)`` per-token advantages.
      clip_eps: ``ε_lo``; ``None`` or ``inf`` disables clipping.
      clip_eps_high: ``ε_hi`` (default ``clip_eps``).

    Returns:
      ``(G, K, T)`` per-token losses (aggregate them with :func:`aggregate_loss`).

    References:
      Schulman et al. (2017), "Proximal policy optimization algorithms", arXiv:1707.06347. Yu et
      al. (2025), "DAPO", arXiv:2503.14476.
    """
    return _clipped(ratio_gkt, advantages, clip_eps, clip_eps_high, "clipped_surrogate")


def _clipped(
    ratio_gkt, advantages, clip_eps, clip_eps_high, fn: str, ratio_name: str = "ratio_gkt"
) -> jax.Array:
    ratio = _as_array(ratio_name, ratio_gkt, fn, 3)
    adv = _as_array("advantages", advantages, fn, (2, 3))
    _check_finite("advantages", adv, fn)
    if adv.ndim == 2:
        if adv.shape != ratio.shape[:2]:
            raise ValueError(
                f"{fn}: advantages has shape {adv.shape} but {ratio_name} has (G, K) = "
                f"{ratio.shape[:2]}; pass one advantage per completion (G, K) or per token "
                "(G, K, T) of the same batch."
            )
        adv = adv[:, :, None]
    elif adv.shape != ratio.shape:
        raise ValueError(
            f"{fn}: advantages has shape {adv.shape}, {ratio_name} {ratio.shape}; per-token "
            "advantages must match token for token."
        )
    adv = jax.lax.stop_gradient(adv)
    eps_host = None if clip_eps is None else _host(clip_eps)
    if clip_eps is None or (eps_host is not None and np.all(eps_host == np.inf)):
        return -ratio * adv
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    _check_nonnegative("clip_eps", clip_eps, fn)
    _check_nonnegative("clip_eps_high", hi, fn)
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + hi)
    return -jnp.minimum(ratio * adv, clipped * adv)


def aggregate_loss(
    loss_gkt,
    mask_gkt=None,
    loss_agg_mode: LossAggMode = "seq-mean-token-sum",
    constant: float | None = None,
) -> jax.Array:
    r"""Average per-token losses over tokens and sequences (verl's ``loss_agg_mode`` names).

    With ``N = G·K`` sequences, lengths ``|y_i| = Σ_t m_{it}``:

    - ``"seq-mean-token-sum"``: ``(1/N) Σ_i Σ_t m_{it} ℓ_{it}`` — the REINFORCE estimator of the
      sequence objective (unbiased with an unbiased advantage);
    - ``"token-mean"``: ``Σ_{i,t} m ℓ / Σ_{i,t} m`` (DAPO) — divides by the batch's random token
      count: biased, tending to ``∇E[R]/E|y|`` for large batches;
    - ``"seq-mean-token-mean"``: ``(1/N) Σ_i (1/|y_i|) Σ_t m ℓ`` (GRPO) — each sequence's gradient
      divided by its own length: with a constant baseline ``b`` it is unbiased for
      ``∇ E[(R − b)/|y|]``, not ``∇ E[R]`` (the length bias of Liu et al. 2025);
    - ``"seq-mean-token-sum-norm"``: ``(1/N) Σ_i Σ_t m ℓ / C`` with a constant ``C`` (default
      ``T``, the padded length; Dr. GRPO's ``MAX_TOKENS``): the first mode divided by ``C``.

    Args:
      loss_gkt: ``(G, K, T)`` per-token losses.
      mask_gkt: ``(G, K, T)`` token mask.
      loss_agg_mode: one of :data:`LOSS_AGG_MODES`.
      constant: ``C`` for ``"seq-mean-token-sum-norm"``.

    Returns:
      The scalar loss.

    References:
      Liu et al. (2025), arXiv:2503.20783; Yu et al. (2025), DAPO, arXiv:2503.14476.
    """
    fn = "aggregate_loss"
    loss = _as_array("loss_gkt", loss_gkt, fn, 3)
    _check_finite("loss_gkt", loss, fn)
    m = _mask(mask_gkt, loss, fn, "loss_gkt")
    return _aggregate(loss, m, loss_agg_mode, constant, fn)


def _aggregate(
    loss: jax.Array,
    m: jax.Array,
    loss_agg_mode: str,
    constant: float | None,
    fn: str,
) -> jax.Array:
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(
            f"{fn}: loss_agg_mode must be one of {', '.join(LOSS_AGG_MODES)}; got "
            f"{loss_agg_mode!r}."
        )
    masked = loss * m
    if loss_agg_mode == "seq-mean-token-sum":
        return jnp.mean(jnp.sum(masked, axis=-1))
    if loss_agg_mode == "token-mean":
        m_host = _host(m)
        if m_host is not None and not np.any(m_host > 0):
            raise ValueError(
                f"{fn}: mask_gkt has no tokens at all, so 'token-mean' would divide by zero. "
                "Pass the mask of this batch's completions (1 for each token, EOS included)."
            )
        return jnp.sum(masked) / jnp.maximum(jnp.sum(m), 1.0)
    if loss_agg_mode == "seq-mean-token-mean":
        lengths = jnp.sum(m, axis=-1)
        m_host = _host(m)
        if m_host is not None and np.any(m_host.sum(-1) == 0):
            g, k = np.argwhere(m_host.sum(-1) == 0)[0].tolist()
            raise ValueError(
                f"{fn}: mask_gkt leaves sequence (group {g}, completion {k}) with no tokens, so "
                "'seq-mean-token-mean' would divide by zero. Keep at least one token (e.g. EOS) "
                "per completion or drop the empty ones."
            )
        return jnp.mean(jnp.sum(masked, axis=-1) / jnp.maximum(lengths, 1.0))
    # "seq-mean-token-sum-norm"
    c = loss.shape[-1] if constant is None else constant
    c_host = _host(c)
    if c_host is not None and not np.all(c_host > 0):
        raise ValueError(f"{fn}: constant must be > 0, got {c!r}.")
    return jnp.mean(jnp.sum(masked, axis=-1)) / c


def sequence_policy_loss(
    logp_gkt,
    advantages,
    mask_gkt=None,
    old_logp_gkt=None,
    clip_eps: float | None = None,
    clip_eps_high: float | None = None,
    loss_agg_mode: LossAggMode = "seq-mean-token-sum",
    constant: float | None = None,
) -> jax.Array:
    r"""The policy-gradient loss of a batch of completions (REINFORCE, RLOO, GRPO, PPO, …).

    .. math::

        L = \operatorname{agg}_{i,t}\Big[-\min\big(\rho_{it} A_i,\
        \operatorname{clip}(\rho_{it})A_i\big)\Big], \qquad
        \nabla L\big|_{\pi = \pi_{\text{old}}} = -\operatorname{agg}_{i,t}\big[A_i\,\nabla\log
        \pi(y_{it}|\cdot)\big].

    The variant is the choice of ``advantages`` (one of the ``*_advantages`` functions, possibly
    on :func:`kl_penalized_rewards`), ``loss_agg_mode`` (:func:`aggregate_loss`) and whether the
    batch is reused for several clipped steps (``old_logp_gkt``, ``clip_eps``). On-policy
    without clipping the surrogate is the core's magic box times the advantage, whose value is
    ``−agg(A)`` and whose derivatives of every order are score-function estimates.

    Args:
      logp_gkt: ``(G, K, T)`` log-probabilities of the sampled tokens under the current policy.
      advantages: ``(G, K)`` or ``(G, K, T)`` advantages (constants).
      mask_gkt: ``(G, K, T)`` token mask.
      old_logp_gkt: ``(G, K, T)`` log-probabilities under the sampling policy (for PPO-style
        reuse of a batch), or ``None``.
      clip_eps, clip_eps_high: PPO clip range (:func:`clipped_surrogate`); ``None``: no clip.
      loss_agg_mode, constant: :func:`aggregate_loss`.

    Returns:
      The scalar loss to minimise.

    Example:
      >>> adv = rloo_advantages(rewards_gk)                        # (G, K)
      >>> loss = sequence_policy_loss(logp_gkt, adv, mask_gkt)     # unbiased for −∇E[R]

    References:
      Williams (1992); Schulman et al. (2017); Shao et al. (2024); Liu et al. (2025).
    """
    fn = "sequence_policy_loss"
    lp = _as_array("logp_gkt", logp_gkt, fn, 3)
    m = _mask(mask_gkt, lp, fn)
    ratio = _ratios(lp, old_logp_gkt, fn)
    per_token = _clipped(ratio, advantages, clip_eps, clip_eps_high, fn, "logp_gkt")
    return _aggregate(per_token, m, loss_agg_mode, constant, fn)
