"""The measure-valued derivative (weak derivative) estimator."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as nd

from expectax.estimators.base import Context, Estimator, magic_box, pytree_dataclass, static_field
from expectax.estimators.first_order import first_order_only

__all__ = ["MeasureValued"]

_SUPPORTED = (
    "Normal (loc, scale), Bernoulli (probs or logits), Categorical (probs or logits), "
    "Poisson (rate), Exponential (rate), Gamma (rate by its weak derivative, concentration by "
    "the score function) and Weibull (scale by its weak derivative, concentration by the score "
    "function), each also wrapped in Independent (.to_event()) or .expand()"
)


@pytree_dataclass
class MeasureValued(Estimator):
    r"""The measure-valued derivative estimator: differences of f under weak-derivative pairs.

    The derivative of a density with respect to one of its parameters φ_j is written as a
    scaled difference of two probability densities, ``∂p/∂φ_j = c_j (p⁺_j − p⁻_j)`` (the weak
    derivative ``(c_j, p⁺_j, p⁻_j)``), so that

    .. math::

        \frac{\partial}{\partial \varphi_j}\, \mathbb{E}_{p}[f(x)]
        = c_j \big(\mathbb{E}_{p^+_j}[f(x)] - \mathbb{E}_{p^-_j}[f(x)]\big)
        \approx \frac{c_j}{N} \sum_{i=1}^N f(x^+_{ij}) - f(x^-_{ij}),
        \qquad x^\pm_{ij} \sim p^\pm_j .

    For a distribution with many coordinates (a batched distribution or ``.to_event()``) each
    scalar parameter φ_j gets its own pair: ``x^±_ij`` is one sample ``x_i ~ p`` with the
    coordinate that φ_j governs replaced by a draw from ``p^±_j``. The weak derivatives
    (Mohamed et al., 2020, section 6 and table 1):

    ==================  =========  ===============  ===============================
    distribution, φ     c          p⁺               p⁻
    ==================  =========  ===============  ===============================
    Normal, loc μ       1/(σ√2π)   μ + σ W          μ − σ W,  W ~ Weibull(√2, 2)
    Normal, scale σ     1/σ        μ + σ M          N(μ, σ²), M ~ double-sided Maxwell
    Bernoulli, p        1          δ₁               δ₀
    Categorical, p_k    1          δ_k              Categorical(p)
    Poisson, λ          1          y + 1            y,        y ~ Poisson(λ)
    Exponential, λ      1/λ        Exp(λ)           Gamma(2, λ)
    Gamma(α), rate λ    α/λ        Gamma(α, λ)      Gamma(α + 1, λ)
    Weibull, scale s    k/s        s G^{1/k}        Weibull(s, k), G ~ Gamma(2, 1)
    ==================  =========  ===============  ===============================

    With ``coupling=True`` (the default) the two parts of a pair share their randomness, which
    lowers the variance for smooth f: the same W on both sides of the mean pair; for the
    scale pair ``x⁻ = μ + σ U M`` with ``U ~ Uniform(0, 1)`` (``U M`` is standard normal); for
    Poisson the same y; for Exponential, Gamma and Weibull the negative part is the positive
    part plus one more exponential draw. For Bernoulli the pair is deterministic; for
    Categorical the coupled pairs of one coordinate share one draw from p⁻.

    The estimator works on the distribution's parameters φ (``loc``/``scale``, ``probs``,
    ``rate``, …, read from ``dist_fn(θ)``) and reaches θ by the chain rule through the
    surrogate ``f_θ(x_i) + Σ_j (φ_j − sg(φ_j)) · sg(ĝ_ij)``, where ``ĝ_ij`` is the pair
    difference above and ``x_i ~ p`` a sample whose f gives the value (and the ``∇θ f`` term
    when f depends on θ). Gamma's concentration and Weibull's concentration, which have no
    weak derivative here, get the score-function estimate ``f(x_i) ∂ log p(x_i)/∂φ_j`` instead,
    so the gradient stays unbiased if they depend on θ.

    **Cost**: 2 evaluations of f per scalar parameter per sample, plus one at ``x_i ~ p`` for
    the value: ``N (1 + 2 P)`` in all for P scalar parameters (a d-dimensional Normal has
    P = 2d; a batch of d Categoricals over K classes P = dK). :meth:`evaluations` reports this
    count, so ``compare`` charges it. It suits low-dimensional distributions, a
    non-differentiable f, and discrete distributions. The ``2 P`` perturbed points of a sample
    are built by a select on the coordinate index and evaluated in a loop over chunks of
    samples (``lax.map``), so the working memory stays near 16 MiB of points whatever N and D.

    **Control variates**: with ``control_variate=DeltaMethod()`` or
    ``ControlVariate(h, expected_h)`` the cost in every pair becomes ``f − β h`` (the
    measure-valued estimate of ``∇E[h]`` on the *same* pairs is subtracted) and the exact
    ``β ∇E_{p_θ}[h]`` is added back through ``expected_h``; β comes from a separate batch (or is
    fixed), so the estimate stays unbiased. It pays when h follows f closely (for a quadratic f
    and the delta method, β = 1 leaves no variance at all); it costs the evaluations of h at the
    same points, plus the separate batch when β is fitted.

    **Higher derivatives are not supported**: the surrogate is linear in φ, so a second
    derivative would not estimate the Hessian of ``E[f]``; ``jax.hessian`` (or grad of grad)
    raises a ``ValueError`` saying so. Use :class:`ScoreFunction` (any order) or
    :class:`Pathwise`.

    Args:
      coupling: share randomness between the positive and the negative part of each pair
        (a Python bool).
      control_variate: ``None`` or a control variate from :mod:`expectax.control_variates`
        (``DeltaMethod()``, ``ControlVariate(h, expected_h)``), as above.

    Example:
      >>> import jax, jax.numpy as jnp, numpyro.distributions as dist
      >>> import expectax as ex
      >>> E = ex.expectation(lambda p, x: x ** 2, lambda p: dist.Normal(p, 1.0),
      ...                    estimator=ex.MeasureValued(), num_samples=1000)
      >>> g = jax.grad(E)(jnp.array(1.0), jax.random.key(0))   # ≈ 2 μ = 2

    References:
      Pflug (1989), "Sampling derivatives of probabilities". Heidergott & Vázquez-Abad (2000),
      "Measure-valued differentiation for stochastic processes: the finite horizon case".
      Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
      learning", JMLR 21(132), section 6.
    """

    coupling: bool = static_field(default=True)
    control_variate: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.coupling, bool):
            raise TypeError(
                f"MeasureValued(coupling=...) must be a Python bool, got {self.coupling!r}. "
                "Write MeasureValued(coupling=True) or MeasureValued(coupling=False)."
            )
        cv = self.control_variate
        if cv is not None and not (hasattr(cv, "bind") and hasattr(cv, "extra_evaluations")):
            raise TypeError(
                "MeasureValued(control_variate=...) must be a control variate from "
                "expectax.control_variates (DeltaMethod() or ControlVariate(h, expected_h)); "
                f"got {type(cv).__name__}."
            )

    def evaluations(self, num_samples: int, dist: Any = None) -> int:
        """Evaluations of f for one estimate: ``num_samples · (1 + 2 P)``, P scalar parameters.

        Without ``dist`` the count assumes one scalar parameter (``3 · num_samples``). A control
        variate whose coefficient is fitted adds its separate batch, at the same cost per sample.
        """
        per_sample = 3 if dist is None else 1 + 2 * _parameter_count(dist)
        extra = 0
        if self.control_variate is not None:
            extra = int(self.control_variate.extra_evaluations(num_samples))
        return (num_samples + extra) * per_sample

    def cost_terms(self, dist: Any, g: Callable[[Any], Any], key: jax.Array, n: int) -> jax.Array:
        """The plain measure-valued terms for a cost ``g(x)`` (no θ in g, no control variate).

        Used to fit control-variate coefficients on a separate batch: every float leaf of
        ``dist`` carries a leading axis of ``n`` (one copy of the distribution per sample), as
        :func:`expectax.control_variates.optimal_coefficient` passes it.
        """
        ctx = Context(lambda _, x: g(x), dist, None, stacked=True)
        return _surrogate(ctx, key, n, self.coupling, None)

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        if ctx.dist is None:
            raise TypeError("MeasureValued samples from dist_fn(params); dist_fn is None.")
        cv = None
        if self.control_variate is not None:
            _unwrap(ctx.dist)  # the unsupported-distribution error before the control variate's
            cv = self.control_variate.bind(self, ctx, jax.random.fold_in(key, 1), num_samples)
        return _surrogate(ctx, key, num_samples, self.coupling, cv)


# --------------------------------------------------------------------------- the surrogate


def _surrogate(ctx: Context, key: jax.Array, n: int, coupling: bool, cv: Any) -> jax.Array:
    """The ``(N,)`` surrogate terms; ``cv`` a bound control variate or None.

    With a control variate the cost is ``f − β h`` everywhere (value, pair differences, the
    score-function part) and ``β E_{p_θ}[h]`` is added back with θ live, so the gradient is the
    measure-valued estimate of ``∇E[f − β h]`` on the pairs plus the exact ``β ∇E[h]``.
    """
    base, shape = _unwrap(ctx.dist)
    plan = _PLANS[_family(base)](base, shape, ctx.stacked, key, n, coupling)
    x = _sg(plan.x)  # (N, D)
    xs = x.reshape((n, *shape))
    fx = ctx.f(xs)  # θ live: the value and the ∇θ f term
    cost_x, offset = fx, 0.0
    f_points = ctx.f_single
    if cv is not None:
        beta, h = cv.beta, cv.h
        h_x = cv.h_values(xs)
        cost_x = fx - beta * h_x
        offset = beta * cv.expected(ctx)  # θ live: the exact β ∇E[h]
        f_single = ctx.f_single

        def f_points(p: Any, y: Any) -> jax.Array:
            return f_single(p, y) - beta * h(y)

    diffs = _pair_differences(ctx, f_points, x, shape, plan.groups)
    total = cost_x + offset
    weak = 0.0
    for g, diff in zip(plan.groups, diffs, strict=True):
        grad = _sg(g.c * diff)  # (N, D, S): ĝ_ij
        live = g.phi - _sg(g.phi)  # (N or 1, D, S), value 0
        weak = weak + jnp.sum(live * grad, axis=(1, 2))
    # linear in φ: its second derivative estimates nothing, so one is refused (issue 18)
    total = total + first_order_only(jnp.asarray(weak), "MeasureValued")
    if plan.score_log_prob is not None:
        lp = plan.score_log_prob(x)
        total = total + (magic_box(lp) - 1.0) * _sg(cost_x)
    return total


# The most point elements (all pairs of a chunk of samples) evaluated in one step of the loop
# over samples in _pair_differences: 16 MiB of float32. Smaller chunks (1 MiB) kept the points
# in cache but made many short loop steps that used one core; on an idle 2-core machine the
# cosine test function at D = 100 took 7.7 ms with 1 MiB chunks and 5.6 ms with 16 MiB ones.
_CHUNK_ELEMENTS = 1 << 22


def _pair_differences(
    ctx: Context,
    f_single: Callable[[Any, Any], Any],
    x: jax.Array,
    shape: tuple[int, ...],
    groups: list[_Group],
) -> list[jax.Array]:
    """``f(x⁺_ij) − f(x⁻_ij)`` for each group, ``(N, D, S)`` each, gradients stopped.

    Sample i's points are ``x_i`` with coordinate j set to the pair's value: built by a select
    on the coordinate index (XLA fuses it into f's first use of x), the plus and the minus half
    evaluated separately, nothing concatenated. θ's copy i (stop-gradient'd) goes with row i.
    """
    params = _sg(ctx.params)
    d = x.shape[1]

    def evaluate(p: Any, xi: jax.Array, values: jax.Array) -> jax.Array:
        s = values.shape[1]
        mask = jnp.eye(d, dtype=bool)[:, None, :]  # (D, 1, D): coordinate j of point (j, s)
        pts = jnp.where(mask, values[:, :, None].astype(xi.dtype), xi)  # (D, S, D)
        pts = pts.reshape((d * s, *shape))
        return Context(f_single, None, p, debug=ctx.debug).f(pts).reshape(d, s)

    def row(p: Any, xi: jax.Array, plus: list, minus: list) -> list[jax.Array]:
        return [evaluate(p, xi, a) - evaluate(p, xi, b) for a, b in zip(plus, minus, strict=True)]

    plus = [_sg(g.plus) for g in groups]
    minus = [_sg(g.minus) for g in groups]
    n = x.shape[0]
    if n == 1:
        return jax.vmap(row, in_axes=(ctx.params_axis, 0, 0, 0))(params, x, plus, minus)
    # A loop over chunks of samples, never a single vmap over all of them: the loop's inputs
    # are materialised once, where a vmap lets XLA fuse the sampling transforms (erf_inv, log,
    # pow) into the select that builds the points and redo them for each of the D copies of a
    # sample. The chunks bound the working memory too (at least two, at most
    # _CHUNK_ELEMENTS point elements each).
    per_row = 2 * d * sum(g.plus.shape[2] for g in groups) * d
    target = max(1, min(n // 2, _CHUNK_ELEMENTS // per_row))
    batch = max(b for b in range(1, target + 1) if n % b == 0)
    if ctx.stacked:
        return jax.lax.map(lambda a: row(*a), (params, x, plus, minus), batch_size=batch)
    return jax.lax.map(lambda a: row(params, *a), (x, plus, minus), batch_size=batch)


# --------------------------------------------------------------------------- plumbing


@dataclasses.dataclass(frozen=True)
class _Group:
    """One parameter's weak derivative: arrays over (sample, coordinate, slot)."""

    phi: jax.Array  # (N or 1, D, S): φ as a function of θ
    c: jax.Array  # (N or 1, D, S)
    plus: jax.Array  # (N, D, S): the value of the perturbed coordinate in x⁺
    minus: jax.Array  # (N, D, S)


