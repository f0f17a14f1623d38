"""Tests of the measure-valued derivative estimator: unbiased for every family, coupling on and
off, per-sample pair differences, the variance that theory gives, cost and errors."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased

import expectax as ex
from expectax.control_variates import ControlVariate, DeltaMethod
from expectax.estimators.measure_valued import MeasureValued

N = 20_000
COUPLING = [True, False]


def _grads(f, dist_fn, params, coupling, seed=0, n=N):
    """Per-sample gradients: N independent single-sample estimates."""
    return ex.per_sample_grads(
        f, dist_fn, params, jax.random.key(seed), estimator=MeasureValued(coupling), num_samples=n
    )


@pytest.mark.parametrize("coupling", COUPLING)
def test_normal_to_event_with_theta_in_f(coupling):
    # x ~ N(μ, softplus(ρ)²) in 3 dims, f = Σ cos(x) + a Σ x: the ∇θ f term and the chain rule.
    def f(p, x):
        return jnp.sum(jnp.cos(x)) + p["a"] * jnp.sum(x)

    def dist_fn(p):
        return dist.Normal(p["mu"], jax.nn.softplus(p["rho"])).to_event(1)

    p = {"mu": jnp.array([0.3, -1.0, 2.0]), "rho": jnp.array([0.0, 0.5, -0.5]), "a": 0.7}
    s = jax.nn.softplus(p["rho"])
    damp = jnp.exp(-(s**2) / 2)
    exact = {
        "mu": -jnp.sin(p["mu"]) * damp + p["a"],
        "rho": -s * jnp.cos(p["mu"]) * damp * jax.nn.sigmoid(p["rho"]),
        "a": jnp.sum(p["mu"]),
    }
    g = _grads(f, dist_fn, p, coupling)
    assert_unbiased(g, exact, k=5, bonferroni=True)
    # the mean of the per-sample gradients is jax.grad of the expectation with the same key
    E = ex.expectation(f, dist_fn, estimator=MeasureValued(coupling), num_samples=N)
    full = jax.grad(E)(p, jax.random.key(0))
    for name in p:
        np.testing.assert_allclose(g[name].mean(0), full[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("coupling", COUPLING)
def test_normal_expanded_scalar_parameters(coupling):
    # Normal(μ, σ).expand([3]): one pair per coordinate, gradients summed into the scalars.
    def f(p, x):
        return jnp.sum((x - jnp.array([1.0, 2.0, -1.0])) ** 2)

    p = {"mu": jnp.array(0.5), "sigma": jnp.array(1.5)}
    exact = {"mu": 2.0 * (3 * 0.5 - 2.0), "sigma": 3 * 2.0 * 1.5}
    g = _grads(f, lambda p: dist.Normal(p["mu"], p["sigma"]).expand([3]), p, coupling)
    assert_unbiased(g, exact, k=5, bonferroni=True)


@pytest.mark.parametrize("coupling", COUPLING)
def test_bernoulli_by_enumeration(coupling):
    w = jnp.array([1.0, -2.0, 0.5])

    def f(p, x):
        x = x.astype(jnp.float32)
        return jnp.dot(w, x) + 3.0 * x[0] * x[1] * x[2] + jnp.sin(x[1] + x[2])

    def exact_value(logits):
        probs = jax.nn.sigmoid(logits)
        total = 0.0
        for bits in itertools.product([0, 1], repeat=3):
            x = jnp.array(bits)
            total += jnp.prod(jnp.where(x == 1, probs, 1 - probs)) * f(None, x)
        return total

    logits = jnp.array([0.2, -1.0, 1.5])
    g = _grads(f, lambda p: dist.Bernoulli(logits=p), logits, coupling)
    assert_unbiased(g, jax.jit(jax.grad(exact_value))(logits), k=5, bonferroni=True)


@pytest.mark.parametrize("coupling", COUPLING)
def test_categorical_by_enumeration(coupling):
    table = jnp.array([[1.0, -2.0, 0.5], [0.3, 2.0, -1.0]])

    def f(p, x):
        return table[0, x[0]] + table[1, x[1]] + 0.5 * x[0] * x[1]

    def exact_value(logits):
        probs = jax.nn.softmax(logits, axis=-1)
        return sum(
            probs[0, i] * probs[1, j] * f(None, jnp.array([i, j]))
            for i, j in itertools.product(range(3), repeat=2)
        )

    logits = jnp.array([[0.2, -1.0, 1.0], [0.0, 0.5, -0.5]])
    g = _grads(f, lambda p: dist.Categorical(logits=p), logits, coupling)
    assert_unbiased(g, jax.jit(jax.grad(exact_value))(logits), k=5, bonferroni=True)


@pytest.mark.parametrize("coupling", COUPLING)
def test_poisson_closed_form(coupling):
    # E[cos x] = exp(λ(cos 1 − 1)) cos(λ sin 1); rate = exp(θ).
    def exact_value(theta):
        lam = jnp.exp(theta)
        return jnp.sum(jnp.exp(lam * (jnp.cos(1.0) - 1)) * jnp.cos(lam * jnp.sin(1.0)))

    theta = jnp.array([0.3, 1.2])
    g = _grads(
        lambda p, x: jnp.sum(jnp.cos(x)), lambda t: dist.Poisson(jnp.exp(t)), theta, coupling
    )
    assert_unbiased(g, jax.jit(jax.grad(exact_value))(theta), k=5, bonferroni=True)


@pytest.mark.parametrize("coupling", COUPLING)
def test_exponential_closed_form(coupling):
    # E[cos x] = λ² / (1 + λ²); rate = exp(θ).
    def exact_value(theta):
        lam = jnp.exp(theta)
        return jnp.sum(lam**2 / (1 + lam**2))

    theta = jnp.array([-0.5, 0.4])
    g = _grads(
        lambda p, x: jnp.sum(jnp.cos(x)),
        lambda t: dist.Exponential(jnp.exp(t)).to_event(1),
        theta,
        coupling,
    )
    assert_unbiased(g, jax.jit(jax.grad(exact_value))(theta), k=5, bonferroni=True)


@pytest.mark.parametrize("coupling", COUPLING)
def test_gamma_rate_and_concentration(coupling):
    # E[cos x] = (1 + λ⁻²)^(−α/2) cos(α atan(1/λ)); the rate by its weak derivative, the
    # concentration (which depends on θ too) by the score function.
    def exact_value(p):
        a, lam = jnp.exp(p["log_a"]), jnp.exp(p["log_rate"])
        return jnp.sum((1 + lam**-2) ** (-a / 2) * jnp.cos(a * jnp.arctan(1 / lam)))

    def dist_fn(p):
        return dist.Gamma(jnp.exp(p["log_a"]), jnp.exp(p["log_rate"]))

    p = {"log_a": jnp.array([0.9, 0.3]), "log_rate": jnp.array([0.2, -0.3])}
    g = _grads(lambda p, x: jnp.sum(jnp.cos(x)), dist_fn, p, coupling)
    assert_unbiased(g, jax.jit(jax.grad(exact_value))(p), k=5, bonferroni=True)


@pytest.mark.parametrize("coupling", COUPLING)
def test_weibull_scale_and_concentration(coupling):
    # E[x^n] = s^n Γ(1 + n/k); f = x² − x.
    def exact_value(p):
        s, k = p["scale"], p["conc"]
        m1 = s * jnp.exp(jax.scipy.special.gammaln(1 + 1 / k))
        m2 = s**2 * jnp.exp(jax.scipy.special.gammaln(1 + 2 / k))
        return m2 - m1

    p = {"scale": jnp.array(1.3), "conc": jnp.array(1.7)}
    g = _grads(lambda p, x: x**2 - x, lambda p: dist.Weibull(p["scale"], p["conc"]), p, coupling)
    assert_unbiased(g, jax.jit(jax.grad(exact_value))(p), k=5, bonferroni=True)


# ----------------------------------------------------------------- variance: theory vs MC


def _variance_and_se(samples):
    """Sample variance and its standard error from the fourth central moment."""
    x = np.asarray(samples, dtype=np.float64)
    c = x - x.mean()
    var, m4 = np.mean(c**2), np.mean(c**4)
    return var, math.sqrt(max(m4 - var**2, 0.0) / x.size)


def _exact_variances(a, sigma):
    """Exact per-sample variances for f = (x − k)², a = μ − k, under N(μ, σ²).

    With W ~ Rayleigh (E W² = 2, Var W = 2 − π/2, Var W² = 4), M double-sided Maxwell
    (E M² = 3, E M⁴ = 15) and U ~ Uniform(0, 1):
    mean, coupled   ĝ = 4 a W / √(2π)
    mean, uncoupled ĝ = [2aσ(W₁ + W₂) + σ²(W₁² − W₂²)] / (σ √(2π))
    scale, coupled  ĝ = 2 a M (1 − U) + σ M² (1 − U²)
    scale, uncoupled ĝ = 2 a (M − ε) + σ (M² − ε²)
    """
    var_w = 2 - math.pi / 2
    return {
        ("mu", True): 16 * a**2 * var_w / (2 * math.pi),
        ("mu", False): (8 * a**2 * var_w + 8 * sigma**2) / (2 * math.pi),
        ("sigma", True): 4 * a**2 + 4 * sigma**2,
        ("sigma", False): 16 * a**2 + 8 * sigma**2,
    }


@pytest.mark.parametrize("a", [-2.0, 0.5])
def test_coupling_variance_matches_theory(a):
    # The Gaussian quadratic: MC variances agree with the exact ones; coupling lowers the
    # variance of the scale pair always, and of the mean pair for |μ − k| < 1.53 (with a large
    # linear part it doubles the linear part's variance: see docs/measure-valued.md).
    mu, sigma = 1.0, 1.0
    p = {"mu": jnp.array(mu), "sigma": jnp.array(sigma)}
    exact = _exact_variances(a, sigma)
    for coupling in COUPLING:
        g = _grads(
            lambda p, x: (x - (mu - a)) ** 2,
            lambda p: dist.Normal(p["mu"], p["sigma"]),
            p,
            coupling,
            seed=1,
            n=50_000,
        )
        for name in ("mu", "sigma"):
            var, se = _variance_and_se(g[name])
            assert abs(var - exact[name, coupling]) < 5 * se, (name, coupling, var, se)
    assert exact["sigma", True] < exact["sigma", False]
    if abs(a) < 1.5:
        assert exact["mu", True] < exact["mu", False]


# ----------------------------------------------------------------- cost, errors, jit


def test_evaluations_count_two_per_parameter_dimension():
    est = MeasureValued()
    normal = dist.Normal(jnp.zeros(3), 1.0).to_event(1)
    assert est.evaluations(10, normal) == 10 * (1 + 2 * 2 * 3)
    assert est.evaluations(10, dist.Bernoulli(probs=jnp.full((4,), 0.3))) == 10 * (1 + 2 * 4)
    assert est.evaluations(10, dist.Categorical(logits=jnp.zeros((2, 5)))) == 10 * (1 + 2 * 10)
    assert est.evaluations(10, dist.Exponential(1.0)) == 30


def test_unsupported_distribution_names_alternatives():
    E = ex.expectation(
        lambda p, x: jnp.sum(x),
        lambda p: dist.Beta(p, 2.0),
        estimator=MeasureValued(),
        num_samples=4,
    )
    with pytest.raises(ValueError, match=r"no weak derivative for Beta.*Normal.*ScoreFunction"):
        E(jnp.array(1.0), jax.random.key(0))


def test_coupling_must_be_bool():
    with pytest.raises(TypeError, match=r"coupling=.*must be a Python bool"):
        MeasureValued(coupling="yes")


# ----------------------------------------------------------------- control variates


def _cos_problem():
    """x ~ N(μ, softplus(ρ)²) in 3 dims, f = Σ cos(x) + a Σ x, with its exact gradient."""

    def f(p, x):
        return jnp.sum(jnp.cos(x)) + p["a"] * jnp.sum(x)

    def dist_fn(p):
        return dist.Normal(p["mu"], jax.nn.softplus(p["rho"])).to_event(1)

    p = {"mu": jnp.array([0.3, -1.0, 2.0]), "rho": jnp.array([-1.0, -0.5, -1.5]), "a": 0.7}
    s = jax.nn.softplus(p["rho"])
    damp = jnp.exp(-(s**2) / 2)
    exact = {
        "mu": -jnp.sin(p["mu"]) * damp + p["a"],
        "rho": -s * jnp.cos(p["mu"]) * damp * jax.nn.sigmoid(p["rho"]),
        "a": jnp.sum(p["mu"]),
    }
    return f, dist_fn, p, exact


_MU0 = jnp.array([0.3, -1.0, 2.0])


def _taylor(x):
    """A user's control variate for _cos_problem: f's second-order expansion about μ₀."""
    d = x - _MU0
    return jnp.sum(-jnp.sin(_MU0) * d - 0.5 * jnp.cos(_MU0) * d**2 + 0.7 * x)


def _taylor_mean(q):
    """E[_taylor(x)] under q = Normal(m, s).to_event(1), in closed form."""
    m, s = q.base_dist.loc, q.base_dist.scale
    d = m - _MU0
    return jnp.sum(-jnp.sin(_MU0) * d - 0.5 * jnp.cos(_MU0) * (d**2 + s**2) + 0.7 * m)


CONTROL_VARIATES = {
    "delta": DeltaMethod(num_samples=2000),
    "delta-fixed": DeltaMethod(coefficient=1.0),
    "user": ControlVariate(_taylor, _taylor_mean, num_samples=2000),
}


@pytest.mark.parametrize("name", sorted(CONTROL_VARIATES))
def test_control_variate_unbiased_and_lower_variance(name):
    # Unbiased for any β (fitted on a separate batch or fixed), and on this smooth f the
    # delta method (or a Taylor expansion of the user's own) lowers every coordinate's variance.
    f, dist_fn, p, exact = _cos_problem()
    n = 20_000
    est = MeasureValued(control_variate=CONTROL_VARIATES[name])
    key = jax.random.key(3)
    # jitted (the delta method's per-sample Hessians took ~10 s more eagerly, op by op)
    g = jax.jit(lambda p, k: ex.per_sample_grads(f, dist_fn, p, k, estimator=est, num_samples=n))
    g = g(p, key)
    assert_unbiased(g, exact, k=5, bonferroni=True)
    plain = ex.per_sample_grads(f, dist_fn, p, key, estimator=MeasureValued(), num_samples=n)
    for leaf in ("mu", "rho"):
        for j in range(3):
            var_cv, se_cv = _variance_and_se(g[leaf][:, j])
            var, se = _variance_and_se(plain[leaf][:, j])
            assert var_cv + 5 * se_cv < var - 5 * se, (name, leaf, j, var_cv, var)
    # the value is the control-variate estimate of E[f], unbiased too
    E = ex.expectation(f, dist_fn, estimator=est, num_samples=n)
    values = np.asarray(
        jax.jit(jax.vmap(lambda k: E(p, k)))(jax.random.split(jax.random.key(4), 4)), np.float64
    )
    s = jax.nn.softplus(p["rho"])
    exact_value = float(jnp.sum(jnp.cos(p["mu"]) * jnp.exp(-(s**2) / 2)) + 0.7 * jnp.sum(p["mu"]))
    se_value = values.std(ddof=1) / math.sqrt(values.size)
    assert abs(values.mean() - exact_value) < 5 * max(se_value, 1e-6), (values, exact_value)


def test_control_variate_on_a_quadratic_removes_the_variance():
    # f quadratic: the delta method's h equals f, so with β = 1 every pair difference of
    # f − h is 0 and the estimate is the exact gradient, sample by sample.
    def f(p, x):
        return jnp.sum((x - jnp.array([1.0, -2.0])) ** 2)

    p = {"mu": jnp.array([0.5, 0.2]), "sigma": jnp.array([1.5, 0.7])}
    est = MeasureValued(control_variate=DeltaMethod(coefficient=1.0))
    g = ex.per_sample_grads(
        f,
        lambda p: dist.Normal(p["mu"], p["sigma"]).to_event(1),
        p,
        jax.random.key(0),
        estimator=est,
        num_samples=64,
    )
    exact = {"mu": 2 * (p["mu"] - jnp.array([1.0, -2.0])), "sigma": 2 * p["sigma"]}
    for leaf in p:
        np.testing.assert_allclose(g[leaf], np.broadcast_to(exact[leaf], (64, 2)), rtol=1e-4)


def test_control_variate_evaluations_and_errors():
    normal = dist.Normal(jnp.zeros(3), 1.0).to_event(1)
    per_sample = 1 + 2 * 2 * 3
    assert (
        MeasureValued(control_variate=DeltaMethod(coefficient=1.0)).evaluations(10, normal)
        == 10 * per_sample
    )
    # the separate batch that fits β: at least 128 samples, at the same cost per sample
    assert MeasureValued(control_variate=DeltaMethod()).evaluations(10, normal) == (
        (10 + 128) * per_sample
    )
    with pytest.raises(TypeError, match=r"control_variate=.*DeltaMethod"):
        MeasureValued(control_variate=lambda x: x)


def test_second_derivatives_are_refused():
    """The surrogate is linear in the distribution's parameters: its Hessian estimates nothing,
    so jax.hessian raises (it returned plausible numbers), while the gradient is unchanged."""
    E = ex.expectation(
        lambda p, x: jnp.abs(x - 1.0),
        lambda p: dist.Normal(p["mu"], p["sigma"]),
        estimator=ex.MeasureValued(coupling=True),
        num_samples=16,
    )
    p = {"mu": jnp.array(0.5), "sigma": jnp.array(1.0)}
    assert all(np.isfinite(v) for v in jax.tree_util.tree_leaves(jax.grad(E)(p, jax.random.key(0))))
    with pytest.raises(ValueError, match="MeasureValued gives an unbiased first derivative only"):
        jax.hessian(E)(p, jax.random.key(0))
