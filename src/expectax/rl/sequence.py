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
    "IMPORTANCE_SAMPLING_LEVELS",
    "LOSS_AGG_MODES",
    "ROLLOUT_CORRECTION_MODES",
    "advantages",
    "aggregate_loss",
    "cispo_loss",
    "clipped_surrogate",
    "dr_grpo_advantages",
    "dynamic_sampling_mask",
    "gdpo_advantages",
    "gmpo_loss",
    "grpo_advantages",
    "gspo_loss",
    "importance_ratios",
    "james_stein_advantages",
    "kl_estimate",
    "kl_loss",
    "kl_penalized_rewards",
    "opo_advantages",
    "overlong_penalty",
    "reinforce_advantages",
    "reinforce_pp_advantages",
    "remax_advantages",
    "rloo_advantages",
    "rollout_correction_weights",
    "sapo_loss",
    "sequence_policy_loss",
    "vespo_loss",
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
    ``∇ E[R]`` and in general for any fixed multiple of it (measured in
    ``docs/sequence-policy-gradients.md``). Exception, exact by enumeration: with 0/1 rewards
    the expected gradient is always parallel to ``∇E[R]`` (a factor that depends on ``θ``), and
    a *fixed* multiple at ``K = 2`` (``1/(√2 + 2ε)``, ``ddof=1``; ``1/(1 + 2ε)``, ``ddof=0``:
    the advantages are RLOO's times that factor) and ``K = 3`` (every informative group has the
    same std). A group whose rewards are all equal gets exactly zero advantages.

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
    of the batch the sample belongs to: biased for ``∇ E[R]``, tending to ``∇ E[R] / std(R)``
    as the batch grows, with a relative bias ``c/N + O(1/N²)`` in ``N = G·K`` (checked exactly
    by enumeration for ``N = 2…6`` on the tiny policy: ``N × bias`` 0.95 → 0.68).

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
    # mean as ref + mean(r − ref): a batch of equal rewards gives exactly zero deviations (not
    # rounding residue divided by eps)
    ref = jnp.sum(r * m) / n
    mean = ref + jnp.sum((r - ref) * m) / n
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
    "opo",
    "james-stein",
)