@dataclasses.dataclass(frozen=True)
class _Plan:
    x: jax.Array  # (N, D): samples from p, flattened
    groups: list[_Group]
    score_log_prob: Any = None  # x (N, D) -> (N,): log p with only score-estimated φ live


def _unwrap(dist: Any) -> tuple[Any, tuple[int, ...]]:
    """Strip Independent/ExpandedDistribution; return the base and one sample's shape."""
    shape = tuple(getattr(dist, "batch_shape", ())) + tuple(getattr(dist, "event_shape", ()))
    base = dist
    while isinstance(base, (nd.Independent, nd.ExpandedDistribution)):
        base = base.base_dist
    _family(base)
    return base, shape


def _parameter_count(dist: Any) -> int:
    """P: the scalar parameters that get a weak-derivative pair (Normal: 2 per coordinate)."""
    base, shape = _unwrap(dist)
    family = _family(base)
    per_coordinate = 1
    if family == "Normal":
        per_coordinate = 2
    elif family == "Categorical":
        per_coordinate = int(jnp.shape(base.probs)[-1])
    return math.prod(shape) * per_coordinate


def _family(base: Any) -> str:
    for cls, name in _FAMILIES:
        if isinstance(base, cls):
            return name
    raise ValueError(
        f"MeasureValued has no weak derivative for {type(base).__name__}. It supports "
        f"{_SUPPORTED}. For other distributions use estimator=ex.ScoreFunction() (any "
        "distribution with a log_prob) or ex.Pathwise() (reparameterisable ones)."
    )


