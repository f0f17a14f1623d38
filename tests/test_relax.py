"""REBAR and RELAX: unbiasedness by enumeration, variance training, and the variance ordering."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased

import expectax as ex
from expectax.estimators.relax import REBAR, RELAX, fit_control_variate, variance_gradient
from expectax.problems import get_problem


def grad_estimates(prob, est, num_samples, repeats, seed=0, params=None):
    params = prob.params if params is None else params
    keys = jax.random.split(jax.random.key(seed), repeats)

    @jax.jit
    def run(est):
        E = ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=num_samples)
        return jax.vmap(jax.grad(E), in_axes=(None, 0))(params, keys)

    return run(est)


def random_relax(num_latents):
    """RELAX with a non-zero network (create() zeroes the last layer), to test that path."""
    est = RELAX.create(jax.random.key(1), num_latents=num_latents, hidden=(8,))
    net = tuple(
        (w + 0.5 * jax.random.normal(jax.random.key(i), w.shape), b + 0.1)
        for i, (w, b) in enumerate(est.net)
    )
    return RELAX(log_temperature=jnp.asarray(-1.0), eta=jnp.asarray(0.7), net=net)


@pytest.mark.parametrize(
    "name", ["bernoulli-toy-0.45", "bernoulli-toy-0.499", "bernoulli-nonlinear"]
)
def test_unbiased_against_enumeration(name):
    kwargs = {"logit": -0.4} if name.startswith("bernoulli-toy") else {}
    prob = get_problem(name, **kwargs)
    exact = prob.exact_grad(prob.params)
    d = int(np.size(prob.params.get("logits", prob.params.get("logit"))))
    for est in (REBAR(), random_relax(d)):
        grads = grad_estimates(prob, est, num_samples=2, repeats=4000)
        assert_unbiased(grads, exact, k=5, bonferroni=True, name=f"{name} {est.name}")


def test_variance_ordering_on_the_0499_toy():
    """The REBAR/RELAX papers' toy, t = 0.499, at σ(φ) ≈ 0.4; variances of 20000 estimates."""
    prob = get_problem("bernoulli-toy-0.499", logit=-0.4)
    p = prob.params

    def var(est, n):
        return float(np.var(np.asarray(grad_estimates(prob, est, n, 20000, seed=2)["logit"])))

    reinforce_1 = var(ex.ScoreFunction(), 1)
    reinforce_3 = var(ex.ScoreFunction(), 3)  # same number of f evaluations as REBAR, N = 1
    untrained = var(REBAR(), 1)
    rebar = fit_control_variate(REBAR(), prob.f, prob.dist_fn, p, jax.random.key(5), 1, steps=500)
    relax = fit_control_variate(
        RELAX.create(jax.random.key(0), 1), prob.f, prob.dist_fn, p, jax.random.key(5), 1, steps=500
    )
    trained_rebar, trained_relax = var(rebar, 1), var(relax, 1)
    table = dict(
        reinforce_1=reinforce_1,
        reinforce_3=reinforce_3,
        rebar_default=untrained,
        rebar_trained=trained_rebar,
        relax_trained=trained_relax,
    )
    # untrained REBAR: several times worse than REINFORCE at equal evaluations (≈ 4×)
    assert untrained > 3 * reinforce_3, table
    # training lowers REBAR's variance to the best REBAR can do here, which is REINFORCE's at
    # equal samples (η → 0; see test_best_rebar_on_the_0499_toy_is_reinforce): exactly, by
    # quadrature at the trained (η, λ), within 2 % of it after 500 steps ...
    assert trained_rebar < 0.8 * untrained, table
    lam, eta = float(jnp.exp(rebar.log_temperature)), float(rebar.eta)
    exact_trained = rebar_exact_moments(-0.4, 0.499, eta, lam)[1]
    exact_reinforce = rebar_exact_moments(-0.4, 0.499, 0.0, 1.0)[1]
    assert 1 - 1e-4 < exact_trained / exact_reinforce < 1.02, (eta, lam, table)
    # ... and trained RELAX beats REINFORCE at equal evaluations by far (≈ 100×)
    assert trained_relax < 0.1 * reinforce_3, table


