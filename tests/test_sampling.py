"""Antithetic and randomised-QMC sampling: unbiased, and lower variance on smooth problems."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased, estimates

import expectax as ex
from expectax import sampling

PARAMS = {"mu": jnp.array([0.5, -0.3]), "sigma": jnp.array([1.2, 0.7])}


def dist_fn(p):
    return dist.Normal(p["mu"], p["sigma"]).to_event(1)


def f(p, x):
    return jnp.sum(jnp.sin(x) + 0.5 * x**2)


def exact_mean(p):
    mu, s = p["mu"], p["sigma"]
    return jnp.sum(jnp.sin(mu) * jnp.exp(-0.5 * s**2) + 0.5 * (mu**2 + s**2))


EXACT = jax.grad(exact_mean)(PARAMS)
OPTIONS = {
    "antithetic": {"antithetic": True},
    "qmc": {"qmc": True},
    "both": {"antithetic": True, "qmc": True},
}


@pytest.fixture(scope="module")
def grads():
    out = {}
    for est_name, cls in (("score", ex.ScoreFunction), ("pathwise", ex.Pathwise)):
        for opt_name, opts in {"iid": {}, **OPTIONS}.items():
            E = ex.expectation(f, dist_fn, estimator=cls(**opts), num_samples=16)
            out[est_name, opt_name] = estimates(jax.grad(E), PARAMS, jax.random.key(3), 1000)
    return out


@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("est", ["score", "pathwise"])
def test_unbiased(grads, est, opt):
    assert_unbiased(grads[est, opt], EXACT, k=5, bonferroni=True, name=f"{est} {opt}")


@pytest.mark.parametrize("opt", list(OPTIONS))
def test_pathwise_variance_reduced(grads, opt):
    # Mirroring cancels the odd part of the integrand: the μ-gradient cos(x) + x is mostly odd
    # in ε, the σ-gradient (cos(x) + x)·ε mostly even (no gain there, as theory says).
    keys = ["mu"] if opt in ("antithetic", "both") else list(PARAMS)
    plain = grads["pathwise", "iid"]
    for k in keys:
        assert np.all(np.var(grads["pathwise", opt][k], 0) < 0.5 * np.var(plain[k], 0)), (opt, k)


def test_qmc_reduces_score_function_variance(grads):
    plain = grads["score", "iid"]
    for k in PARAMS:
        assert np.all(np.var(grads["score", "qmc"][k], 0) < np.var(plain[k], 0)), k


def test_antithetic_variance_matches_theory():
    """N evaluations in N/2 pairs: Var = (Var[g(ε)] + Cov[g(ε), g(−ε)]) / N, by quadrature."""
    mu, s, n = 0.5, 1.2, 8
    z, w = np.polynomial.hermite_e.hermegauss(100)
    w = w / w.sum()

    def g(z):  # the pathwise gradient w.r.t. μ of sin(x) + x²/2 at x = μ + s z
        x = mu + s * z
        return np.cos(x) + x

    mean = np.sum(w * g(z))
    var = np.sum(w * g(z) ** 2) - mean**2
    cov = np.sum(w * g(z) * g(-z)) - mean**2
    theory = (var + cov) / n
    E = ex.expectation(
        lambda p, x: jnp.sin(x) + 0.5 * x**2,
        lambda p: dist.Normal(p, s),
        estimator=ex.Pathwise(antithetic=True),
        num_samples=n,
    )
    est = np.asarray(estimates(jax.grad(E), jnp.array(mu), jax.random.key(8), 4000), np.float64)
    v = est.var(ddof=1)
    se = np.sqrt((np.mean((est - est.mean()) ** 4) - v**2) / est.size)
    assert abs(v - theory) < 5 * se, (v, theory, se)


def test_noise_properties(strict_ranks):
    eps = sampling.standard_normal(jax.random.key(0), 8, (3,), antithetic=True)
    np.testing.assert_array_equal(eps[4:], -eps[:4])
    q = jax.jit(lambda k: sampling.standard_normal(k, 64, (2,), qmc=True))(jax.random.key(1))
    assert q.shape == (64, 2) and np.all(np.isfinite(q))
    q2 = sampling.standard_normal(jax.random.key(2), 64, (2,), qmc=True)
    assert not np.allclose(q, q2)  # a fresh scrambling per key
    # a scrambled Sobol set of 64 points puts exactly one point in each 1/64 stratum per axis
    u = jax.scipy.stats.norm.cdf(q)
    for j in range(2):
        counts = np.bincount(np.floor(np.asarray(u[:, j]) * 64).astype(int), minlength=64)
        assert np.all(counts == 1)


def test_multivariate_normal_and_per_sample_grads():
    def dfn(p):
        return dist.MultivariateNormal(p["mu"], scale_tril=jnp.array([[1.0, 0.0], [0.5, 0.8]]))

    p = {"mu": jnp.array([0.3, -0.2])}
    for est in (ex.Pathwise(qmc=True), ex.ScoreFunction(antithetic=True)):
        E = ex.expectation(f, dfn, estimator=est, num_samples=8)
        g = jax.jit(jax.grad(E))(p, jax.random.key(0))
        psg = ex.per_sample_grads(f, dfn, p, jax.random.key(0), estimator=est, num_samples=8)
        np.testing.assert_allclose(psg["mu"].mean(0), g["mu"], rtol=1e-4, atol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="even num_samples"):
        ex.expectation(f, dist_fn, estimator=ex.Pathwise(antithetic=True), num_samples=7)(
            PARAMS, jax.random.key(0)
        )
    with pytest.raises(ValueError, match="location-scale distribution with Gaussian noise"):
        ex.expectation(
            lambda p, x: x,
            lambda p: dist.Gamma(p, 1.0),
            estimator=ex.Pathwise(qmc=True),
            num_samples=4,
        )(jnp.array(2.0), jax.random.key(0))
    with pytest.raises(ValueError, match="at least 2"):
        ex.expectation(f, dist_fn, estimator=ex.ScoreFunction(antithetic=True), num_samples=1)