def _flat(p: Any, shape: tuple[int, ...], stacked: bool) -> jax.Array:
    """A parameter broadcast to one sample's shape, with a leading axis (N if stacked, else 1)."""
    p = jnp.asarray(p)
    if not jnp.issubdtype(p.dtype, jnp.floating):  # e.g. Poisson(3): noise needs floats
        p = p.astype(jnp.result_type(float))
    if stacked:
        lead, own = p.shape[0], p.shape[1:]
        p = p.reshape((lead,) + (1,) * (len(shape) - len(own)) + own)
        return jnp.broadcast_to(p, (lead, *shape))
    return jnp.broadcast_to(p, shape)[None]


def _col(p: Any, shape: tuple[int, ...], stacked: bool) -> jax.Array:
    """As :func:`_flat`, flattened to (lead, D, 1)."""
    p = _flat(p, shape, stacked)
    return p.reshape(p.shape[0], -1, 1)


def _sg(x: jax.Array) -> jax.Array:
    return jax.lax.stop_gradient(x)


# --------------------------------------------------------------------------- families


def _normal(base, shape, stacked, key, n, coupling) -> _Plan:
    loc, scale = _col(base.loc, shape, stacked), _col(base.scale, shape, stacked)
    mu, sigma = _sg(loc), _sg(scale)
    d = loc.shape[1]
    k_x, k_w, k_w2, k_m, k_u = jax.random.split(key, 5)
    sz = (n, d, 1)
    x = mu + sigma * jax.random.normal(k_x, sz, mu.dtype)
    w = jax.random.weibull_min(k_w, math.sqrt(2.0), 2.0, sz, mu.dtype)
    w_neg = w if coupling else jax.random.weibull_min(k_w2, math.sqrt(2.0), 2.0, sz, mu.dtype)
    m = jax.random.double_sided_maxwell(k_m, 0.0, 1.0, sz, mu.dtype)
    if coupling:
        e_neg = jax.random.uniform(k_u, sz, mu.dtype) * m
    else:
        e_neg = jax.random.normal(k_u, sz, mu.dtype)
    groups = [
        _Group(loc, 1.0 / (sigma * math.sqrt(2.0 * math.pi)), mu + sigma * w, mu - sigma * w_neg),
        _Group(scale, 1.0 / sigma, mu + sigma * m, mu + sigma * e_neg),
    ]
    return _Plan(x[..., 0], groups)


