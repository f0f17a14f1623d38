"""The pathwise (reparameterisation) estimator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from expectax import sampling
from expectax.estimators.base import Context, Estimator, pytree_dataclass, static_field

__all__ = ["Pathwise"]


@pytree_dataclass
class Pathwise(Estimator):
    r"""The pathwise (reparameterisation) estimator: autodiff through the sampling path.

    With ``x = g(ε, θ)`` and ``ε ~ p(ε)`` independent of θ,

    .. math::

        \nabla_\theta\, \mathbb{E}_{p_\theta}[f_\theta(x)]
        = \mathbb{E}_{p(\epsilon)}\big[\nabla_\theta f_\theta(g(\epsilon, \theta))\big]
        \approx \frac1N \sum_{i=1}^N \nabla_\theta f_\theta(g(\epsilon_i, \theta)).

    Samples come from the distribution's ``rsample``: location-scale families (Normal,
    MultivariateNormal, LogNormal, Laplace, …, e.g. ``x = μ + σ ε``) and implicit
    reparameterisation (Gamma, Beta, Dirichlet; Figurnov et al., 2018) in numpyro. The
    surrogate is plain ``f_θ(x(θ))``, so ``jax.hessian`` and forward mode work, and
    higher derivatives are unbiased too.

    It needs f differentiable in x and a reparameterisable distribution (``has_rsample``);
    for discrete distributions use :class:`ScoreFunction` or a discrete estimator.

    For a sampling path of your own, build the estimator with :meth:`from_transform`.

    Args:
      control_variate: ``None`` or a control variate from :mod:`expectax.control_variates`:
        the terms become ``f(x_i) − β (h(x_i) − E_{p_θ}[h])``, whose gradient is the pathwise
        gradient of f minus ``β`` times that of h plus ``β ∇E[h]`` exactly.
      antithetic: mirrored pairs ``μ ± σε`` (``num_samples`` counts evaluations of f; even).
      qmc: randomised scrambled-Sobol noise (see :mod:`expectax.sampling`). Both sampling
        options need a Normal-noise location-scale distribution (or, with
        :meth:`from_transform`, such a ``base``).

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> E = ex.expectation(lambda p, x: x ** 2, lambda p: dist.Normal(p, 1.0),
      ...                    estimator=ex.Pathwise(), num_samples=1000)
      >>> g = jax.grad(E)(jnp.array(1.0), jax.random.key(0))   # ≈ 2 μ = 2

    References:
      Kingma & Welling (2014), "Auto-encoding variational Bayes". Rezende, Mohamed & Wierstra
      (2014), "Stochastic backpropagation and approximate inference in deep generative
      models". Figurnov, Mohamed & Mnih (2018), "Implicit reparameterization gradients".
      Mohamed et al. (2020), JMLR 21(132), section 5.
    """

    differentiates_f = True

    base: Any = static_field(default=None, repr=False)
    transform: Callable[[Any, Any], Any] | None = static_field(default=None, repr=False)
    control_variate: Any = None
    antithetic: bool = static_field(default=False)
    qmc: bool = static_field(default=False)

    def min_samples(self) -> int:
        return 2 if self.antithetic else 1

    def evaluations(self, num_samples: int, dist: Any = None) -> int:
        cv = self.control_variate
        extra = cv.extra_evaluations(num_samples) if hasattr(cv, "extra_evaluations") else 0
        return num_samples + int(extra)

    def _draw(self, dist: Any, key: jax.Array, n: int) -> Any:
        if self.antithetic or self.qmc:
            return sampling.sample(
                dist, key, n, antithetic=self.antithetic, qmc=self.qmc, owner="Pathwise"
            )
        return dist.rsample(key, (n,))

    def cost_terms(self, dist: Any, g: Callable[[Any], Any], key: jax.Array, n: int) -> jax.Array:
        """The plain pathwise terms ``g(x_i(θ))`` for a cost ``g(x)`` (``dist`` may be stacked).

        Used to fit control-variate coefficients on a separate batch.
        """
        return jax.vmap(g)(self._draw(dist, key, n))

    @classmethod
    def from_transform(cls, base: Any, transform: Callable[[Any, Any], Any]) -> Pathwise:
        """A pathwise estimator for a sampling path you supply: ``x = transform(params, ε)``.

        Args:
          base: the base distribution ``p(ε)``, independent of θ: anything with
            ``sample(key, sample_shape)`` (e.g. ``dist.Normal(0., 1.)`` or
            ``dist.Uniform(0., 1.).expand([d])``).
          transform: ``g(params, eps) -> x`` for one ``eps``; differentiable in params.

        With this estimator ``dist_fn`` is not used; pass ``None``::

            est = ex.Pathwise.from_transform(dist.Normal(0., 1.),
                                             lambda p, eps: p["mu"] + jnp.exp(p["log_s"]) * eps)
            E = ex.expectation(f, None, estimator=est, num_samples=100)
        """
        if not hasattr(base, "sample"):
            raise TypeError(
                "Pathwise.from_transform: base must be a distribution with a "
                f"sample(key, sample_shape) method (e.g. numpyro's dist.Normal(0., 1.)); got "
                f"{type(base).__name__}."
            )
        if not callable(transform):
            raise TypeError(
                "Pathwise.from_transform: transform must be a function g(params, eps) -> x; "
                f"got {type(transform).__name__}."
            )
        return cls(base=base, transform=transform)

    @property
    def needs_dist(self) -> bool:  # type: ignore[override]
        return self.transform is None

    @property
    def name(self) -> str:
        if self.transform is None:
            return Estimator.name.fget(self)  # "Pathwise", plus fields that differ
        return f"Pathwise(transform={getattr(self.transform, '__name__', 'g')})"

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        sampling.check_num_samples(num_samples, self.antithetic, "Pathwise")
        if self.transform is not None:
            if self.control_variate is not None:
                raise TypeError(
                    "Pathwise.from_transform has no distribution p_θ, so a control variate "
                    "(which needs E_{p_θ}[h]) cannot be attached; use Pathwise() with dist_fn."
                )
            if self.antithetic or self.qmc:
                eps = self._draw(self.base, key, num_samples)
            else:
                eps = self.base.sample(key, (num_samples,))
            xs = ctx.vmap(self.transform, jax.lax.stop_gradient(eps))
            return ctx.f(xs)
        dist = ctx.dist
        if not getattr(dist, "has_rsample", False):
            raise ValueError(
                f"Pathwise needs a reparameterisable distribution, but dist_fn returned "
                f"{type(dist).__name__}, which has no rsample (has_rsample is False). Use "
                "estimator=ex.ScoreFunction() (any distribution with a log_prob), a discrete "
                "estimator for Bernoulli/Categorical, or Pathwise.from_transform(base, g) with "
                "a sampling path of your own."
            )
        xs = self._draw(dist, key, num_samples)
        fx = ctx.f(xs)
        if self.control_variate is None:
            return fx
        cv = self.control_variate.bind(self, ctx, jax.random.fold_in(key, 1), num_samples)
        return fx - cv.beta * (cv.h_values(xs) - cv.expected(ctx))