def advantages(
    name: str, rewards_gk, *, baseline=0.0, greedy_rewards_g=None, lengths_gk=None
) -> jax.Array:
    """The ``(G, K)`` advantages of the estimator ``name``, one of :data:`ADVANTAGE_ESTIMATORS`.

    A registry in one function (what a trainer's ``--advantage`` flag selects):
    ``"reinforce"`` is :func:`reinforce_advantages` with ``baseline``, ``"remax"``
    :func:`remax_advantages` with ``greedy_rewards_g``, ``"reinforce++-baseline"``
    :func:`reinforce_pp_advantages` with ``group_baseline=True``, ``"opo"``
    :func:`opo_advantages` with ``lengths_gk``, ``"james-stein"``
    :func:`james_stein_advantages`; the others take only the rewards.
    """
    estimators: dict[str, Callable[[], jax.Array]] = {
        "reinforce": lambda: reinforce_advantages(rewards_gk, baseline),
        "rloo": lambda: rloo_advantages(rewards_gk),
        "grpo": lambda: grpo_advantages(rewards_gk),
        "dr-grpo": lambda: dr_grpo_advantages(rewards_gk),
        "reinforce++": lambda: reinforce_pp_advantages(rewards_gk),
        "reinforce++-baseline": lambda: reinforce_pp_advantages(rewards_gk, group_baseline=True),
        "remax": lambda: remax_advantages(rewards_gk, greedy_rewards_g),
        "opo": lambda: opo_advantages(rewards_gk, lengths_gk),
        "james-stein": lambda: james_stein_advantages(rewards_gk),
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
    importance_weighted: bool = False,
    old_logp_gkt=None,
) -> jax.Array:
    r"""KL to the reference as a differentiable loss term (GRPO style: ``loss + β · kl_loss``).

    The gradient flows through ``log π`` of the sampled tokens only (no score-function term for
    the sampling), so what it estimates depends on the estimator:

    - ``k1``: ``E_π[∇ log π(y)] = 0`` per sequence, so with token sums (``seq-mean-token-sum``,
      ``-norm``) no KL gradient at all, in expectation; with ``seq-mean-token-mean`` and lengths
      that vary each sequence's ``∇ log π(y)`` is divided by ``|y|``, an expected gradient
      ``∇E[1/|y|]``: the ascent direction moves by ``−β∇E[1/|y|]``, a push on the length, still
      no KL gradient (exact in ``tests/test_rl_sequence_exact.py``);
    - ``k2``: ``∇ k2 = (log π − log π_ref) ∇ log π``, the REINFORCE estimator of ``∇ KL`` with
      the k1 reward — **unbiased for ∇KL(π‖π_ref) at** ``level="sequence"``; per token
      (``level="token"``) it drops the KL of later tokens from each token's weight, biased for
      sequences longer than one token;
    - ``k3`` (GRPO's choice): ``E_π[∇ k3] = −Σ_y π_ref(y) ∇ log π(y) = ∇ KL(π_ref‖π)``, the
      gradient of the *forward* (mass-covering) KL at one token — not of ``KL(π‖π_ref)``, the
      reverse (mode-seeking) KL that the penalty is meant to be; for sequences (per token,
      prefixes sampled from π) it is neither KL's gradient.

    ``importance_weighted=True`` multiplies each value by the importance ratio
    ``ρ = π/π_old`` *with* its gradient (DeepSeek-V3.2's "unbiased KL estimate"; TRL's
    ``use_bias_correction_kl``):

    .. math::

        \ell = \frac{\pi_\theta}{\pi_{\text{old}}}\Big(\frac{\pi_{\text{ref}}}{\pi_\theta}
        - \log\frac{\pi_{\text{ref}}}{\pi_\theta} - 1\Big),\qquad
        E_{\pi_{\text{old}}}[\nabla \ell] = \nabla\, E_{\pi_\theta}[k]

    at the level where ``ρ`` and ``k`` are taken: at ``level="sequence"`` (``ρ = π(y)/π_old(y)``,
    ``k`` of the sequence ratio) it is **unbiased for** ``∇KL(π‖π_ref)``, also when the batch
    came from another policy ``π_old`` (a rollout engine: pass its log-probs); per token it
    corrects each token's distribution but not its prefix's, so for sequences longer than one
    token it is still biased (measured in ``docs/sequence-policy-gradients.md``). Without
    ``old_logp_gkt`` (on-policy) ``ρ`` is the magic box of ``log π`` (value 1, gradient
    ``∇ log π``).

    Args:
      logp_gkt, ref_logp_gkt, mask_gkt: as in :func:`kl_estimate`.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
      loss_agg_mode: how per-token values are averaged (:func:`aggregate_loss`); ignored at
        ``level="sequence"`` (mean over sequences).
      level: ``"token"`` or ``"sequence"``, as in :func:`kl_estimate`.
      constant: the constant of ``"seq-mean-token-sum-norm"``.
      importance_weighted: multiply by the importance ratio ``π/π_old`` (with its gradient).
      old_logp_gkt: ``(G, K, T)`` log-probabilities under the policy that sampled the batch,
        for ``importance_weighted`` (``None``: on-policy).

    Returns:
      The scalar loss term.

    References:
      Schulman (2020); Shao et al. (2024) (GRPO's k3 loss); Tang & Munos (2025), "On a few
      pitfalls in KL divergence gradient estimation for RL", arXiv:2506.09477; DeepSeek-AI
      (2025), "DeepSeek-V3.2", arXiv:2512.02556 (the importance-weighted k3).
    """
    fn = "kl_loss"
    k = _kl_estimate(logp_gkt, ref_logp_gkt, mask_gkt, estimator, level, fn)
    if not importance_weighted and old_logp_gkt is not None:
        raise ValueError(
            f"{fn}: old_logp_gkt is only used with importance_weighted=True; pass "
            "importance_weighted=True for DeepSeek-V3.2's ratio-weighted KL, or drop old_logp_gkt."
        )
    if importance_weighted:
        lp = _as_array("logp_gkt", logp_gkt, fn, 3)
        m = _mask(mask_gkt, lp, fn)
        if old_logp_gkt is None:
            log_w = lp - jax.lax.stop_gradient(lp)
        else:
            old = _as_array("old_logp_gkt", old_logp_gkt, fn, 3)
            _check_same_shape(fn, "logp_gkt", lp, old_logp_gkt=old)
            _check_logp("old_logp_gkt", old, fn)
            log_w = lp - jax.lax.stop_gradient(old)
        if level == "sequence":
            k = jnp.exp(jnp.sum(log_w * m, axis=-1)) * k
        else:
            k = jnp.exp(log_w * m) * k
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
    importance_sampling_level: str = "token",
    rollout_is_weights_gkt=None,
) -> jax.Array:
    r"""The policy-gradient loss of a batch of completions (REINFORCE, RLOO, GRPO, PPO, GSPO …).

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
      importance_sampling_level: ``"token"`` (PPO/GRPO: one ratio per token) or
        ``"sequence"`` (GSPO: the length-normalised sequence ratio
        ``s_i = exp(mean_t(log π − log π_old))``, the same for every token of the sequence and
        clipped per sequence; see :func:`gspo_loss`) — TRL's names.
      rollout_is_weights_gkt: ``(G, K, T)`` off-policy correction weights for a rollout engine
        whose log-probs differ from the trainer's (:func:`rollout_correction_weights`),
        multiplying each token's loss; constants.

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
    _check_level(importance_sampling_level, fn)
    if importance_sampling_level == "sequence":
        _check_logp("logp_gkt", lp, fn)  # as _ratios does at the token level
        ratio = _sequence_ratio(lp, old_logp_gkt, m, fn)
    else:
        ratio = _ratios(lp, old_logp_gkt, fn)
    per_token = _clipped(ratio, advantages, clip_eps, clip_eps_high, fn, "logp_gkt")
    per_token = _weighted(per_token, rollout_is_weights_gkt, fn)
    return _aggregate(per_token, m, loss_agg_mode, constant, fn)


# --------------------------------------------------------------------------------------------
# Helpers of the 2025–26 losses: levels, sequence ratios, per-token weights, advantages per token.

IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")
ROLLOUT_CORRECTION_MODES = ("truncate", "mask", "reject")


def _check_level(level, fn: str, name: str = "importance_sampling_level") -> None:
    if level not in IMPORTANCE_SAMPLING_LEVELS:
        raise ValueError(f"{fn}: {name} must be 'token' or 'sequence', got {level!r}.")


def _sequence_log_ratio(lp: jax.Array, old_logp_gkt, m: jax.Array, fn: str) -> jax.Array:
    """``(G, K)`` ``Σ_t m (log π − log π_old)`` (gradient through ``log π``; on-policy: 0 + ∇)."""
    if old_logp_gkt is None:
        old = jax.lax.stop_gradient(lp)
    else:
        old = _as_array("old_logp_gkt", old_logp_gkt, fn, 3)
        _check_same_shape(fn, "logp_gkt", lp, old_logp_gkt=old)
        _check_logp("old_logp_gkt", old, fn)
    return jnp.sum((lp - jax.lax.stop_gradient(old)) * m, axis=-1)


def _sequence_ratio(lp: jax.Array, old_logp_gkt, m: jax.Array, fn: str) -> jax.Array:
    """GSPO's ``s_i = exp(mean_t(log π − log π_old))`` broadcast to ``(G, K, T)``.

    Checks the mask and ``old_logp_gkt``; the caller checks ``lp`` (``_check_logp``)."""
    m_host = _host(m)
    if m_host is not None and np.any(m_host.sum(-1) == 0):
        g, k = np.argwhere(m_host.sum(-1) == 0)[0].tolist()
        raise ValueError(
            f"{fn}: mask_gkt leaves sequence (group {g}, completion {k}) with no tokens, so its "
            "length-normalised sequence ratio is undefined. Keep at least one token (e.g. EOS) "
            "per completion or drop the empty ones."
        )
    lengths = jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    s = jnp.exp(_sequence_log_ratio(lp, old_logp_gkt, m, fn) / lengths)
    return jnp.broadcast_to(s[:, :, None], lp.shape)


def _weighted(per_token: jax.Array, weights_gkt, fn: str) -> jax.Array:
    """Multiply per-token losses by constant correction weights (``None``: unchanged)."""
    if weights_gkt is None:
        return per_token
    w = _as_array("rollout_is_weights_gkt", weights_gkt, fn, 3)
    _check_same_shape(fn, "logp_gkt", per_token, rollout_is_weights_gkt=w)
    _check_finite("rollout_is_weights_gkt", w, fn)
    _check_nonnegative("rollout_is_weights_gkt", w, fn)
    return per_token * jax.lax.stop_gradient(w)


def _advantages_gkt(advantages, like: jax.Array, fn: str) -> jax.Array:
    """``(G, K)`` or ``(G, K, T)`` advantages as a ``(G, K, T)`` constant."""
    adv = _as_array("advantages", advantages, fn, (2, 3))
    _check_finite("advantages", adv, fn)
    if adv.ndim == 2:
        if adv.shape != like.shape[:2]:
            raise ValueError(
                f"{fn}: advantages has shape {adv.shape} but logp_gkt has (G, K) = "
                f"{like.shape[:2]}; pass one advantage per completion (G, K) or per token "
                "(G, K, T) of the same batch."
            )
        adv = jnp.broadcast_to(adv[:, :, None], like.shape)
    elif adv.shape != like.shape:
        raise ValueError(
            f"{fn}: advantages has shape {adv.shape}, logp_gkt {like.shape}; per-token "
            "advantages must match token for token."
        )
    return jax.lax.stop_gradient(adv)


def _pg_inputs(fn: str, logp_gkt, old_logp_gkt, advantages, mask_gkt):
    """Checked ``(log π, log π_old (constant), A (G, K, T), mask)`` of a policy loss."""
    lp = _as_array("logp_gkt", logp_gkt, fn, 3)
    _check_logp("logp_gkt", lp, fn)
    if old_logp_gkt is None:
        old = jax.lax.stop_gradient(lp)
    else:
        old = _as_array("old_logp_gkt", old_logp_gkt, fn, 3)
        _check_same_shape(fn, "logp_gkt", lp, old_logp_gkt=old)
        _check_logp("old_logp_gkt", old, fn)
        old = jax.lax.stop_gradient(old)
    adv = _advantages_gkt(advantages, lp, fn)
    m = _mask(mask_gkt, lp, fn)
    return lp, old, adv, m


def _check_epsilons(fn: str, **eps) -> None:
    for name, value in eps.items():
        if value is not None:
            arr = _host(value)
            if arr is not None and not (np.all(arr >= 0) and not np.any(np.isnan(arr))):
                raise ValueError(f"{fn}: {name} must be ≥ 0 (or None: no bound), got {value!r}.")


def _check_positive(fn: str, **values) -> None:
    for name, value in values.items():
        arr = _host(value)
        if arr is not None and not (np.all(np.isfinite(arr)) and np.all(arr > 0)):
            raise ValueError(f"{fn}: {name} must be finite and > 0, got {value!r}.")


# --------------------------------------------------------------------------------------------
# Policy losses of 2025–26: GSPO, CISPO, SAPO, GMPO, VESPO.


def gspo_loss(
    logp_gkt,
    old_logp_gkt,
    advantages,
    mask_gkt=None,
    epsilon_low: float | None = 3e-4,
    epsilon_high: float | None = 4e-4,
    loss_agg_mode: LossAggMode = "seq-mean-token-mean",
    rollout_is_weights_gkt=None,
) -> jax.Array:
    r"""GSPO: PPO's clipped objective on a length-normalised *sequence* importance ratio.

    .. math::

        s_i = \Big(\frac{\pi_\theta(y_i)}{\pi_{\text{old}}(y_i)}\Big)^{1/|y_i|}
            = \exp\Big(\frac{1}{|y_i|}\sum_t \log\frac{\pi_\theta(y_{it}|\cdot)}
              {\pi_{\text{old}}(y_{it}|\cdot)}\Big),\qquad
        L = -\frac{1}{N}\sum_i \min\big(s_i A_i,\ \operatorname{clip}(s_i, 1-\epsilon_{lo},
            1+\epsilon_{hi}) A_i\big).

    Every token of a sequence shares ``s_i`` and the clip acts per sequence. At
    ``π = π_old`` the gradient is ``−(1/N) Σ_i A_i (1/|y_i|) Σ_t ∇ log π(y_it|·)``: the
    per-sequence length normalisation of ``seq-mean-token-mean`` (biased for ``∇E[R]`` when
    lengths vary, like GRPO's original loss). The same as
    ``sequence_policy_loss(..., importance_sampling_level="sequence")`` with GSPO's defaults
    (the paper's clip range 3e-4 / 4e-4; TRL's ``importance_sampling_level="sequence"``). With
    ``loss_agg_mode="seq-mean-token-mean"`` (default) the loss is exactly the paper's mean over
    sequences; a token-sum mode weights each sequence by its length.

    Args:
      logp_gkt: ``(G, K, T)`` log-probabilities under the current policy.
      old_logp_gkt: ``(G, K, T)`` under the policy that sampled the batch (``None``: on-policy).
      advantages: ``(G, K)`` (or ``(G, K, T)``) advantages, e.g. :func:`grpo_advantages`.
      mask_gkt: ``(G, K, T)`` token mask.
      epsilon_low, epsilon_high: the clip range of ``s_i``; ``None`` for both: no clip.
      loss_agg_mode: :func:`aggregate_loss`.
      rollout_is_weights_gkt: per-token correction weights (:func:`rollout_correction_weights`).

    Returns:
      The scalar loss.

    References:
      Zheng et al. (2025), "Group sequence policy optimization", arXiv:2507.18071.
    """
    fn = "gspo_loss"
    _check_epsilons(fn, epsilon_low=epsilon_low, epsilon_high=epsilon_high)
    lp, _, _, m = _pg_inputs(fn, logp_gkt, old_logp_gkt, advantages, mask_gkt)
    ratio = _sequence_ratio(lp, old_logp_gkt, m, fn)
    if epsilon_low is None and epsilon_high is None:
        lo = None
    else:
        lo = np.inf if epsilon_low is None else epsilon_low
    hi = np.inf if epsilon_high is None else epsilon_high
    per_token = _clipped(ratio, advantages, lo, hi, fn, "logp_gkt")
    per_token = _weighted(per_token, rollout_is_weights_gkt, fn)
    return _aggregate(per_token, m, loss_agg_mode, None, fn)


def cispo_loss(
    logp_gkt,
    old_logp_gkt,
    advantages,
    mask_gkt=None,
    epsilon_low: float | None = None,
    epsilon_high: float | None = 0.28,
    loss_agg_mode: LossAggMode = "token-mean",
    rollout_is_weights_gkt=None,
) -> jax.Array:
    r"""CISPO: REINFORCE weighted by a clipped, stop-gradient importance ratio.

    .. math::

        \ell_{it} = -\operatorname{sg}\big(\operatorname{clip}(\rho_{it}, 1-\epsilon_{lo},
            1+\epsilon_{hi})\big)\, A_i\, \square(\log\pi_\theta(y_{it}|\cdot)),\qquad
        \rho_{it} = \frac{\pi_\theta(y_{it}|\cdot)}{\pi_{\text{old}}(y_{it}|\cdot)} .

    Unlike PPO's clip, which zeroes the gradient of a clipped token, every token keeps its
    gradient ``A ∇ log π`` with a weight bounded by ``1 + ε_hi``. The paper writes
    ``sg(clip(ρ)) A log π``; here ``log π`` enters through the core's magic box
    ``□(log π)`` (value 1), which has the same gradient and a loss value of ``−agg(clip(ρ)A)``.
    Defaults: no lower bound (the paper's choice), ``ε_hi = 0.28``, DAPO's token-mean.

    Args:
      logp_gkt, old_logp_gkt, advantages, mask_gkt: as in :func:`gspo_loss`.
      epsilon_low: ``ε_lo``; ``None``: no lower bound.
      epsilon_high: ``ε_hi``; ``None``: no upper bound (plain per-token importance weighting).
      loss_agg_mode: :func:`aggregate_loss` (the paper divides by the batch's token count).
      rollout_is_weights_gkt: per-token correction weights (:func:`rollout_correction_weights`).

    Returns:
      The scalar loss.

    References:
      MiniMax (2025), "MiniMax-M1: scaling test-time compute efficiently with lightning
      attention", arXiv:2506.13585, section 3.1.
    """
    fn = "cispo_loss"
    _check_epsilons(fn, epsilon_low=epsilon_low, epsilon_high=epsilon_high)
    lp, old, adv, m = _pg_inputs(fn, logp_gkt, old_logp_gkt, advantages, mask_gkt)
    ratio = jnp.exp(jax.lax.stop_gradient(lp) - old)
    lo = 0.0 if epsilon_low is None else 1.0 - epsilon_low
    hi = jnp.inf if epsilon_high is None else 1.0 + epsilon_high
    weight = jax.lax.stop_gradient(jnp.clip(ratio, lo, hi))
    per_token = -weight * adv * magic_box(lp)
    per_token = _weighted(per_token, rollout_is_weights_gkt, fn)
    return _aggregate(per_token, m, loss_agg_mode, None, fn)


def sapo_loss(
    logp_gkt,
    old_logp_gkt,
    advantages,
    mask_gkt=None,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    loss_agg_mode: LossAggMode = "seq-mean-token-mean",
    rollout_is_weights_gkt=None,
) -> jax.Array:
    r"""SAPO: a soft sigmoid gate on the token ratio instead of PPO's hard clip.

    .. math::

        \ell_{it} = -f_{\tau_{it}}(\rho_{it})\,A_{it},\qquad
        f_\tau(\rho) = \frac{4}{\tau}\,\sigma\big(\tau(\rho - 1)\big),\qquad
        \tau_{it} = \begin{cases}\tau_{pos} & A_{it} > 0\\ \tau_{neg} & A_{it} \le 0\end{cases}

    ``∇ f_τ(ρ) = 4σ(τ(ρ−1))(1 − σ(τ(ρ−1))) ∇ρ`` equals ``∇ρ = ∇ log π`` at ``ρ = 1`` (so the
    first step on a batch is REINFORCE) and decays smoothly as the ratio leaves 1, faster for
    the larger temperature; ``τ_neg > τ_pos`` damps negative-advantage tokens more.

    Args:
      logp_gkt, old_logp_gkt, advantages, mask_gkt: as in :func:`gspo_loss`.
      tau_pos, tau_neg: the gate's temperatures (> 0; defaults 1.0 and 1.05 as in the paper
        and TRL).
      loss_agg_mode: :func:`aggregate_loss` (the paper: ``seq-mean-token-mean``).
      rollout_is_weights_gkt: per-token correction weights (:func:`rollout_correction_weights`).

    Returns:
      The scalar loss.

    References:
      Gao et al. (2025), "Soft adaptive policy optimization", arXiv:2511.20347.
    """
    fn = "sapo_loss"
    _check_positive(fn, tau_pos=tau_pos, tau_neg=tau_neg)
    lp, old, adv, m = _pg_inputs(fn, logp_gkt, old_logp_gkt, advantages, mask_gkt)
    ratio = jnp.exp(lp - old)
    tau = jnp.where(adv > 0, tau_pos, tau_neg)
    gate = jax.nn.sigmoid(tau * (ratio - 1.0)) * 4.0 / tau
    per_token = _weighted(-gate * adv, rollout_is_weights_gkt, fn)
    return _aggregate(per_token, m, loss_agg_mode, None, fn)


def gmpo_loss(
    logp_gkt,
    old_logp_gkt,
    advantages,
    mask_gkt=None,
    epsilon_low: float | None = 0.4,
    epsilon_high: float | None = 0.4,
    rollout_is_weights_gkt=None,
) -> jax.Array:
    r"""GMPO: the geometric mean of the token ratios, clipped per token in log space.

    .. math::

        L = -\frac{1}{N}\sum_i A_i \exp\Big(\frac{1}{|y_i|}\sum_t \operatorname{sgn}(A_i)
            \min\big(\operatorname{sgn}(A_i)\log\rho_{it},\ \operatorname{sgn}(A_i)
            \operatorname{clip}(\log\rho_{it}, -\epsilon_{lo}, \epsilon_{hi})\big)\Big)

    (the paper's ``{Π_t |min(ρ A, clip(ρ) A)|}^{1/|y|} sgn(A)``). At ``π = π_old`` the gradient is
    ``−(1/N) Σ_i A_i (1/|y_i|) Σ_t ∇ log π``, GRPO's ``seq-mean-token-mean``; the geometric mean
    is less sensitive to one outlying token ratio than the arithmetic mean. Clip range in log
    space, default ``(e^{−0.4}, e^{0.4})`` as in the paper.

    Args:
      logp_gkt, old_logp_gkt, mask_gkt: as in :func:`gspo_loss`.
      advantages: ``(G, K)`` per-sequence advantages (``(G, K, T)`` is averaged over tokens).
      epsilon_low, epsilon_high: the clip range of ``log ρ``; ``None``: no bound.
      rollout_is_weights_gkt: per-token correction weights, combined per sequence by their
        geometric mean (as verl does for this loss).

    Returns:
      The scalar loss (mean over the ``G·K`` sequences).

    References:
      Zhao et al. (2025), "Geometric-mean policy optimization", arXiv:2507.20673.
    """
    fn = "gmpo_loss"
    _check_epsilons(fn, epsilon_low=epsilon_low, epsilon_high=epsilon_high)
    lp, old, adv, m = _pg_inputs(fn, logp_gkt, old_logp_gkt, advantages, mask_gkt)
    m_host = _host(m)
    if m_host is not None and np.any(m_host.sum(-1) == 0):
        g, k = np.argwhere(m_host.sum(-1) == 0)[0].tolist()
        raise ValueError(
            f"{fn}: mask_gkt leaves sequence (group {g}, completion {k}) with no tokens, so its "
            "geometric mean is undefined. Keep at least one token (e.g. EOS) per completion."
        )
    lengths = jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    a = jnp.sum(adv * m, axis=-1) / lengths
    sgn = jnp.sign(a)[:, :, None]
    log_r = lp - old
    lo = -jnp.inf if epsilon_low is None else -epsilon_low
    hi = jnp.inf if epsilon_high is None else epsilon_high
    log_r = sgn * jnp.minimum(sgn * log_r, sgn * jnp.clip(log_r, lo, hi))
    ratio = jnp.exp(jnp.sum(log_r * m, axis=-1) / lengths)
    per_seq = -a * ratio
    if rollout_is_weights_gkt is not None:
        w = _weighted(jnp.ones_like(lp), rollout_is_weights_gkt, fn)
        per_seq = per_seq * jnp.exp(jnp.sum(jnp.log(jnp.maximum(w, 1e-30)) * m, -1) / lengths)
    return jnp.mean(per_seq)


def vespo_loss(
    logp_gkt,
    old_logp_gkt,
    advantages,
    mask_gkt=None,
    k_pos: float = 2.0,
    lambda_pos: float = 3.0,
    k_neg: float = 3.0,
    lambda_neg: float = 2.0,
    loss_agg_mode: LossAggMode = "token-mean",
    rollout_is_weights_gkt=None,
) -> jax.Array:
    r"""VESPO: REINFORCE weighted by a smooth kernel of the *sequence* importance weight.

    .. math::

        W_i = \prod_t \frac{\pi_\theta(y_{it}|\cdot)}{\mu(y_{it}|\cdot)},\qquad
        \phi(W) = W^{k}\, e^{\lambda (1 - W)},\qquad
        \ell_{it} = -\operatorname{sg}\big(\phi(W_i)\big)\, A_i\,
            \square(\log\pi_\theta(y_{it}|\cdot)),

    with ``(k, λ) = (k_pos, λ_pos)`` for ``A_i ≥ 0`` and ``(k_neg, λ_neg)`` otherwise. The
    weight is the full sequence ratio (a product, no length normalisation) reshaped by a
    gamma-shaped kernel with ``φ(1) = 1`` that shrinks both very small and very large weights:
    the gradient is ``φ(W) A ∇ log π``, where plain sequence-level importance sampling would use
    ``W``. ``μ`` is the behaviour policy: ``old_logp_gkt`` are its log-probs, or the trainer's
    with ``rollout_is_weights_gkt`` the per-token ratios trainer/rollout (their product enters
    ``W``, as in the authors' code). ``log W`` is clipped to ±20 for overflow. Defaults are the
    authors' released configuration (k 2/3, λ 3/2 for positive/negative advantages).

    Args:
      logp_gkt, old_logp_gkt, advantages, mask_gkt: as in :func:`gspo_loss`.
      k_pos, lambda_pos, k_neg, lambda_neg: the kernel's shape for positive and negative
        advantages (≥ 0).
      loss_agg_mode: :func:`aggregate_loss`.
      rollout_is_weights_gkt: per-token ratios whose product multiplies ``W`` (> 0).

    Returns:
      The scalar loss.

    References:
      Shen et al. (2026), "VESPO: variational sequence-level soft policy optimization for
      off-policy LLM training", arXiv:2602.10693; the kernel as in the authors' code
      (github.com/FloyedShen/VESPO, ``recipe/vespo/code/core_algos.py``).
    """
    fn = "vespo_loss"
    for name, value in dict(
        k_pos=k_pos, lambda_pos=lambda_pos, k_neg=k_neg, lambda_neg=lambda_neg
    ).items():
        _check_nonnegative(name, value, fn)
    lp, old, adv, m = _pg_inputs(fn, logp_gkt, old_logp_gkt, advantages, mask_gkt)
    log_w = jnp.sum((jax.lax.stop_gradient(lp) - old) * m, axis=-1)
    if rollout_is_weights_gkt is not None:
        w = _weighted(jnp.ones_like(lp), rollout_is_weights_gkt, fn)
        log_w = log_w + jnp.sum(jnp.log(jnp.maximum(w, 1e-30)) * m, axis=-1)
    log_w = jnp.clip(log_w, -20.0, 20.0)
    a_seq = jnp.sum(adv * m, axis=-1) / jnp.maximum(jnp.sum(m, axis=-1), 1.0)
    pos = a_seq >= 0
    k = jnp.where(pos, k_pos, k_neg)
    lam = jnp.where(pos, lambda_pos, lambda_neg)
    phi = jax.lax.stop_gradient(jnp.exp(lam + k * log_w - lam * jnp.exp(log_w)))
    per_token = -phi[:, :, None] * adv * magic_box(lp)
    return _aggregate(per_token, m, loss_agg_mode, None, fn)


# --------------------------------------------------------------------------------------------
# Off-policy corrections for a rollout engine whose log-probs differ from the trainer's.


@_numpy_boundary
def rollout_correction_weights(
    old_logp_gkt,
    rollout_logp_gkt,
    mask_gkt=None,
    importance_sampling_level: str = "token",
    mode: str = "truncate",
    threshold: float = 2.0,
    threshold_low: float | None = None,
) -> jax.Array:
    r"""Truncated or masked importance weights (TIS / MIS) for a rollout/trainer mismatch.

    The batch was sampled by a rollout engine ``μ`` (vLLM, SGLang: other kernels, maybe older
    weights) whose log-probs differ from the trainer's ``π_old`` at the same parameters. With
    ``ρ_t = π_old(y_t|·)/μ(y_t|·)`` (``"token"``) or ``ρ = Π_t ρ_t`` (``"sequence"``, broadcast
    to every token), and ``C = threshold``:

    - ``"truncate"`` (TIS): ``w = min(ρ, C)``;
    - ``"mask"`` (MIS): ``w = ρ · 1[C_low ≤ ρ ≤ C]`` — the weight, or 0 outside the bounds;
    - ``"reject"``: ``w = 1[C_low ≤ ρ ≤ C]`` — drop the outliers, no reweighting (verl's
      rejection sampling without IS).

    Multiply each token's policy loss by ``w`` (``rollout_is_weights_gkt`` of the losses).
    Only untruncated sequence-level weights (``C = inf``) make the gradient unbiased for the
    trainer's policy; truncation, masking and per-token ratios trade that bias for variance —
    measured exactly in ``docs/sequence-policy-gradients.md`` ("off-policy"). Names follow TRL
    (``vllm_importance_sampling_mode``: token/sequence × truncate/mask; cap 2 or 3) and verl
    (``rollout_is``, ``rollout_is_threshold`` = 2).

    Args:
      old_logp_gkt: ``(G, K, T)`` the trainer's log-probs of the sampled tokens (at the weights
        that generated them).
      rollout_logp_gkt: ``(G, K, T)`` the rollout engine's log-probs of the same tokens.
      mask_gkt: ``(G, K, T)`` token mask.
      importance_sampling_level: ``"token"`` or ``"sequence"``.
      mode: ``"truncate"``, ``"mask"`` or ``"reject"``.
      threshold: ``C > 0`` (``inf``: no upper bound).
      threshold_low: ``C_low`` for ``"mask"``/``"reject"`` (``None``: no lower bound).

    Returns:
      ``(G, K, T)`` weights (constants; 0 on padding).

    References:
      Yao et al. (2025), "Your efficient RL framework secretly brings you off-policy RL
      training" (TIS); Liu et al. (2025), "When speed kills stability: demystifying RL collapse
      from the training-inference mismatch" (MIS, sequence level); Ionides (2008), "Truncated
      importance sampling".
    """
    fn = "rollout_correction_weights"
    _check_level(importance_sampling_level, fn)
    if mode not in ROLLOUT_CORRECTION_MODES:
        raise ValueError(
            f"{fn}: mode must be one of {', '.join(ROLLOUT_CORRECTION_MODES)} (TIS, MIS, "
            f"rejection), got {mode!r}."
        )
    c = _host(threshold)
    if c is not None and not (c.ndim == 0 and c > 0):
        raise ValueError(
            f"{fn}: threshold must be a scalar > 0 (inf: no bound), got {threshold!r}."
        )
    if threshold_low is not None:
        cl = _host(threshold_low)
        if cl is not None and not (cl.ndim == 0 and np.isfinite(cl) and cl >= 0):
            raise ValueError(
                f"{fn}: threshold_low must be a finite scalar ≥ 0, got {threshold_low!r}."
            )
        if mode == "truncate":
            raise ValueError(
                f"{fn}: threshold_low is for mode='mask' or 'reject'; truncation (TIS) caps the "
                "weight from above only."
            )
    old = _as_array("old_logp_gkt", old_logp_gkt, fn, 3)
    mu = _as_array("rollout_logp_gkt", rollout_logp_gkt, fn, 3)
    _check_same_shape(fn, "old_logp_gkt", old, rollout_logp_gkt=mu)
    _check_logp("old_logp_gkt", old, fn)
    _check_logp("rollout_logp_gkt", mu, fn)
    m = _mask(mask_gkt, old, fn, "old_logp_gkt")
    log_rho = (old - mu) * m
    if importance_sampling_level == "sequence":
        log_rho = jnp.broadcast_to(jnp.sum(log_rho, axis=-1, keepdims=True), old.shape)
    rho = jnp.exp(log_rho)
    if mode == "truncate":
        w = jnp.minimum(rho, threshold)
    else:
        keep = rho <= threshold
        if threshold_low is not None:
            keep = keep & (rho >= threshold_low)
        w = jnp.where(keep, rho if mode == "mask" else 1.0, 0.0)
    return jax.lax.stop_gradient(w * m)


# --------------------------------------------------------------------------------------------
# DAPO's pieces: dynamic sampling's group filter and the overlong reward shaping.


@_numpy_boundary
def dynamic_sampling_mask(rewards_gk, atol: float = 0.0) -> jax.Array:
    r"""DAPO's dynamic-sampling filter: 1 for groups whose rewards are not all equal.

    .. math::

        m_g = 1\big[\max_k R_{gk} - \min_k R_{gk} > \text{atol}\big].

    A group of equal rewards has zero group-relative advantages and contributes no gradient;
    DAPO drops such groups and samples more prompts until the batch is full. Keeping only the
    informative groups conditions the batch on them: with a group baseline whose advantages
    vanish on equal rewards (RLOO, GRPO, Dr. GRPO) the expected gradient is the unconditional one
    divided by ``P(informative group)`` — with token sums ``∇E[R] / P`` for RLOO,
    ``(K−1)/K · ∇E[R] / P`` for Dr. GRPO: the same direction at a step size that changes with
    ``θ`` (exact by enumeration in ``tests/test_rl_sequence_exact.py``; "DAPO's dynamic
    sampling" in ``docs/sequence-policy-gradients.md``).

    Args:
      rewards_gk: ``(G, K)`` rewards.
      atol: rewards within ``atol`` of each other count as equal.

    Returns:
      ``(G,)`` float mask (1 keep, 0 drop).

    References:
      Yu et al. (2025), "DAPO: an open-source LLM reinforcement learning system at scale",
      arXiv:2503.14476, section 3.2.
    """
    fn = "dynamic_sampling_mask"
    r = _as_array("rewards_gk", rewards_gk, fn, 2)
    _check_finite("rewards_gk", r, fn)
    _check_nonnegative("atol", atol, fn)
    spread = jnp.max(r, axis=1) - jnp.min(r, axis=1)
    return (spread > atol).astype(r.dtype)


@_numpy_boundary
def overlong_penalty(lengths_gk, max_length: int, cache_length: int) -> jax.Array:
    r"""DAPO's soft overlong punishment, a reward term added to the task reward.

    .. math::

        R_{\text{length}}(y) = \begin{cases} 0, & |y| \le L_{max} - L_{cache} \\
        \dfrac{(L_{max} - L_{cache}) - |y|}{L_{cache}}, & L_{max} - L_{cache} < |y| \le L_{max}\\
        -1, & |y| > L_{max} \end{cases}

    A reward of the completion alone (a function of its length), so adding it to the rewards
    keeps every unbiased estimator unbiased — for the changed objective ``E[R + R_length]``.

    Args:
      lengths_gk: ``(G, K)`` completion lengths in tokens (e.g. ``mask_gkt.sum(-1)``).
      max_length: ``L_max`` (> cache_length).
      cache_length: ``L_cache`` (> 0), the soft band below ``L_max``.

    Returns:
      ``(G, K)`` penalties in ``[−1, 0]``.

    References:
      Yu et al. (2025), DAPO, arXiv:2503.14476, section 3.4 (equation 13).
    """
    fn = "overlong_penalty"
    n = _as_array("lengths_gk", lengths_gk, fn, 2)
    _check_finite("lengths_gk", n, fn)
    _check_nonnegative("lengths_gk", n, fn)
    if not (
        isinstance(max_length, int | np.integer)
        and isinstance(cache_length, int | np.integer)
        and 0 < cache_length < max_length
    ):
        raise ValueError(
            f"{fn}: need integers 0 < cache_length < max_length, got max_length={max_length!r}, "
            f"cache_length={cache_length!r} (DAPO: max_length=20480, cache_length=4096)."
        )
    soft = max_length - cache_length
    band = (soft - n) / cache_length
    return jnp.where(n <= soft, 0.0, jnp.where(n <= max_length, band, -1.0)).astype(n.dtype)


# --------------------------------------------------------------------------------------------
# Baselines: OPO's length-weighted optimal baseline, James–Stein shrinkage, GDPO.


@_numpy_boundary
def opo_advantages(rewards_gk, lengths_gk, leave_one_out: bool = False) -> jax.Array:
    r"""OPO's length-weighted baseline: the optimal constant baseline under a length model.

    .. math::

        A_{gk} = R_{gk} - \frac{\sum_j |y_{gj}|\, R_{gj}}{\sum_j |y_{gj}|} .

    The variance-minimising baseline is ``E[‖∇log π‖² R]/E[‖∇log π‖²]``; OPO approximates
    ``‖∇ log π(y)‖²`` by the length ``|y|``. As in the paper and verl (``adv_estimator=opo``)
    the sums run over the whole group, the sample included: biased for ``∇E[R]`` (like Dr.
    GRPO, but by a factor that depends on the lengths). ``leave_one_out=True`` sums over
    ``j ≠ k``, which makes the baseline independent of the sample and the estimate unbiased.

    Args:
      rewards_gk: ``(G, K)`` rewards, ``K ≥ 2``.
      lengths_gk: ``(G, K)`` completion lengths (> 0).
      leave_one_out: exclude the completion from its own baseline.

    Returns:
      ``(G, K)`` advantages.

    References:
      Hao et al. (2025), "On-policy RL with optimal reward baseline", arXiv:2505.23585.
    """
    fn = "opo_advantages"
    r = _as_array("rewards_gk", rewards_gk, fn, 2)
    _check_group_size(fn, r, 2, "a group baseline")
    _check_finite("rewards_gk", r, fn)
    if lengths_gk is None:
        raise TypeError(f"{fn}: lengths_gk is required (the (G, K) completion lengths).")
    n = _as_array("lengths_gk", lengths_gk, fn, 2)
    _check_same_shape(fn, "rewards_gk", r, lengths_gk=n)
    n_host = _host(n)
    if n_host is not None and not (np.all(np.isfinite(n_host)) and np.all(n_host > 0)):
        bad = tuple(np.argwhere(~(np.isfinite(n_host) & (n_host > 0)))[0].tolist())
        raise ValueError(
            f"{fn}: lengths_gk must be finite and > 0 (EOS counts as a token), got "
            f"{n_host[bad]!r} at index {bad}. Pass mask_gkt.sum(-1)."
        )
    ref = r[:, :1]
    d = r - ref
    num = jnp.sum(n * d, axis=1, keepdims=True)
    den = jnp.sum(n, axis=1, keepdims=True)
    if leave_one_out:
        baseline = ref + (num - n * d) / (den - n)
    else:
        baseline = ref + num / den
    return jax.lax.stop_gradient(r - baseline)


@_numpy_boundary
def james_stein_advantages(rewards_gk, eps: float = 1e-6) -> jax.Array:
    r"""James–Stein shrinkage of the leave-one-out group baseline towards the other prompts' mean.

    .. math::

        b_{gk} = (1 - \lambda_g)\,\frac{1}{K-1}\sum_{j\ne k} R_{gj} + \lambda_g\, \bar R_{-g},
        \qquad \lambda_g = \frac{v_{-g}}{v_{-g} + s_{-g} + \varepsilon},

    with, over the *other* groups ``h ≠ g``: ``R̄_{−g}`` their mean reward,
    ``v_{−g}`` the mean of ``Var_h(R)/K`` (the noise of a group mean, sample variance) and
    ``s_{−g}`` the variance of their group means. When the prompts' means differ little
    compared with the noise of a K-sample mean, the baseline borrows from the other prompts.
    Every quantity in ``b_{gk}`` comes from other completions (the group's others, or other
    groups), so the estimate stays **unbiased** for ``∇E[R]``.

    Args:
      rewards_gk: ``(G, K)`` rewards, ``G ≥ 2`` prompts, ``K ≥ 2``.
      eps: added to the denominator of ``λ`` (≥ 0; the authors' 1e-6).

    Returns:
      ``(G, K)`` advantages.

    References:
      Zeng, Zhou, Arora & Zanette (2025), "Shrinking the variance: shrinkage baselines for
      reinforcement learning with verifiable rewards", arXiv:2511.03710 (code:
      github.com/guanning03/JSPO-Official).
    """
    fn = "james_stein_advantages"
    r = _as_array("rewards_gk", rewards_gk, fn, 2)
    _check_group_size(fn, r, 2, "a leave-one-out baseline")
    _check_finite("rewards_gk", r, fn)
    _check_eps(eps, fn)
    g, k = r.shape
    if g < 2:
        raise ValueError(
            f"{fn}: rewards_gk has G={g} group(s) (axis 0); shrinking across prompts needs G ≥ 2 "
            "(the statistics of the other prompts). Use rloo_advantages for one prompt."
        )
    ref = r[:1, :1]
    d = r - ref
    means = jnp.mean(d, axis=1)  # (G,) shifted group means
    noise = jnp.sum(jnp.square(d - means[:, None]), axis=1) / (k - 1) / k  # Var_h / K
    others = 1.0 - jnp.eye(g, dtype=r.dtype)
    mean_o = others @ means / (g - 1)
    noise_o = others @ noise / (g - 1)
    spread_o = jnp.sum(others * jnp.square(means[None, :] - mean_o[:, None]), axis=1) / (g - 1)
    lam = noise_o / (noise_o + spread_o + eps)
    loo = (jnp.sum(d, axis=1, keepdims=True) - d) / (k - 1)
    baseline = ref + (1.0 - lam[:, None]) * loo + lam[:, None] * mean_o[:, None]
    return jax.lax.stop_gradient(r - baseline)


@_numpy_boundary
def gdpo_advantages(rewards_gkr, reward_weights=None, eps: float = 1e-4, ddof: int = 1):
    r"""GDPO: each reward normalised within its group, summed, then normalised over the batch.

    .. math::

        A_{gk} = \operatorname{bn}\Big(\sum_r w_r\,
            \frac{R^{(r)}_{gk} - \bar R^{(r)}_g}{\operatorname{std}_g(R^{(r)}) + \varepsilon}\Big),
        \qquad \operatorname{bn}(x) = \frac{x - \operatorname{mean}(x)}{\operatorname{std}(x)
            + \varepsilon}

    (``bn`` over all ``G·K`` completions). GRPO on the summed reward lets a reward with a large
    spread drown the others and maps different reward combinations to the same advantage;
    normalising each reward first keeps their relative differences. Biased for ``∇E[Σ_r w_r
    R^{(r)}]`` like GRPO (group and batch statistics of the sample itself).

    Args:
      rewards_gkr: ``(G, K, R)`` one column per reward function.
      reward_weights: ``(R,)`` weights ``w_r`` (default 1 each).
      eps: added to every std (finite, ≥ 0).
      ddof: the group std's ddof (1: sample std, as :func:`grpo_advantages`).

    Returns:
      ``(G, K)`` advantages.

    References:
      Liu et al. (2026), "GDPO: group reward-decoupled normalization policy optimization for
      multi-reward RL optimization", arXiv:2601.05242.
    """
    fn = "gdpo_advantages"
    r = _as_array("rewards_gkr", rewards_gkr, fn, 3)
    _check_finite("rewards_gkr", r, fn)
    _check_eps(eps, fn)
    if ddof not in (0, 1):
        raise ValueError(f"{fn}: ddof must be 0 or 1, got {ddof}.")
    g, k, n_r = r.shape
    if k < 2:
        raise ValueError(
            f"{fn}: rewards_gkr has K={k} completion(s) per group (axis 1); a group mean and std "
            "needs K ≥ 2."
        )
    if reward_weights is None:
        w = jnp.ones((n_r,), r.dtype)
    else:
        w = _as_array("reward_weights", reward_weights, fn, 1)
        if w.shape != (n_r,):
            raise ValueError(
                f"{fn}: reward_weights has shape {w.shape}; expected one weight per reward "
                f"({n_r},) (the last axis of rewards_gkr)."
            )
        _check_finite("reward_weights", w, fn)
    d = r - (r[:, :1] + jnp.mean(r - r[:, :1], axis=1, keepdims=True))
    std = jnp.sqrt(jnp.sum(d**2, axis=1, keepdims=True) / (k - ddof))
    combined = jnp.sum(_safe_divide(d, std + eps) * w, axis=-1)
    mean = jnp.mean(combined)
    sd = jnp.sqrt(jnp.mean(jnp.square(combined - mean)))
    return jax.lax.stop_gradient(_safe_divide(combined - mean, sd + eps))
