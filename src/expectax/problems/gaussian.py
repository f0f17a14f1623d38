r"""Gaussian reference problems with closed-form values and gradients.

The univariate ones are the test functions of Mohamed et al. (2020), section 3 and figure 2:
``x ~ N(μ, σ²)`` with parameters ``{"mu": μ, "sigma": σ}`` (the raw standard deviation; the
gradient is taken with respect to μ and σ, as in the paper) and

.. math::

    f(x) = (x - k)^2, \qquad f(x) = e^{-k x^2}, \qquad f(x) = \cos(k x).

``mvn_quadratic`` is the multivariate quadratic form ``(x − c)ᵀ A (x − c)`` under
``MVN(m, L Lᵀ)``.

References:
  Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
  learning", JMLR 21(132).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from expectax.baselines import LeaveOneOut
from expectax.estimators import MeasureValued, Pathwise, ScoreFunction
from expectax.problems import Problem

#: What ``expectax compare`` runs on the one-dimensional Gaussian problems: the four families
#: of Mohamed et al. (2020) — score function with and without a baseline, pathwise, and the
#: coupled measure-valued estimator.
GAUSSIAN_ESTIMATORS = (
    ScoreFunction(),
    ScoreFunction(baseline=LeaveOneOut()),
    Pathwise(),
    MeasureValued(),
)

__all__ = [
    "gaussian_cos",
    "gaussian_exp",
    "gaussian_quadratic",
    "gaussian_quadratic_theta",
    "mvn_quadratic",
]


def _normal(params: dict) -> dist.Normal:
    return dist.Normal(params["mu"], params["sigma"])


def _gauss_params(mu: float, sigma: float) -> dict:
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}.")
    return {"mu": jnp.asarray(mu, dtype=float), "sigma": jnp.asarray(sigma, dtype=float)}


def gaussian_quadratic(mu: float = 1.0, sigma: float = 1.0, k: float = 3.0) -> Problem:
    r"""``E_{N(μ, σ²)}[(x − k)²]``: the default problem of ``expectax compare``.

    .. math::

        J = (\mu - k)^2 + \sigma^2, \qquad
        \partial_\mu J = 2(\mu - k), \qquad \partial_\sigma J = 2\sigma.

    Args:
      mu, sigma: the default parameters (σ > 0).
      k: the centre of the quadratic.

    Returns:
      A :class:`~expectax.problems.Problem` with params ``{"mu", "sigma"}``.

    References:
      Mohamed et al. (2020), JMLR 21(132), figure 2 (left).
    """

    def f(params: dict, x: jax.Array) -> jax.Array:
        return (x - k) ** 2

    def exact_value(p: dict) -> jax.Array:
        return (p["mu"] - k) ** 2 + p["sigma"] ** 2

    def exact_grad(p: dict) -> dict:
        return {"mu": 2.0 * (p["mu"] - k), "sigma": 2.0 * p["sigma"]}

    return Problem(
        name="gaussian-quadratic",
        description=f"E[(x - {k:g})^2], x ~ N(mu, sigma^2); grad w.r.t. mu, sigma",
        f=f,
        dist_fn=_normal,
        params=_gauss_params(mu, sigma),
        exact_value=exact_value,
        exact_grad=exact_grad,
        estimators=GAUSSIAN_ESTIMATORS,
    )


def gaussian_quadratic_theta(mu: float = 1.0, sigma: float = 1.0, k: float = 3.0) -> Problem:
    r"""``E_{N(μ, σ²)}[(x − k)²]`` with ``k`` a parameter too: f depends on θ.

    .. math::

        J = (\mu - k)^2 + \sigma^2, \qquad
        \partial_\mu J = 2(\mu - k), \quad \partial_\sigma J = 2\sigma, \quad
        \partial_k J = -2(\mu - k).

    The ``k`` component is ``E[∇θ f]``: it exercises the ``∇θ f`` term of every estimator.

    Returns:
      A :class:`~expectax.problems.Problem` with params ``{"mu", "sigma", "k"}``.
    """

    def f(params: dict, x: jax.Array) -> jax.Array:
        return (x - params["k"]) ** 2

    def exact_value(p: dict) -> jax.Array:
        return (p["mu"] - p["k"]) ** 2 + p["sigma"] ** 2

    def exact_grad(p: dict) -> dict:
        d = p["mu"] - p["k"]
        return {"mu": 2.0 * d, "sigma": 2.0 * p["sigma"], "k": -2.0 * d}

    params = _gauss_params(mu, sigma)
    params["k"] = jnp.asarray(k, dtype=float)
    return Problem(
        name="gaussian-quadratic-theta",
        description="E[(x - k)^2], x ~ N(mu, sigma^2); grad w.r.t. mu, sigma and k (f uses θ)",
        f=f,
        dist_fn=_normal,
        params=params,
        exact_value=exact_value,
        exact_grad=exact_grad,
        estimators=GAUSSIAN_ESTIMATORS,
    )


def gaussian_exp(mu: float = 1.0, sigma: float = 1.0, k: float = 1.0) -> Problem:
    r"""``E_{N(μ, σ²)}[exp(−k x²)]`` (k > 0), a bounded bump.

    With :math:`s = 1 + 2 k \sigma^2`,

    .. math::

        J = s^{-1/2} \exp\!\Big(-\frac{k \mu^2}{s}\Big), \qquad
        \partial_\mu J = -\frac{2 k \mu}{s} J, \qquad
        \partial_\sigma J = \Big(\frac{4 k^2 \mu^2 \sigma}{s^2} - \frac{2 k \sigma}{s}\Big) J.

    References:
      Mohamed et al. (2020), JMLR 21(132), figure 2 (middle).
    """
    if not k > 0:
        raise ValueError(f"k must be positive for exp(-k x^2), got {k}.")

    def f(params: dict, x: jax.Array) -> jax.Array:
        return jnp.exp(-k * x**2)

    def exact_value(p: dict) -> jax.Array:
        s = 1.0 + 2.0 * k * p["sigma"] ** 2
        return jnp.exp(-k * p["mu"] ** 2 / s) / jnp.sqrt(s)

    def exact_grad(p: dict) -> dict:
        mu, sigma = p["mu"], p["sigma"]
        s = 1.0 + 2.0 * k * sigma**2
        value = exact_value(p)
        return {
            "mu": -2.0 * k * mu / s * value,
            "sigma": (4.0 * k**2 * mu**2 * sigma / s**2 - 2.0 * k * sigma / s) * value,
        }

    return Problem(
        name="gaussian-exp",
        description=f"E[exp(-{k:g} x^2)], x ~ N(mu, sigma^2); grad w.r.t. mu, sigma",
        f=f,
        dist_fn=_normal,
        params=_gauss_params(mu, sigma),
        exact_value=exact_value,
        exact_grad=exact_grad,
        estimators=GAUSSIAN_ESTIMATORS,
    )


def gaussian_cos(mu: float = 1.0, sigma: float = 1.0, k: float = 1.0) -> Problem:
    r"""``E_{N(μ, σ²)}[cos(k x)]``, an oscillating test function.

    .. math::

        J = \cos(k\mu)\, e^{-k^2\sigma^2/2}, \qquad
        \partial_\mu J = -k \sin(k\mu)\, e^{-k^2\sigma^2/2}, \qquad
        \partial_\sigma J = -k^2 \sigma \cos(k\mu)\, e^{-k^2\sigma^2/2}.

    References:
      Mohamed et al. (2020), JMLR 21(132), figure 2 (right).
    """

    def f(params: dict, x: jax.Array) -> jax.Array:
        return jnp.cos(k * x)

    def exact_value(p: dict) -> jax.Array:
        return jnp.cos(k * p["mu"]) * jnp.exp(-(k**2) * p["sigma"] ** 2 / 2.0)

    def exact_grad(p: dict) -> dict:
        damp = jnp.exp(-(k**2) * p["sigma"] ** 2 / 2.0)
        return {
            "mu": -k * jnp.sin(k * p["mu"]) * damp,
            "sigma": -(k**2) * p["sigma"] * jnp.cos(k * p["mu"]) * damp,
        }

    return Problem(
        name="gaussian-cos",
        description=f"E[cos({k:g} x)], x ~ N(mu, sigma^2); grad w.r.t. mu, sigma",
        f=f,
        dist_fn=_normal,
        params=_gauss_params(mu, sigma),
        exact_value=exact_value,
        exact_grad=exact_grad,
        estimators=GAUSSIAN_ESTIMATORS,
    )


def mvn_quadratic(d: int = 3, seed: int = 0) -> Problem:
    r"""``E_{MVN(m, L Lᵀ)}[(x − c)ᵀ A (x − c)]``, a multivariate quadratic form.

    Parameters are ``{"loc": m (d,), "scale_tril": L (d, d)}``; ``dist_fn`` uses the lower
    triangle ``tril(L)`` only (so the gradient with respect to the entries above the diagonal is
    zero for every estimator). ``A`` (symmetric positive definite) and ``c`` are fixed,
    generated from ``seed``. With :math:`\Sigma = L L^\top`,

    .. math::

        J = (m - c)^\top A (m - c) + \operatorname{tr}(A \Sigma), \qquad
        \nabla_m J = 2 A (m - c), \qquad \nabla_L J = \operatorname{tril}(2 A L).

    Args:
      d: the dimension.
      seed: seeds ``A``, ``c`` and the default ``m``, ``L``.

    References:
      Mohamed et al. (2020), JMLR 21(132), section 3.
    """
    if not (isinstance(d, int) and d >= 1):
        raise ValueError(f"d must be a positive int, got {d!r}.")
    ka, kc, km, kl = jax.random.split(jax.random.key(seed), 4)
    b = jax.random.normal(ka, (d, d)) / jnp.sqrt(d)
    a_mat = b @ b.T + 0.5 * jnp.eye(d)
    c = jax.random.normal(kc, (d,))
    loc = jax.random.normal(km, (d,))
    scale_tril = jnp.tril(0.3 * jax.random.normal(kl, (d, d)), -1) + jnp.diag(
        jnp.linspace(0.5, 1.5, d)
    )

    def dist_fn(p: dict) -> dist.MultivariateNormal:
        return dist.MultivariateNormal(p["loc"], scale_tril=jnp.tril(p["scale_tril"]))

    def f(params: dict, x: jax.Array) -> jax.Array:
        r = x - c
        return r @ a_mat @ r

    def exact_value(p: dict) -> jax.Array:
        r = p["loc"] - c
        low = jnp.tril(p["scale_tril"])
        return r @ a_mat @ r + jnp.trace(a_mat @ low @ low.T)

    def exact_grad(p: dict) -> dict:
        low = jnp.tril(p["scale_tril"])
        return {"loc": 2.0 * a_mat @ (p["loc"] - c), "scale_tril": jnp.tril(2.0 * a_mat @ low)}

    return Problem(
        name="mvn-quadratic",
        description=f"E[(x-c)^T A (x-c)], x ~ MVN(m, L L^T) in {d} dimensions; grad w.r.t. m, L",
        f=f,
        dist_fn=dist_fn,
        params={"loc": loc, "scale_tril": scale_tril},
        exact_value=exact_value,
        exact_grad=exact_grad,
        estimators=(ScoreFunction(), Pathwise()),
    )