def test_variance_gradient_matches_finite_differences():
    prob = get_problem("bernoulli-nonlinear")
    key = jax.random.key(3)
    est = RELAX(log_temperature=jnp.asarray(-0.5), eta=jnp.asarray(0.8), net=random_relax(5).net)
    grads, g, sq = jax.jit(variance_gradient, static_argnums=(1, 2, 5))(
        est, prob.f, prob.dist_fn, prob.params, key, 4
    )
    assert isinstance(grads, RELAX)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(prob.params)
    np.testing.assert_allclose(
        sq, sum(np.sum(np.square(v)) for v in jax.tree_util.tree_leaves(g)), rtol=1e-5
    )

    @jax.jit
    def sq_at(eta, log_t):
        e = RELAX(log_temperature=log_t, eta=eta, net=est.net)
        return variance_gradient(e, prob.f, prob.dist_fn, prob.params, key, 4)[2]

    h = 1e-2
    for field, fn in (
        ("eta", lambda x: sq_at(x, est.log_temperature)),
        ("log_temperature", lambda x: sq_at(est.eta, x)),
    ):
        x0 = getattr(est, field)
        fd = (fn(x0 + h) - fn(x0 - h)) / (2 * h)
        np.testing.assert_allclose(getattr(grads, field), fd, rtol=2e-2, atol=1e-5)


def test_defaults_work_and_count_evaluations(strict_ranks):
    assert REBAR().evaluations(4) == 12 and RELAX().evaluations(2) == 6
    prob = get_problem("bernoulli-toy-0.45")
    for est in (REBAR(), RELAX()):
        E = ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=4)
        assert np.isfinite(float(jax.jit(jax.grad(E))(prob.params, jax.random.key(0))["logit"]))
    psg = ex.per_sample_grads(
        prob.f, prob.dist_fn, prob.params, jax.random.key(1), estimator=REBAR(), num_samples=5
    )
    E = ex.expectation(prob.f, prob.dist_fn, estimator=REBAR(), num_samples=5)
    np.testing.assert_allclose(
        psg["logit"].mean(0), jax.grad(E)(prob.params, jax.random.key(1))["logit"], rtol=1e-5
    )


def test_errors():
    cat = lambda p: dist.Categorical(logits=p)  # noqa: E731
    for est in (REBAR(), RELAX()):
        E = ex.expectation(lambda p, x: x, cat, estimator=est, num_samples=2)
        with pytest.raises(ValueError, match="serves Bernoulli.*DisARM"):
            E(jnp.zeros(3), jax.random.key(0))
    prob = get_problem("bernoulli-nonlinear")
    E = ex.expectation(
        prob.f, prob.dist_fn, estimator=RELAX.create(jax.random.key(0), 3), num_samples=2
    )
    with pytest.raises(ValueError, match=r"RELAX.create\(key, num_latents=5\)"):
        E(prob.params, jax.random.key(0))
    with pytest.raises(ValueError, match="num_latents must be"):
        RELAX.create(jax.random.key(0), 0)
    with pytest.raises(TypeError, match="trains REBAR or RELAX"):
        fit_control_variate(
            ex.ScoreFunction(), prob.f, prob.dist_fn, prob.params, jax.random.key(0), 1
        )


# ------------------------------------------------- an independent reference for one Bernoulli


def rebar_reference(u, v, phi, t, eta, lam):
    """REBAR's ĝ for E[(b − t)²], b ~ Bern(σ(φ)), from (u, v), written out by hand (numpy).

    z = φ + logit(u), b = 1[z > 0]; z̃ = φ + logit(ũ) with ũ uniform on b's side of u' = 1 − θ
    (b = 1: ũ = 1 − θ + vθ; b = 0: ũ = v(1 − θ)), differentiated at fixed v;
    ĝ = (f(b) − η f(σ(z̃/λ)))(b − θ) + η ∂φ f(σ(z/λ)) − η ∂φ f(σ(z̃/λ)).
    """
    theta = 1.0 / (1.0 + np.exp(-phi))
    z = phi + np.log(u) - np.log1p(-u)
    b = (z > 0).astype(float)
    ut = np.where(b > 0.5, 1 - theta + v * theta, v * (1 - theta))
    dut = np.where(b > 0.5, v - 1, -v) * theta * (1 - theta)  # ∂ũ/∂φ at fixed v
    zt = phi + np.log(ut) - np.log1p(-ut)
    dzt = 1 + dut / (ut * (1 - ut))
    s, st = 1 / (1 + np.exp(-z / lam)), 1 / (1 + np.exp(-zt / lam))

    def f(x):
        return (x - t) ** 2

    def df_dphi(x, dz):
        return 2 * (x - t) * x * (1 - x) / lam * dz

    return (f(b) - eta * f(st)) * (b - theta) + eta * (df_dphi(s, 1.0) - df_dphi(st, dzt))