def _bernoulli(base, shape, stacked, key, n, coupling) -> _Plan:
    probs = _col(base.probs, shape, stacked)
    p = _sg(probs)
    sz = (n, probs.shape[1], 1)
    x = (jax.random.uniform(key, sz, p.dtype) < p).astype(jnp.int32)
    one = jnp.ones(sz, jnp.int32)
    return _Plan(x[..., 0], [_Group(probs, jnp.ones_like(p), one, jnp.zeros_like(one))])


def _categorical(base, shape, stacked, key, n, coupling) -> _Plan:
    probs = _flat(base.probs, (*shape, base.probs.shape[-1]), stacked)
    probs = probs.reshape(probs.shape[0], -1, probs.shape[-1])  # (lead, D, K)
    logits = jnp.log(_sg(probs))
    lead, d, k = probs.shape
    k_x, k_neg = jax.random.split(key)
    x = jax.random.categorical(k_x, jnp.broadcast_to(logits, (n, d, k))).astype(jnp.int32)
    plus = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (n, d, k))
    if coupling:
        neg = jax.random.categorical(k_neg, jnp.broadcast_to(logits, (n, d, k)))[..., None]
    else:
        neg = jax.random.categorical(k_neg, jnp.broadcast_to(logits[:, :, None], (n, d, k, k)))
    minus = jnp.broadcast_to(neg.astype(jnp.int32), (n, d, k))
    return _Plan(x, [_Group(probs, jnp.ones_like(logits), plus, minus)])


