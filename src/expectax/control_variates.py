r"""Control variates: subtract a function with known expectation, add its exact gradient back.

.. math::

    \hat g = \widehat{\nabla_\theta}\,\frac1N\sum_i \big(f(x_i) - \beta\, h(x_i)\big)
             + \beta\, \nabla_\theta\, \mathbb{E}_{p_\theta}[h],

where ``\widehat{\nabla}`` is the estimator (score function or pathwise). Whatever ``β``, the
estimate stays unbiased as long as ``β`` does not depend on the samples ``x_i``: expectax
estimates it from a *separate* batch, as the scalar that minimises the total variance of the
gradient estimate over the distribution's parameters,

.. math::

    \beta^\star = \frac{\sum_d \mathrm{Cov}[\hat g^f_d, \hat g^h_d]}
                       {\sum_d \mathrm{Var}[\hat g^h_d]}.

Attach one to an estimator: ``ScoreFunction(control_variate=DeltaMethod())`` or
``Pathwise(control_variate=ControlVariate(h, expected_h))``. With a control variate the
estimate's *value* is the control-variate estimate of ``E[f]`` (unbiased too).

For :class:`MeasureValued` the same identity holds (its derivative of ``E[h]`` is replaced by
the exact one): an implementation subtracts ``β·h`` from f inside its weak-derivative pairs and
adds ``β·∇E[h]``; :meth:`DeltaMethod.bind` returns the pieces (``h_values``, ``expected``,
``beta``) it needs.

References:
  Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
  learning", JMLR 21(132), section 7.2 (control variates, the delta method of section 7.2.2).
  Paisley, Blei & Jordan (2012), "Variational Bayesian inference with stochastic search".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from expectax.estimators.base import Context, pytree_dataclass, static_field

__all__ = ["BoundControlVariate", "ControlVariate", "DeltaMethod"]


# ------------------------------------------------------------------ shared helpers


def unstacked(ctx: Context) -> Context:
    """The context of one copy of θ (copy 0), with θ and the distribution stop-gradient'd.

    Used for the separate batches that estimate coefficients: in ``per_sample_grads`` every
    copy is the same θ, so these batches are the same as in ``expectation``.
    """
    sg = jax.lax.stop_gradient
    params = jax.tree_util.tree_map(sg, ctx.params)
    dist = None if ctx.dist is None else jax.tree_util.tree_map(sg, ctx.dist)
    if ctx.stacked:
        params = jax.tree_util.tree_map(lambda leaf: leaf[0], params)
        if dist is not None:
            dist = jax.tree_util.tree_map(lambda leaf: leaf[0], dist)
    return Context(
        ctx.f_single,
        dist,
        params,
        stacked=False,
        debug=ctx.debug,
        differentiates_f=ctx.differentiates_f,
    )


def float_leaves(dist: Any) -> tuple[list[Any], Any, list[bool]]:
    """``(leaves, treedef, is_float)`` of a distribution pytree."""
    leaves, treedef = jax.tree_util.tree_flatten(dist)
    mask = [jnp.issubdtype(jnp.result_type(leaf), jnp.floating) for leaf in leaves]
    return leaves, treedef, mask


def _per_sample_leaf_grads(
    cost_terms: Callable[[Any, Callable, jax.Array, int], jax.Array],
    dist: Any,
    g: Callable[[Any], jax.Array],
    key: jax.Array,
    m: int,
) -> jax.Array:
    """Per-sample gradients ``(m, P)`` of an estimator's terms for cost g w.r.t. dist's leaves."""
    leaves, treedef, mask = float_leaves(dist)
    stacked = [
        jnp.broadcast_to(jnp.asarray(leaf), (m, *jnp.shape(leaf))) if is_f else leaf
        for leaf, is_f in zip(leaves, mask, strict=True)
    ]
    idx = [i for i, is_f in enumerate(mask) if is_f]

    def total(float_stacked: list[jax.Array]) -> jax.Array:
        new = list(stacked)
        for i, leaf in zip(idx, float_stacked, strict=True):
            new[i] = leaf
        return jnp.sum(cost_terms(jax.tree_util.tree_unflatten(treedef, new), g, key, m))

    grads = jax.grad(total)([stacked[i] for i in idx])
    return jnp.concatenate([gr.reshape(m, -1) for gr in grads], axis=1)


def optimal_coefficient(
    cost_terms: Callable[[Any, Callable, jax.Array, int], jax.Array],
    dist: Any,
    f: Callable[[Any], jax.Array],
    h: Callable[[Any], jax.Array],
    key: jax.Array,
    m: int,
) -> jax.Array:
    r"""The variance-minimising scalar ``β = Σ_d Cov[g^f_d, g^h_d] / Σ_d Var[g^h_d]``.

    ``g^f`` and ``g^h`` are the estimator's per-sample gradients (w.r.t. the distribution's
    parameters) of f and h on ``m`` fresh samples drawn with ``key``; the result is
    stop-gradient'd (a constant, so the estimate it enters stays unbiased).
    """
    gf = _per_sample_leaf_grads(cost_terms, dist, f, key, m)
    gh = _per_sample_leaf_grads(cost_terms, dist, h, key, m)
    gf = gf - gf.mean(axis=0)
    gh = gh - gh.mean(axis=0)
    num = jnp.sum(gf * gh)
    den = jnp.sum(gh * gh)
    return jax.lax.stop_gradient(jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0))


def _vmap_over_dist(fn: Callable[[Any], jax.Array], ctx: Context) -> jax.Array:
    """``fn(dist)`` for the context's distribution; ``(N,)`` (one per copy) when stacked."""
    if ctx.stacked:
        return jax.vmap(fn)(ctx.dist)
    return fn(ctx.dist)