def rebar_exact_moments(phi, t, eta, lam, n=120):
    """Mean and variance of one REBAR estimate by Gauss-Legendre quadrature over (u, v).

    u's interval is split at 1 − θ, where b jumps, so the integrand is smooth on each piece.
    """
    theta = 1.0 / (1.0 + np.exp(-phi))
    x, w = np.polynomial.legendre.leggauss(n)

    def nodes(a, b):
        return a + (b - a) * (x + 1) / 2, w * (b - a) / 2

    (u0, w0), (u1, w1), (v, wv) = nodes(0, 1 - theta), nodes(1 - theta, 1), nodes(0, 1)
    uu, vv = np.meshgrid(np.concatenate([u0, u1]), v, indexing="ij")
    weights = np.outer(np.concatenate([w0, w1]), wv)
    g = rebar_reference(uu, vv, phi, t, eta, lam)
    mean = np.sum(weights * g)
    return mean, np.sum(weights * g * g) - mean**2


def test_rebar_variance_matches_the_reference():
    """REBAR's mean and variance on the t = 0.499 toy match an independent quadrature.

    On a grid of (η, λ): mean within 5 SE of the exact gradient, sample variance of 20000
    estimates within 5 SE (of the sample variance, from the fourth moment) of the quadrature.
    """
    prob = get_problem("bernoulli-toy-0.499", logit=-0.4)
    phi, exact = -0.4, float(prob.exact_grad(prob.params)["logit"])
    keys = jax.random.split(jax.random.key(11), 20000)

    @jax.jit
    def estimates(est):
        E = ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=1)
        return jax.vmap(jax.grad(E), in_axes=(None, 0))(prob.params, keys)["logit"]

    for eta in (0.0, 0.5, 1.0, 2.0):
        for lam in (0.1, 0.5, 1.0):
            q_mean, q_var = rebar_exact_moments(phi, 0.499, eta, lam)
            np.testing.assert_allclose(q_mean, exact, rtol=1e-6)  # the reference is unbiased
            est = REBAR(log_temperature=jnp.log(lam), eta=jnp.asarray(eta))
            g = np.asarray(estimates(est), dtype=np.float64)
            n, var = g.size, g.var()
            se_var = np.sqrt((np.mean((g - g.mean()) ** 4) - var**2) / n)
            label = f"η={eta}, λ={lam}: var {var:.4e} vs exact {q_var:.4e} (SE {se_var:.1e})"
            assert abs(g.mean() - exact) < 5 * g.std() / np.sqrt(n), label
            assert abs(var - q_var) < 5 * se_var, label


def test_best_rebar_on_the_0499_toy_is_reinforce():
    """On one Bernoulli, E[REBAR's control-variate terms | b] = −η f(σ(0/λ)) ∇log p(b).

    So one REBAR sample is REINFORCE with the baseline η f(½) (for any λ) plus noise that is
    uncorrelated with it, and f(½) = (½ − 0.499)² = 1e−6 here: no (η, λ) beats REINFORCE.
    """
    phi, t = -0.4, 0.499
    reinforce = rebar_exact_moments(phi, t, 0.0, 1.0)[1]
    theta = 1 / (1 + np.exp(-phi))
    baseline = (0.5 - t) ** 2
    for lam in (0.05, 0.1, 0.3, 1.0, 3.0, 10.0):
        for eta in (-0.5, -0.1, 0.05, 0.2, 1.0, 3.0):
            var = rebar_exact_moments(phi, t, eta, lam)[1]
            # Var = Var[(f(b) − η f(½)) s(b)] + η² E Var(B | b) ≥ the first term
            f1, f0 = (1 - t) ** 2 - eta * baseline, t**2 - eta * baseline
            with_baseline = (
                theta
                * (1 - theta)
                * ((1 - theta) * f1**2 + theta * f0**2 - theta * (1 - theta) * (f1 - f0) ** 2)
            )
            assert var >= with_baseline * (1 - 1e-9), (eta, lam, var, with_baseline)
            assert var >= reinforce * (1 - 1e-4), (eta, lam, var, reinforce)
