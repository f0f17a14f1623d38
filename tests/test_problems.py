"""The reference problems: closed forms against quadrature/enumeration, and the registry."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_unbiased, estimates
from scipy import integrate, stats

import expectax as ex
import expectax.problems as problems

GAUSS_1D = ["gaussian-quadratic", "gaussian-quadratic-theta", "gaussian-exp", "gaussian-cos"]


def _quad(fn, mu, sigma):
    lo, hi = mu - 12 * sigma, mu + 12 * sigma
    return integrate.quad(fn, lo, hi, epsabs=1e-8, epsrel=1e-7, limit=200)[0]


def _quadrature_value_and_grad(prob, params):
    """Value and (μ, σ[, k]) gradient by 1-D quadrature against the Normal density."""
    mu, sigma = float(params["mu"]), float(params["sigma"])
    f = lambda x: float(prob.f(params, jnp.asarray(x, dtype=jnp.float32)))
    pdf = lambda x: stats.norm.pdf(x, mu, sigma)
    value = _quad(lambda x: f(x) * pdf(x), mu, sigma)
    d_mu = _quad(lambda x: f(x) * pdf(x) * (x - mu) / sigma**2, mu, sigma)
    d_sigma = _quad(lambda x: f(x) * pdf(x) * ((x - mu) ** 2 / sigma**3 - 1 / sigma), mu, sigma)
    grad = {"mu": d_mu, "sigma": d_sigma}
    if "k" in params:  # f = (x - k)^2: ∂k f = -2 (x - k)
        k = float(params["k"])
        grad["k"] = _quad(lambda x: -2.0 * (x - k) * pdf(x), mu, sigma)
    return value, grad


@pytest.mark.parametrize("name", GAUSS_1D)
@pytest.mark.parametrize("mu,sigma,k", [(1.0, 1.0, None), (-0.7, 0.4, 2.0), (2.0, 1.8, 0.5)])
def test_gaussian_closed_forms_match_quadrature(name, mu, sigma, k):
    kwargs = {"mu": mu, "sigma": sigma} | ({} if k is None else {"k": k})
    prob = problems.get_problem(name, **kwargs)
    value, grad = _quadrature_value_and_grad(prob, prob.params)
    np.testing.assert_allclose(float(prob.exact_value(prob.params)), value, rtol=1e-5, atol=1e-6)
    exact = prob.exact_grad(prob.params)
    assert set(exact) == set(prob.params)
    for name_ in exact:
        np.testing.assert_allclose(float(exact[name_]), grad[name_], rtol=1e-4, atol=1e-5)
    # the hand-written gradient is the derivative of the closed-form value
    auto = jax.grad(prob.exact_value)(prob.params)
    for name_ in exact:
        np.testing.assert_allclose(float(exact[name_]), float(auto[name_]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("d", [1, 3])
def test_mvn_quadratic_matches_gauss_hermite(d):
    """A product Gauss–Hermite rule is exact for the quadratic f; differentiate it by autodiff."""
    prob = problems.mvn_quadratic(d=d, seed=d)
    nodes, weights = np.polynomial.hermite_e.hermegauss(4)
    weights = weights / weights.sum()
    grid = np.array(list(itertools.product(nodes, repeat=d)))
    w = np.prod(np.array(list(itertools.product(weights, repeat=d))), axis=1)

    def quad_value(p):
        xs = p["loc"] + jnp.asarray(grid, dtype=jnp.float32) @ jnp.tril(p["scale_tril"]).T
        return jnp.sum(jnp.asarray(w, jnp.float32) * jax.vmap(lambda x: prob.f(p, x))(xs))

    np.testing.assert_allclose(prob.exact_value(prob.params), quad_value(prob.params), rtol=1e-5)
    exact = prob.exact_grad(prob.params)
    quad = jax.grad(quad_value)(prob.params)
    np.testing.assert_allclose(exact["loc"], quad["loc"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(exact["scale_tril"], quad["scale_tril"], rtol=1e-4, atol=1e-5)
    assert np.all(np.triu(np.asarray(exact["scale_tril"]), 1) == 0)


def test_bernoulli_enumeration_matches_numpy():
    prob = problems.bernoulli(d=4)
    logits = np.asarray(prob.params["logits"], dtype=np.float64)
    q = 1 / (1 + np.exp(-logits))
    states = np.array(list(itertools.product([0, 1], repeat=4)))
    fxs = np.asarray(jax.vmap(lambda s: prob.f(prob.params, s))(jnp.asarray(states)))
    value, grad = 0.0, np.zeros_like(q)
    for x, fx in zip(states.astype(np.float64), fxs.astype(np.float64), strict=True):
        p = np.prod(q**x * (1 - q) ** (1 - x))
        value += p * fx
        grad += p * fx * (x - q)  # ∂ log p / ∂ logit_i = x_i − σ(logit_i)
    np.testing.assert_allclose(prob.exact_value(prob.params), value, rtol=1e-5)
    np.testing.assert_allclose(prob.exact_grad(prob.params)["logits"], grad, rtol=1e-4, atol=1e-7)


def test_categorical_enumeration_matches_numpy():
    prob = problems.categorical(num_categories=5)
    logits = np.asarray(prob.params["logits"], dtype=np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    fx = np.asarray(jax.vmap(lambda i: prob.f(prob.params, i))(jnp.arange(5)), np.float64)
    value = probs @ fx
    grad = probs * (fx - value)  # Σ_x p(x) f(x) (e_x − p)
    np.testing.assert_allclose(prob.exact_value(prob.params), value, rtol=1e-5)
    np.testing.assert_allclose(prob.exact_grad(prob.params)["logits"], grad, rtol=1e-4, atol=1e-7)


BUILT_IN = [
    "gaussian-quadratic",
    "gaussian-quadratic-theta",
    "gaussian-exp",
    "gaussian-cos",
    "mvn-quadratic",
    "bernoulli",
    "categorical",
]


@pytest.mark.parametrize("name", BUILT_IN)
def test_default_estimators_are_unbiased_on_each_problem(name):
    """Every built-in problem is consistent with expectax: its estimators agree with its answer."""
    prob = problems.get_problem(name)
    assert isinstance(prob, problems.Problem) and prob.name == name and prob.description
    assert prob.estimators, "a problem must name default estimators"
    for i, est in enumerate(prob.estimators):
        if not est.unbiased:  # relaxations are biased by design; tests/test_relaxed.py
            continue
        E = ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=64)
        value_and_grad = jax.value_and_grad(E)
        vals, grads = estimates(value_and_grad, prob.params, jax.random.key(20 + i), 200)
        assert_unbiased(vals, prob.exact_value(prob.params), k=5, name=f"{name} value {est.name}")
        assert_unbiased(grads, prob.exact_grad(prob.params), k=5, bonferroni=True, name=est.name)


def test_default_estimators_by_kind():
    names = [e.name for e in problems.get_problem("gaussian-quadratic").estimators]
    assert names == [
        "ScoreFunction",
        "ScoreFunction(baseline=LeaveOneOut())",
        "Pathwise",
        "MeasureValued",
    ]
    assert [e.name for e in problems.get_problem("mvn-quadratic").estimators] == [
        "ScoreFunction",
        "Pathwise",
    ]
    for name in ("bernoulli", "categorical"):  # no pathwise estimator for discrete samples
        kinds = {type(e) for e in problems.get_problem(name).estimators}
        assert ex.ScoreFunction in kinds and ex.DisARM in kinds and ex.Pathwise not in kinds


def test_registry_lists_and_rejects_unknown_names():
    names = problems.list_problems()
    assert set(BUILT_IN) <= set(names)
    assert names == sorted(names)
    with pytest.raises(
        ValueError, match=r"Unknown problem 'gaussian-quadratc'.*gaussian-quadratic"
    ):
        problems.get_problem("gaussian-quadratc")
    with pytest.raises(ValueError, match=r"Valid names: .*bernoulli"):
        problems.get_problem("nope")


def test_register_problem_adds_and_protects_names():
    factory = lambda scale=2.0: problems.gaussian_quadratic(k=scale)
    problems.register_problem("test-only-problem", factory)
    try:
        prob = problems.get_problem("test-only-problem", scale=4.0)
        assert float(prob.exact_grad(prob.params)["mu"]) == pytest.approx(2 * (1.0 - 4.0))
        with pytest.raises(ValueError, match="already registered"):
            problems.register_problem("test-only-problem", lambda: prob)
        problems.register_problem("test-only-problem", lambda: prob, overwrite=True)
        with pytest.raises(TypeError, match="factory must be a function"):
            problems.register_problem("other", prob)
    finally:
        problems._REGISTRY.pop("test-only-problem", None)


def test_factory_arguments_are_checked():
    with pytest.raises(ValueError, match="sigma must be positive"):
        problems.gaussian_quadratic(sigma=0.0)
    with pytest.raises(ValueError, match="k must be positive"):
        problems.gaussian_exp(k=-1.0)
    with pytest.raises(ValueError, match="d must be"):
        problems.bernoulli(d=40)