def _poisson(base, shape, stacked, key, n, coupling) -> _Plan:
    rate = _col(base.rate, shape, stacked)
    lam = _sg(rate)
    sz = (n, rate.shape[1], 1)
    k_x, k_y, k_y2 = jax.random.split(key, 3)
    x = jax.random.poisson(k_x, lam, sz).astype(jnp.int32)
    y = jax.random.poisson(k_y, lam, sz).astype(jnp.int32)
    y_neg = y if coupling else jax.random.poisson(k_y2, lam, sz).astype(jnp.int32)
    return _Plan(x[..., 0], [_Group(rate, jnp.ones_like(lam), y + 1, y_neg)])


def _gamma_like(base, shape, stacked, key, n, coupling, alpha, rate, score) -> _Plan:
    """Gamma(α, rate λ): (α/λ, Gamma(α, λ), Gamma(α + 1, λ)); Exponential is α = 1."""
    lam, a = _sg(rate), _sg(alpha)
    sz = (n, rate.shape[1], 1)
    k_x, k_g, k_e, k_g2 = jax.random.split(key, 4)
    x = jax.random.gamma(k_x, jnp.broadcast_to(a, sz), sz, lam.dtype) / lam
    g = jax.random.gamma(k_g, jnp.broadcast_to(a, sz), sz, lam.dtype)
    if coupling:
        g_neg = g + jax.random.exponential(k_e, sz, lam.dtype)
    else:
        g_neg = jax.random.gamma(k_g2, jnp.broadcast_to(a + 1.0, sz), sz, lam.dtype)
    return _Plan(x[..., 0], [_Group(rate, a / lam, g / lam, g_neg / lam)], score)