@dataclasses.dataclass(frozen=True)
class BoundControlVariate:
    """A control variate fitted to one batch: what an estimator needs to apply it.

    Attributes:
      beta: the coefficient (a stop-gradient'd scalar).
      h: ``h(x)`` for one sample, differentiable in ``x`` (for the pathwise estimator).
      expected_fn: ``dist -> E_dist[h]``, differentiable in the distribution's parameters.
    """

    beta: jax.Array
    h: Callable[[Any], jax.Array]
    expected_fn: Callable[[Any], jax.Array]

    def h_values(self, xs: Any) -> jax.Array:
        """``h(x_i)`` for a batch, shape ``(N,)``."""
        return jax.vmap(self.h)(xs)

    def expected(self, ctx: Context) -> jax.Array:
        """``E_{p_θ}[h]``: a scalar, or ``(N,)`` (one per copy of θ) in ``per_sample_grads``."""
        return _vmap_over_dist(self.expected_fn, ctx)


# A ratio of covariances from a handful of samples is noisy enough to undo the control variate;
# the separate batch has at least this many samples unless the user says otherwise.
_MIN_COEFFICIENT_BATCH = 128


def _check_coefficient_samples(num_samples: Any, owner: str) -> None:
    if num_samples is not None and (
        isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2
    ):
        raise ValueError(
            f"{owner}: num_samples (the size of the separate batch that estimates the "
            f"coefficient) must be an int >= 2 or None (same as the estimate's); got "
            f"{num_samples!r}."
        )


class _Base:
    coefficient: Any
    num_samples: int | None

    @property
    def name(self) -> str:
        """A short label for tables and estimator names."""
        if self.coefficient is None:
            return f"{type(self).__name__}()"
        try:
            return f"{type(self).__name__}(coefficient={float(self.coefficient):g})"
        except Exception:  # traced
            return f"{type(self).__name__}(coefficient=β)"

    def _beta(
        self,
        estimator: Any,
        ctx0: Context,
        h: Callable[[Any], jax.Array],
        key: jax.Array,
        n: int,
    ) -> jax.Array:
        if self.coefficient is not None:
            return jax.lax.stop_gradient(jnp.asarray(self.coefficient, jnp.float32))
        m = max(n, _MIN_COEFFICIENT_BATCH) if self.num_samples is None else self.num_samples
        params0 = ctx0.params

        def f(x: Any) -> jax.Array:
            return jnp.asarray(ctx0.f_single(params0, x), jnp.float32)

        return optimal_coefficient(estimator.cost_terms, ctx0.dist, f, h, key, max(m, 2))

    def extra_evaluations(self, num_samples: int) -> int:
        """f evaluations spent on the separate batch that estimates the coefficient."""
        if self.coefficient is not None:
            return 0
        if self.num_samples is None:
            return max(num_samples, _MIN_COEFFICIENT_BATCH)
        return self.num_samples


# ------------------------------------------------------------------ the delta method


