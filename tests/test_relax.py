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
    # training lowers REBAR's variance (to about REINFORCE's at equal samples: η → 0) ...
    assert trained_rebar < 0.8 * untrained, table
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
