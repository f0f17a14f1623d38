"""Tests of Pathwise: unbiased gradients and Hessians, exact per-sample gradients, transforms.

Statistical tests compare the mean of R independent estimates with the exact gradient (closed
forms differentiated by autodiff) within 5 standard errors (Bonferroni over coordinates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import GAMMA_BETA_CASES, assert_unbiased, estimates
from hypothesis import given, settings
from hypothesis import strategies as st

import expectax as ex
import expectax.problems as problems

R = 500
N = 16


def _check(f, dist_fn, params, exact_value, key, *, estimator=None, num_samples=N):
    estimator = ex.Pathwise() if estimator is None else estimator
    E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=num_samples)
    grads = estimates(jax.grad(E), params, jax.random.key(key), R)
    exact = jax.grad(exact_value)(params)
    assert_unbiased(grads, exact, k=5, bonferroni=True)
    return grads, exact


def _dirichlet_second_moment(p):
    a = p["alpha"]
    total = jnp.sum(a)
    return jnp.sum(a * (a + 1)) / (total * (total + 1)) + a[0] / total


CASES = [
    (
        "normal",
        lambda p, x: jnp.sin(x) + x**2,
        lambda p: dist.Normal(p["mu"], p["sigma"]),
        {"mu": jnp.array(0.8), "sigma": jnp.array(1.2)},
        # E[sin x] = sin(μ) exp(−σ²/2)
        lambda p: (
            jnp.sin(p["mu"]) * jnp.exp(-(p["sigma"] ** 2) / 2) + p["mu"] ** 2 + p["sigma"] ** 2
        ),
    ),
    (
        "lognormal",
        lambda p, x: x,
        lambda p: dist.LogNormal(p["mu"], p["sigma"]),
        {"mu": jnp.array(0.2), "sigma": jnp.array(0.5)},
        lambda p: jnp.exp(p["mu"] + p["sigma"] ** 2 / 2),
    ),
    *GAMMA_BETA_CASES,
    (
        "dirichlet",
        lambda p, x: jnp.sum(x**2) + x[0],
        lambda p: dist.Dirichlet(p["alpha"]),
        {"alpha": jnp.array([1.5, 2.0, 3.5])},
        _dirichlet_second_moment,
    ),
]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_unbiased_gradient(index):
    _, f, dist_fn, params, exact_value = CASES[index]
    _check(f, dist_fn, params, exact_value, key=200 + index)


def test_mvn_quadratic():
    prob = problems.get_problem("mvn-quadratic")
    _check(prob.f, prob.dist_fn, prob.params, prob.exact_value, key=31)


def test_f_depending_on_theta():
    prob = problems.get_problem("gaussian-quadratic-theta", mu=0.5, sigma=0.8, k=1.5)
    _check(prob.f, prob.dist_fn, prob.params, prob.exact_value, key=32)


@pytest.mark.parametrize("name", ["gaussian-cos", "gaussian-quadratic-theta"])
def test_unbiased_hessian(name):
    prob = problems.get_problem(name, mu=0.5, sigma=0.8)
    E = ex.expectation(prob.f, prob.dist_fn, estimator=ex.Pathwise(), num_samples=N)
    hess = estimates(jax.hessian(E), prob.params, jax.random.key(33), R)
    assert_unbiased(hess, jax.hessian(prob.exact_value)(prob.params), k=5, bonferroni=True)


def test_per_sample_normal_grads_equal_hand_written():
    """x = μ + σ ε with ε = jax.random.normal(key, (N,)): ∂μ f = f'(x), ∂σ f = f'(x) ε."""
    mu, sigma, k = 0.3, 1.7, 2.0
    params = {"mu": jnp.array(mu), "sigma": jnp.array(sigma)}
    key = jax.random.key(42)
    g = ex.per_sample_grads(
        lambda p, x: (x - k) ** 2,
        lambda p: dist.Normal(p["mu"], p["sigma"]),
        params,
        key,
        estimator=ex.Pathwise(),
        num_samples=64,
    )
    eps = jax.random.normal(key, (64,))
    x = mu + sigma * eps
    np.testing.assert_allclose(g["mu"], 2 * (x - k), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g["sigma"], 2 * (x - k) * eps, rtol=1e-6, atol=1e-6)
    # and jax.grad(E) is their mean, computed by hand from the same ε
    E = ex.expectation(
        lambda p, x: (x - k) ** 2,
        lambda p: dist.Normal(p["mu"], p["sigma"]),
        estimator=ex.Pathwise(),
        num_samples=64,
    )
    hand = jax.grad(lambda p: jnp.mean((p["mu"] + p["sigma"] * eps - k) ** 2))(params)
    got = jax.grad(E)(params, key)
    np.testing.assert_allclose(got["mu"], hand["mu"], rtol=1e-6)
    np.testing.assert_allclose(got["sigma"], hand["sigma"], rtol=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    mu=st.floats(-3.0, 3.0),
    sigma=st.floats(0.05, 3.0),
    k=st.floats(-3.0, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_per_sample_quadratic(mu, sigma, k, seed):
    """For random (μ, σ, k) the pathwise per-sample gradient is the closed-form expression."""
    params = {"mu": jnp.array(mu, jnp.float32), "sigma": jnp.array(sigma, jnp.float32)}
    key = jax.random.key(seed)
    g = _quadratic_grads(params, key, jnp.float32(k))
    eps = jax.random.normal(key, (8,))
    x = params["mu"] + params["sigma"] * eps
    np.testing.assert_allclose(g["mu"], 2 * (x - k), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g["sigma"], 2 * (x - k) * eps, rtol=1e-5, atol=1e-5)


@jax.jit
def _quadratic_grads(params, key, k):
    return ex.per_sample_grads(
        lambda p, x: (x - k) ** 2,
        lambda p: dist.Normal(p["mu"], p["sigma"]),
        params,
        key,
        estimator=ex.Pathwise(),
        num_samples=8,
    )


def test_from_transform_unbiased_and_exact_per_sample():
    """A user transform x = μ + exp(log_s) ε with ε ~ N(0, 1): dist_fn is None."""
    est = ex.Pathwise.from_transform(
        dist.Normal(0.0, 1.0), lambda p, eps: p["mu"] + jnp.exp(p["log_s"]) * eps
    )
    f = lambda p, x: (x - 3.0) ** 2
    params = {"mu": jnp.array(1.0), "log_s": jnp.array(-0.3)}
    exact_value = lambda p: (p["mu"] - 3.0) ** 2 + jnp.exp(2 * p["log_s"])
    _check(f, None, params, exact_value, key=34, estimator=est)

    key = jax.random.key(3)
    g = ex.per_sample_grads(f, None, params, key, estimator=est, num_samples=32)
    eps = jax.random.normal(key, (32,))
    s = jnp.exp(params["log_s"])
    x = params["mu"] + s * eps
    np.testing.assert_allclose(g["mu"], 2 * (x - 3.0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g["log_s"], 2 * (x - 3.0) * s * eps, rtol=1e-5, atol=1e-5)


def test_from_transform_uniform_base_inverse_cdf():
    """Exponential by inversion: x = −log(u) / λ with u ~ U(0, 1); E[x²] = 2/λ²."""
    est = ex.Pathwise.from_transform(dist.Uniform(0.0, 1.0), lambda lam, u: -jnp.log(u) / lam)
    _check(lambda p, x: x**2, None, jnp.array(1.5), lambda lam: 2.0 / lam**2, key=35, estimator=est)


def test_leibniz_case_per_sample_grads_are_grad_f():
    theta = jnp.array([0.4, -1.0])
    f = lambda p, x: jnp.sum((x - p) ** 2)
    dist_fn = lambda p: dist.Normal(jnp.zeros(2), 1.0).to_event(1)
    key = jax.random.key(9)
    g = ex.per_sample_grads(f, dist_fn, theta, key, estimator=ex.Pathwise(), num_samples=20)
    xs = dist.Normal(jnp.zeros(2), 1.0).to_event(1).sample(key, (20,))
    np.testing.assert_allclose(g, -2.0 * (xs - theta), rtol=1e-6, atol=1e-6)