def _moments(dist: Any) -> tuple[jax.Array, jax.Array]:
    """Flattened mean ``(D,)`` and covariance ``(D, D)`` of x (independent or full-covariance)."""
    import numpyro.distributions as nd

    inner = dist
    while isinstance(inner, (nd.Independent, nd.ExpandedDistribution)):
        inner = inner.base_dist
    shape = tuple(dist.batch_shape) + tuple(dist.event_shape)
    if tuple(inner.event_shape) == ():
        mean = jnp.broadcast_to(inner.mean, shape).reshape(-1)
        var = jnp.broadcast_to(inner.variance, shape).reshape(-1)
        return mean, jnp.diag(var)
    if inner is dist and hasattr(dist, "covariance_matrix") and len(dist.event_shape) == 1:
        if tuple(dist.batch_shape) == ():
            return dist.mean.reshape(-1), dist.covariance_matrix
    raise ValueError(
        "DeltaMethod needs the mean and covariance of x: a distribution with independent "
        "scalar components (Normal, Gamma, … optionally .to_event(k)) or a MultivariateNormal "
        f"without batch dimensions; got {type(dist).__name__} with batch_shape "
        f"{tuple(dist.batch_shape)} and event_shape {tuple(dist.event_shape)}. Use "
        "ControlVariate(h, expected_h) with an h whose mean you know instead."
    )


@pytree_dataclass
class DeltaMethod(_Base):
    r"""The delta-method control variate: f's second-order Taylor expansion about the mean.

    .. math::

        h(x) = f(\mu) + \nabla f(\mu)^\top (x - \mu)
               + \tfrac12 (x - \mu)^\top \nabla^2 f(\mu)\, (x - \mu),
        \qquad
        \mathbb{E}_{p_\theta}[h] = f(\mu) + \nabla f(\mu)^\top (m_\theta - \mu)
          + \tfrac12\big[\operatorname{tr}(\nabla^2 f(\mu)\,\Sigma_\theta)
          + (m_\theta - \mu)^\top \nabla^2 f(\mu)\,(m_\theta - \mu)\big],

    with ``μ = stop_gradient(m_θ)`` the expansion point and ``m_θ, Σ_θ`` the mean and
    covariance of ``p_θ``: the expectation is exact for every distribution whose first two
    moments are known (Gaussians in particular), and its gradient comes by autodiff. For a
    quadratic f, h = f: with ``β = 1`` the estimator's variance vanishes.

    Cost: one gradient and one Hessian of f in x (``D × D`` for ``D`` = size of x, so meant for
    moderate D), plus, when ``coefficient`` is None, the estimator's per-sample gradients of
    f and h on a separate batch of ``num_samples`` samples.

    Args:
      coefficient: a fixed ``β`` (e.g. ``1.0``), or None to estimate the variance-optimal
        scalar from a separate batch (drawn with ``fold_in(key, …)``, independent of the
        samples of the estimate, so it stays unbiased).
      num_samples: the size of that separate batch (default: the estimate's ``num_samples``,
        at least 128: a β fitted on 16 samples is noisy enough to cancel the gain).

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> from expectax.control_variates import DeltaMethod
      >>> est = ex.ScoreFunction(control_variate=DeltaMethod())
      >>> E = ex.expectation(lambda p, x: jnp.cos(x), lambda p: dist.Normal(p, 1.0),
      ...                    estimator=est, num_samples=100)
      >>> g = jax.grad(E)(jnp.array(0.5), jax.random.key(0))

    References:
      Mohamed et al. (2020), JMLR 21(132), section 7.2.2 ("delta method"). Paisley, Blei &
      Jordan (2012), "Variational Bayesian inference with stochastic search".
    """

    coefficient: Any = None
    num_samples: int | None = static_field(default=None)

    def __post_init__(self) -> None:
        _check_coefficient_samples(self.num_samples, "DeltaMethod")

    def bind(self, estimator: Any, ctx: Context, key: jax.Array, n: int) -> BoundControlVariate:
        """Fit the expansion (and β) to this batch; see :class:`BoundControlVariate`."""
        ctx0 = unstacked(ctx)
        if ctx0.dist is None:
            raise TypeError("DeltaMethod needs dist_fn (it uses the mean and covariance of p_θ).")
        mu, _ = _moments(ctx0.dist)
        shape = tuple(ctx0.dist.batch_shape) + tuple(ctx0.dist.event_shape)
        params0 = ctx0.params

        def f_flat(v: jax.Array) -> jax.Array:
            return jnp.asarray(ctx0.f_single(params0, v.reshape(shape)), jnp.float32)

        f0 = f_flat(mu)
        grad0 = jax.grad(f_flat)(mu)
        hess0 = jax.hessian(f_flat)(mu)
        f0, grad0, hess0, mu = jax.lax.stop_gradient((f0, grad0, hess0, mu))

        def h(x: Any) -> jax.Array:
            d = jnp.reshape(x, (-1,)) - mu
            return f0 + grad0 @ d + 0.5 * d @ (hess0 @ d)

        def expected(dist: Any) -> jax.Array:
            m, cov = _moments(dist)
            d = m - mu
            return f0 + grad0 @ d + 0.5 * (jnp.sum(hess0 * cov) + d @ (hess0 @ d))

        beta = self._beta(estimator, ctx0, h, key, n)
        return BoundControlVariate(beta, h, expected)


