r"""Multi-sample estimators: VIMCO, and sampling without replacement for Categoricals.

- :class:`VIMCO` estimates the gradient of the importance-weighted bound
  ``E[log (1/K) Σ_k exp f(x_k)]`` (f is a log-weight) with a leave-one-out baseline per sample.
- :class:`UnorderedSet` draws ``k`` distinct categories with the Gumbel-top-k trick and
  Rao-Blackwellises the score function over their order (Kool, van Hoof & Welling, 2020).
- :class:`SumAndSample` is the Rao-Blackwellised score function of Liu et al. (2019): sum f
  exactly over the ``k − 1`` most probable categories, sample one from the rest.

All are score-function estimators written with DiCE's magic box; every weight that couples
the samples is a constant (``stop_gradient``), so term i carries sample i's gradient.

Over a mesh (``expectation(..., mesh=...)``) the samples of the one estimate are split:
every device draws all of them from the key (as on one device), evaluates f on its own block
(:meth:`SampleSplit.local`), and computes the coupling statistics — VIMCO's log-sum-exp and
leave-one-out means, the unordered set's baseline — from the gathered stop-gradient values
of f (:meth:`SampleSplit.gather`); without a mesh the split is the identity.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from expectax import sharding
from expectax.estimators.base import (
    Context,
    Estimator,
    check_fixed_support,
    magic_box,
    pytree_dataclass,
)
from expectax.estimators.relaxed import _is_categorical, categorical_logits, log_prob

__all__ = ["VIMCO", "SumAndSample", "UnorderedSet"]

_MAX_SET = 7  # k! orderings are enumerated to get the probability of an unordered set


@pytree_dataclass
class VIMCO(Estimator):
    r"""VIMCO: the multi-sample bound's gradient with a leave-one-out baseline per sample.

    With ``f_θ(x) = log w_θ(x)`` a log importance weight (e.g. ``log p_θ(y, x) − log q_θ(x)``),
    ``K = num_samples`` samples ``x_k ~ q_θ`` and ``L̂ = log (1/K) Σ_k exp f_θ(x_k)``,

    .. math::

        \nabla_\theta\, \mathbb{E}[\hat L] \approx \sum_k \big(\hat L - \hat L_{-k}\big)
          \nabla_\theta \log q_\theta(x_k) + \sum_k \tilde w_k \nabla_\theta f_\theta(x_k),
        \qquad \tilde w_k = \frac{e^{f_k}}{\sum_j e^{f_j}},

    where ``L̂_{−k}`` replaces ``f_k`` in ``L̂`` by the mean of the other ``f_j`` (their
    geometric mean weight). The baseline of sample k depends only on the other samples, so
    the estimate is unbiased for ``∇θ E[L̂]``.

    **The value is not a mean of f**: ``expectation(f, q, estimator=VIMCO(), num_samples=K)``
    returns ``L̂`` (the importance-weighted bound for a log-weight f: the ELBO at ``K = 1``,
    the IWAE bound for ``K > 1``). Works for any distribution with ``log_prob`` (Bernoulli,
    Categorical, …); ``K ≥ 2``.

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> log_w = lambda p, x: -jnp.sum((x - 0.3) ** 2)          # a toy log-weight
      >>> bound = ex.expectation(log_w, lambda p: dist.Bernoulli(logits=p).to_event(1),
      ...                        estimator=VIMCO(), num_samples=8)
      >>> g = jax.grad(bound)(jnp.zeros(4), jax.random.key(0))

    References:
      Mnih & Rezende (2016), "Variational inference for Monte Carlo objectives", ICML.
      Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders", ICLR.
    """

    joint_samples = True
    splits_samples = True

    def min_samples(self) -> int:
        return 2

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        k = num_samples
        check_fixed_support(ctx.dist, "VIMCO")
        split = sharding.claim_split()
        xs = split.local(jax.lax.stop_gradient(ctx.dist.sample(key, (k,))))
        fx = ctx.f(xs)  # this device's block of the samples
        f_sg = split.gather(jax.lax.stop_gradient(fx))  # all k log-weights
        log_k = math.log(k)
        bound = jax.scipy.special.logsumexp(f_sg) - log_k
        others_mean = (jnp.sum(f_sg) - f_sg) / (k - 1)
        # L̂_{−k}: f_k replaced by the mean of the others (rows of this device's samples).
        swapped = jnp.where(jnp.eye(k, dtype=bool), others_mean[:, None], f_sg[None, :])
        bound_minus = jax.scipy.special.logsumexp(split.local(swapped), axis=1) - log_k
        weights = split.local(jax.nn.softmax(f_sg))
        score = (magic_box(log_prob(ctx, xs)) - 1.0) * (bound - bound_minus)
        pathwise = weights * (fx - jax.lax.stop_gradient(fx))
        return split.spread(bound + k * (score + pathwise), k)


def _single_categorical(ctx: Context, n: int, name: str) -> jax.Array:
    alternatives = "ex.DisARM() or ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut())"
    if not _is_categorical(ctx.dist):
        raise ValueError(
            f"{name} serves a single Categorical distribution, but dist_fn returned "
            f"{type(ctx.dist).__name__}. Use {alternatives} instead."
        )
    log_p = categorical_logits(ctx, n, name, alternatives)
    if log_p.ndim != 2:
        raise ValueError(
            f"{name} samples without replacement from one Categorical (batch_shape ()), but "
            f"dist_fn returned batch_shape {tuple(ctx.dist.batch_shape)}. Use {alternatives} "
            "for a batch of independent Categoricals."
        )
    num_classes = log_p.shape[-1]
    if n > num_classes:
        raise ValueError(
            f"{name}: num_samples={n} draws without replacement from {num_classes} categories; "
            f"use num_samples ≤ {num_classes}."
        )
    return log_p


def _log_set_prob(log_p: jax.Array, log_mass: jax.Array) -> jax.Array:
    """log P(unordered set) of items with log-probabilities ``log_p`` (trailing axis m), drawn
    without replacement from a domain of total mass ``exp(log_mass)``: a sum over the m!
    orders of ``Π_i p_(i) / (mass − Σ_{j<i} p_(j))``."""
    m = log_p.shape[-1]
    if m == 0:
        return jnp.zeros(log_p.shape[:-1], log_p.dtype)
    perms = np.array(list(itertools.permutations(range(m))))
    lp = log_p[..., perms]  # (..., m!, m)
    before = jnp.cumsum(jnp.exp(lp), axis=-1) - jnp.exp(lp)
    mass = jnp.exp(log_mass)[..., None, None]
    tiny = jnp.finfo(log_p.dtype).tiny
    log_denom = jnp.log(jnp.maximum(mass - before, tiny))
    return jax.scipy.special.logsumexp(jnp.sum(lp - log_denom, axis=-1), axis=-1)


@pytree_dataclass
class UnorderedSet(Estimator):
    r"""The unordered set estimator: k draws without replacement (Gumbel-top-k), with baseline.

    Draw ``S = {s_1, …, s_k}`` without replacement from ``p_θ`` (the top k of ``ℓ + G``).
    Then ``p(s) R(S, s)`` with ``R(S, s) = p^{D∖s}(S∖s) / p(S)`` is the probability that
    ``s`` was drawn first given the set, and

    .. math::

        \hat g = \sum_{s \in S} p(s) R(S, s) \Big[\nabla_\theta \log p_\theta(s)
          \big(f(s) - B(S, s)\big) + \nabla_\theta f_\theta(s)\Big],
        \quad B(S, s) = p(s) f(s) + \sum_{s' \in S \setminus s} p(s')
          \frac{p^{D \setminus \{s, s'\}}(S \setminus \{s, s'\})}
               {p^{D \setminus s}(S \setminus s)} f(s'),

    an unbiased estimate of ``∇θ E[f]``: the score function of the first draw Rao-Blackwellised
    over the order of ``S``, with the baseline ``B`` (an unbiased estimate of ``E[f]`` given
    that ``s`` came first, whose conditional mean does not depend on ``s``). The value is
    ``Σ_s p(s) R(S, s) f(s)``, unbiased for ``E[f]``. Set probabilities sum over the ``k!``
    orders, so ``k = num_samples ≤ 7``; it needs ``2 ≤ k ≤ K`` and one Categorical (batch
    shape ``()``); f receives the integer category. ``k`` evaluations of f.

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> E = ex.expectation(lambda p, x: jnp.sin(x), lambda p: dist.Categorical(logits=p),
      ...                    estimator=UnorderedSet(), num_samples=3)
      >>> g = jax.grad(E)(jnp.zeros(6), jax.random.key(0))

    References:
      Kool, van Hoof & Welling (2020), "Estimating gradients for discrete random variables by
      sampling without replacement", ICLR. Kool, van Hoof & Welling (2019), "Stochastic beams
      and where to find them: the Gumbel-top-k trick", ICML.
    """

    joint_samples = True
    splits_samples = True

    def min_samples(self) -> int:
        return 2

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        k = num_samples
        if k > _MAX_SET:
            raise ValueError(
                f"UnorderedSet enumerates the k! orders of the set; num_samples={k} is too "
                f"large (at most {_MAX_SET}). Use SumAndSample for larger k."
            )
        log_p_all = _single_categorical(ctx, k, "UnorderedSet")  # (k, K), row i: θ copy i
        split = sharding.claim_split()
        base = jax.lax.stop_gradient(log_p_all[0])
        gumbel = jax.random.gumbel(key, base.shape, base.dtype)
        _, s = jax.lax.top_k(base + gumbel, k)  # the set, in sampled order
        fx = ctx.f(split.local(s))  # this device's block of the set
        f_sg = split.gather(jax.lax.stop_gradient(fx))  # f on the whole set
        lp = base[s]  # (k,)
        p = jnp.exp(lp)
        idx = np.arange(k)
        without_i = np.array([[j for j in idx if j != i] for i in idx], dtype=np.int32).reshape(
            k, k - 1
        )
        log_set = _log_set_prob(lp, jnp.zeros(()))
        log_mass_i = jnp.log1p(-p)
        log_set_i = _log_set_prob(lp[without_i], log_mass_i)  # p^{D∖s_i}(S∖s_i)
        weights = jnp.exp(lp + log_set_i - log_set)  # p(s_i) R(S, s_i); sums to 1
        # Pairs (i, j), j ≠ i: p^{D∖{s_i, s_j}}(S∖{s_i, s_j}).
        pairs = [(i, j) for i in idx for j in idx if i != j]
        rest = np.array(
            [[m for m in idx if m not in (i, j)] for i, j in pairs], dtype=np.int32
        ).reshape(len(pairs), k - 2)
        pi, pj = np.array([i for i, _ in pairs]), np.array([j for _, j in pairs])
        log_set_ij = _log_set_prob(lp[rest], jnp.log1p(-(p[pi] + p[pj])))
        ratio = jnp.exp(log_set_ij - log_set_i[pi])  # R^{D∖s_i}(S, s_j)
        cross = jnp.zeros((k,), fx.dtype).at[pi].add(p[pj] * ratio * f_sg[pj])
        baseline = p * f_sg + cross
        log_q = jnp.take_along_axis(log_p_all, s[:, None], axis=1)[:, 0]
        coef = split.local(jax.lax.stop_gradient(weights * (f_sg - baseline)))
        w_sg = split.local(jax.lax.stop_gradient(weights))
        terms = w_sg * fx + coef * (magic_box(split.local(log_q)) - 1.0)
        return split.spread(k * terms, k)


@pytree_dataclass
class SumAndSample(Estimator):
    r"""The Rao-Blackwellised score function: an exact sum over likely categories plus a sample.

    With ``C`` the ``k − 1`` most probable categories (``k = num_samples``) and one
    ``x ~ q = p_θ(· | x ∉ C)`` (Gumbel-max on the remaining logits),

    .. math::

        \mathbb{E}_{p_\theta}[f_\theta] = \sum_{c \in C} p_\theta(c) f_\theta(c)
          + \big(1 - p_\theta(C)\big)\, \mathbb{E}_{q_\theta}[f_\theta(x)],

    differentiated exactly in the first part and by the score function (magic box on
    ``log q_θ(x)``) in the second: unbiased, with the variance of REINFORCE shrunk by
    ``(1 − p(C))²``, and exact when ``k = K``. ``k`` evaluations of f; one Categorical (batch
    shape ``()``); f receives the integer category.

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> E = ex.expectation(lambda p, x: jnp.sin(x), lambda p: dist.Categorical(logits=p),
      ...                    estimator=SumAndSample(), num_samples=3)
      >>> g = jax.grad(E)(jnp.zeros(6), jax.random.key(0))

    References:
      Liu, Regier, Tripuraneni, Jordan & McAuliffe (2019), "Rao-Blackwellized stochastic
      gradients for discrete distributions", ICML.
    """

    joint_samples = True
    splits_samples = True

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        k = num_samples
        log_p_all = _single_categorical(ctx, k, "SumAndSample")  # (k, K)
        split = sharding.claim_split()
        base = jax.lax.stop_gradient(log_p_all[0])
        num_classes = base.shape[-1]
        _, summed = jax.lax.top_k(base, k - 1)  # C, (k − 1,)
        in_c = jnp.zeros((num_classes,), bool).at[summed].set(True)
        gumbel = jax.random.gumbel(key, base.shape, base.dtype)
        x = jnp.argmax(jnp.where(in_c, -jnp.inf, base + gumbel))
        xs = jnp.concatenate([summed, x[None]])
        fx = ctx.f(split.local(xs))  # this device's block (no statistic couples f values)
        rows = jnp.arange(k)
        log_p = log_p_all[rows, xs]  # row i differentiates θ copy i
        last = log_p_all[k - 1]
        # 1 − p(C) as the sum of the other categories' probabilities, in log space: the
        # difference 1 − Σ_C p rounds to 0 (log q = inf, a NaN gradient) when C holds all but
        # a float epsilon of the mass, as on a nearly deterministic Categorical
        log_rest = jax.scipy.special.logsumexp(jnp.where(in_c, -jnp.inf, last))
        rest_mass = jnp.exp(log_rest)
        log_q = log_p[k - 1] - log_rest
        # term i's factor on f(x_i): p(c_i) for the summed categories, the sampled one's
        # (1 − p(C)) · magic(log q)
        factor = jnp.concatenate([jnp.exp(log_p[: k - 1]), (rest_mass * magic_box(log_q))[None]])
        return split.spread(k * (split.local(factor) * fx), k)
