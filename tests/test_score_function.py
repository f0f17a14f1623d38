"""Statistical tests of ScoreFunction: unbiased gradients (and Hessians) on many distributions.

Each test draws R independent estimates (``jax.vmap`` of the jitted ``jax.grad(E)`` over split
keys) and checks |mean − exact| < 5 SE per coordinate (Bonferroni-corrected where many
coordinates are tested); exact answers are closed forms (differentiated by autodiff where the
formula is a closed-form value) or enumeration.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import GAMMA_BETA_CASES, assert_unbiased, estimates

import expectax as ex
import expectax.problems as problems

R = 3000  # estimates per test
N = 16  # samples per estimate


def _check(f, dist_fn, params, exact_value, key, *, num_samples=N, repeats=R, estimator=None):
    estimator = ex.ScoreFunction() if estimator is None else estimator
    E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=num_samples)
    grads = estimates(jax.grad(E), params, jax.random.key(key), repeats)
    exact = jax.grad(exact_value)(params)
    assert_unbiased(grads, exact, k=5, bonferroni=True)
    return grads, exact


# (name, f, dist_fn, params, exact E[f] as a closed form of params)
CASES = [
    (
        "normal",
        lambda p, x: x**2,
        lambda p: dist.Normal(p["mu"], p["sigma"]),
        {"mu": jnp.array(0.8), "sigma": jnp.array(1.2)},
        lambda p: p["mu"] ** 2 + p["sigma"] ** 2,
    ),
    *GAMMA_BETA_CASES,
    (
        "poisson",
        lambda p, x: (x - 1.0) ** 2,
        lambda p: dist.Poisson(p["rate"]),
        {"rate": jnp.array(2.5)},
        lambda p: p["rate"] + (p["rate"] - 1.0) ** 2,  # Var + (E − 1)²
    ),
    (
        "normal-to_event",
        lambda p, x: jnp.sum(x**2) + x[0] * x[1],
        lambda p: dist.Normal(p["loc"], p["scale"]).to_event(1),
        {"loc": jnp.array([0.5, -1.0, 0.3]), "scale": jnp.array([1.0, 0.7, 1.3])},
        lambda p: jnp.sum(p["loc"] ** 2 + p["scale"] ** 2) + p["loc"][0] * p["loc"][1],
    ),
    (
        "gamma-independent",
        lambda p, x: jnp.sum(jnp.sqrt(x)),
        lambda p: dist.Independent(dist.Gamma(p["a"], 1.0), 1),
        {"a": jnp.array([1.5, 3.0])},
        # E[sqrt(x)] = Γ(a + ½) / Γ(a)
        lambda p: jnp.sum(
            jnp.exp(jax.scipy.special.gammaln(p["a"] + 0.5) - jax.scipy.special.gammaln(p["a"]))
        ),
    ),
]


@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_unbiased_gradient(index):
    _, f, dist_fn, params, exact_value = CASES[index]
    _check(f, dist_fn, params, exact_value, key=100 + index)


@pytest.mark.parametrize("name", ["mvn-quadratic", "bernoulli", "categorical"])
def test_unbiased_gradient_on_reference_problems(name):
    prob = problems.get_problem(name)
    _check(prob.f, prob.dist_fn, prob.params, prob.exact_value, key=7, num_samples=32)


def test_f_depending_on_theta():
    """∇θ f enters the estimate: the k component is E[∂k f] = −2(μ − k)."""
    prob = problems.get_problem("gaussian-quadratic-theta", mu=0.5, sigma=0.8, k=1.5)
    grads, exact = _check(prob.f, prob.dist_fn, prob.params, prob.exact_value, key=3)
    assert float(exact["k"]) != 0.0


@pytest.mark.parametrize("name", ["gaussian-cos", "gaussian-quadratic-theta"])
def test_unbiased_hessian(name):
    """DiCE: the Hessian of the surrogate is an unbiased estimate of the Hessian of E."""
    prob = problems.get_problem(name, mu=0.5, sigma=0.8)
    E = ex.expectation(prob.f, prob.dist_fn, estimator=ex.ScoreFunction(), num_samples=32)
    hess = estimates(jax.hessian(E), prob.params, jax.random.key(11), R)
    assert_unbiased(hess, jax.hessian(prob.exact_value)(prob.params), k=5, bonferroni=True)


def test_leibniz_case_has_no_score_term():
    """p independent of θ: each per-sample gradient is exactly ∇θ f(θ, x_i)."""
    theta = {"c": jnp.array(0.4), "w": jnp.array([1.0, -2.0])}
    f = lambda p, x: (x - p["c"]) ** 2 + p["w"][0] * x + p["w"][1]
    dist_fn = lambda p: dist.Normal(0.0, 1.0)
    key = jax.random.key(5)
    g = ex.per_sample_grads(f, dist_fn, theta, key, estimator=ex.ScoreFunction(), num_samples=50)
    xs = dist.Normal(0.0, 1.0).sample(key, (50,))
    np.testing.assert_allclose(g["c"], -2.0 * (xs - 0.4), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g["w"], np.stack([xs, np.ones(50)], axis=1), rtol=1e-6)


def test_constant_f_gives_zero_mean_gradient():
    E = ex.expectation(
        lambda p, x: 3.0, lambda p: dist.Normal(p, 1.0), estimator=ex.ScoreFunction(), num_samples=8
    )
    assert float(E(jnp.array(0.3), jax.random.key(0))) == 3.0
    grads = estimates(jax.grad(E), jnp.array(0.3), jax.random.key(1), 300)
    assert_unbiased(grads, 0.0)


@pytest.mark.parametrize("copies", [1, 10_000], ids=["small", "large"])
def test_bernoulli_logits_log_prob_value_and_derivatives(copies):
    """expectax's Bernoulli(logits) log-density: numpyro's value bit for bit, and derivatives
    that are right everywhere, ℓ = 0 included: d/dℓ = x − σ(ℓ), d²/dℓ² = −σ(1 − σ),
    d/dx = ℓ (a relaxed x), in forward and reverse mode, on a small array and a large one
    (70,000 elements: XLA may compile those differently)."""
    from expectax.estimators.base import log_prob

    row = jnp.array([-30.0, -2.0, -1e-3, 0.0, 1e-3, 3.0, 30.0])
    logits = jnp.tile(row, (copies, 1))
    sig = jax.nn.sigmoid(logits)

    def total(ell, x):
        return jnp.sum(log_prob(dist.Bernoulli(logits=ell), x))

    for x in (0.0, 1.0, 0.3):
        xs = jnp.full_like(logits, x)
        if x in (0.0, 1.0):
            ours = log_prob(dist.Bernoulli(logits=logits), xs)
            np.testing.assert_array_equal(ours, dist.Bernoulli(logits=logits).log_prob(xs))
        d1 = jax.grad(total)(logits, xs)  # elementwise: the gradient of the sum
        np.testing.assert_allclose(d1, x - sig, rtol=1e-6, atol=1e-7)
        d2 = jax.grad(lambda ell, x=xs: jnp.sum(jax.grad(total)(ell, x)))(logits)
        np.testing.assert_allclose(d2, -sig * (1 - sig), rtol=1e-5, atol=1e-12)
        _, fwd = jax.jvp(lambda ell, x=xs: total(ell, x), (logits,), (logits,))
        np.testing.assert_allclose(fwd, jnp.sum((x - sig) * logits), rtol=1e-5)
    dx = jax.grad(total, argnums=1)(logits, jnp.full_like(logits, 0.3))
    np.testing.assert_allclose(dx, logits)


def test_bernoulli_and_binomial_logits_at_exactly_zero():
    """numpyro's Bernoulli/Binomial(logits=0) log_prob has a wrong derivative (0 or 1, not y − n/2).

    expectax computes these log-probabilities itself, so the score function stays right at zero
    logits, a common initialisation.
    """
    f = lambda p, b: (b - 0.499) ** 2  # noqa: E731
    per_sample = ex.per_sample_grads(
        f,
        lambda p: dist.Bernoulli(logits=p),
        jnp.array(0.0),
        jax.random.key(3),
        estimator=ex.ScoreFunction(),
        num_samples=64,
    )
    # each sample's gradient is (b − ½) f(b), b ∈ {0, 1}
    allowed = np.array([-0.5 * 0.499**2, 0.5 * 0.501**2])
    gap = np.min(np.abs(np.asarray(per_sample)[:, None] - allowed[None, :]), axis=1)
    assert np.all(gap < 1e-6), per_sample

    g = lambda p, k: (k - 0.7) ** 2  # noqa: E731
    per_sample = ex.per_sample_grads(
        g,
        lambda p: dist.Binomial(3, logits=p),
        jnp.array(0.0),
        jax.random.key(4),
        estimator=ex.ScoreFunction(),
        num_samples=64,
    )
    ks = np.arange(4.0)
    allowed = (ks - 1.5) * (ks - 0.7) ** 2  # d/dℓ log p(k) = k − 3σ(0)
    gap = np.min(np.abs(np.asarray(per_sample)[:, None] - allowed[None, :]), axis=1)
    assert np.all(gap < 1e-5), per_sample

    E = ex.expectation(
        f, lambda p: dist.Bernoulli(logits=p), estimator=ex.ScoreFunction(), num_samples=16
    )
    keys = jax.random.split(jax.random.key(5), 4000)
    grads = jax.jit(jax.vmap(jax.grad(E), in_axes=(None, 0)))(jnp.array(0.0), keys)
    assert_unbiased(grads, 0.25 * (1 - 2 * 0.499), k=5)