# ------------------------------------------------------------------ a user's control variate


@pytree_dataclass
class ControlVariate(_Base):
    r"""A control variate ``h`` of your own whose expectation you know in closed form.

    .. math::

        \hat g = \widehat{\nabla_\theta}\,\frac1N \sum_i \big(f(x_i) - \beta h(x_i)\big)
                 + \beta\, \nabla_\theta\, \texttt{expected\_h}(p_\theta).

    ``∇θ E[h]`` is the autodiff gradient of ``expected_h``.

    Args:
      h: ``h(x) -> scalar`` for one sample (differentiable in x for :class:`Pathwise`).
      expected_h: ``expected_h(dist) -> scalar``: ``E_{x~dist}[h(x)]`` exactly, written with
        the distribution's (differentiable) parameters, e.g. ``lambda d: d.loc``.
      coefficient: a fixed ``β``, or None to estimate the variance-optimal one from a separate
        batch (see the module docstring).
      num_samples: the size of that separate batch (default: the estimate's ``num_samples``,
        at least 128).

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> from expectax.control_variates import ControlVariate
      >>> cv = ControlVariate(lambda x: x, lambda d: d.loc)       # E[x] = μ
      >>> E = ex.expectation(lambda p, x: jnp.sin(x), lambda p: dist.Normal(p, 1.0),
      ...                    estimator=ex.ScoreFunction(control_variate=cv), num_samples=100)
      >>> g = jax.grad(E)(jnp.array(0.5), jax.random.key(0))

    References:
      Mohamed et al. (2020), JMLR 21(132), section 7.2.
    """

    h: Callable[[Any], Any] = static_field(default=None)
    expected_h: Callable[[Any], Any] = static_field(default=None)
    coefficient: Any = None
    num_samples: int | None = static_field(default=None)

    def __post_init__(self) -> None:
        for name in ("h", "expected_h"):
            if not callable(getattr(self, name)):
                raise TypeError(
                    f"ControlVariate: {name} must be a function (h(x) -> scalar, "
                    f"expected_h(dist) -> scalar); got {type(getattr(self, name)).__name__}. "
                    "Example: ControlVariate(lambda x: x, lambda d: d.loc)."
                )
        _check_coefficient_samples(self.num_samples, "ControlVariate")

    def bind(self, estimator: Any, ctx: Context, key: jax.Array, n: int) -> BoundControlVariate:
        """Fit β to this batch; see :class:`BoundControlVariate`."""
        ctx0 = unstacked(ctx)
        if ctx0.dist is None:
            raise TypeError("ControlVariate needs dist_fn (expected_h takes the distribution).")
        user_h = self.h

        def h(x: Any) -> jax.Array:
            value = jnp.asarray(user_h(x), jnp.float32)
            if value.shape != ():
                raise TypeError(
                    f"ControlVariate: h(x) must return a scalar per sample; got shape "
                    f"{value.shape}. Reduce it inside h (e.g. jnp.sum)."
                )
            return value

        def expected(dist: Any) -> jax.Array:
            value = jnp.asarray(self.expected_h(dist), jnp.float32)
            if value.shape != ():
                raise TypeError(
                    f"ControlVariate: expected_h(dist) must return a scalar; got shape "
                    f"{value.shape}."
                )
            return value

        beta = self._beta(estimator, ctx0, h, key, n)
        return BoundControlVariate(beta, h, expected)