def _exponential(base, shape, stacked, key, n, coupling) -> _Plan:
    rate = _col(base.rate, shape, stacked)
    return _gamma_like(base, shape, stacked, key, n, coupling, jnp.ones_like(rate), rate, None)


def _gamma(base, shape, stacked, key, n, coupling) -> _Plan:
    rate = _col(base.rate, shape, stacked)
    alpha = _col(base.concentration, shape, stacked)

    def score(x: jax.Array) -> jax.Array:  # the concentration by the score function
        return jnp.sum(nd.Gamma(alpha[..., 0], _sg(rate[..., 0])).log_prob(x), axis=1)

    return _gamma_like(base, shape, stacked, key, n, coupling, alpha, rate, score)


def _weibull(base, shape, stacked, key, n, coupling) -> _Plan:
    scale = _col(base.scale, shape, stacked)
    conc = _col(base.concentration, shape, stacked)
    s, k = _sg(scale), _sg(conc)
    sz = (n, scale.shape[1], 1)
    k_x, k_e1, k_e2, k_g = jax.random.split(key, 4)
    x = s * jax.random.exponential(k_x, sz, s.dtype) ** (1.0 / k)
    e1 = jax.random.exponential(k_e1, sz, s.dtype)
    g2 = e1 + jax.random.exponential(k_e2, sz, s.dtype)
    e_neg = e1 if coupling else jax.random.exponential(k_g, sz, s.dtype)

    def score(x: jax.Array) -> jax.Array:  # the concentration by the score function
        return jnp.sum(nd.Weibull(_sg(scale[..., 0]), conc[..., 0]).log_prob(x), axis=1)

    group = _Group(scale, k / s, s * g2 ** (1.0 / k), s * e_neg ** (1.0 / k))
    return _Plan(x[..., 0], [group], score)


_FAMILIES = (
    (nd.Normal, "Normal"),
    ((nd.BernoulliProbs, nd.BernoulliLogits), "Bernoulli"),
    ((nd.CategoricalProbs, nd.CategoricalLogits), "Categorical"),
    (nd.Poisson, "Poisson"),
    (nd.Exponential, "Exponential"),
    (nd.Gamma, "Gamma"),
    (nd.Weibull, "Weibull"),
)

_PLANS = {
    "Normal": _normal,
    "Bernoulli": _bernoulli,
    "Categorical": _categorical,
    "Poisson": _poisson,
    "Exponential": _exponential,
    "Gamma": _gamma,
    "Weibull": _weibull,
}
