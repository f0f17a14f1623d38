"""ARM and DisARM (Bernoulli, and DisARM's stick-breaking Categorical) against enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased

import expectax as ex
from expectax.estimators.arm import ARM, DisARM
from expectax.problems import get_problem

REPEATS = 4000


def grad_estimates(prob, est, num_samples, repeats=REPEATS, seed=0):
    E = ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=num_samples)
    keys = jax.random.split(jax.random.key(seed), repeats)
    return jax.jit(jax.vmap(jax.grad(E), in_axes=(None, 0)))(prob.params, keys)


CASES = [
    ("bernoulli-toy-0.45", ARM()),
    ("bernoulli-toy-0.49", ARM()),
    ("bernoulli-toy-0.499", ARM()),
    ("bernoulli-toy-0.45", DisARM()),
    ("bernoulli-toy-0.49", DisARM()),
    ("bernoulli-toy-0.499", DisARM()),
    ("bernoulli-nonlinear", ARM()),
    ("bernoulli-nonlinear", DisARM()),
    ("categorical-nonlinear", DisARM()),
]


@pytest.mark.parametrize(("name", "est"), CASES, ids=[f"{n}-{e.name}" for n, e in CASES])
def test_unbiased_against_enumeration(name, est):
    kwargs = {"logit": -0.4} if name.startswith("bernoulli-toy") else {}
    prob = get_problem(name, **kwargs)
    grads = grad_estimates(prob, est, num_samples=4)
    # includes the ∇θ f term (params "a", "c", "v" enter f only)
    assert_unbiased(grads, prob.exact_grad(prob.params), k=5, bonferroni=True, name=name)


@pytest.mark.parametrize("name", ["bernoulli-toy-0.499", "bernoulli-nonlinear"])
def test_disarm_variance_not_above_arm(name):
    kwargs = {"logit": -0.4} if name.startswith("bernoulli-toy") else {}
    prob = get_problem(name, **kwargs)
    var = {}
    for est in (ARM(), DisARM()):
        g = grad_estimates(prob, est, num_samples=1, repeats=20000, seed=1)[
            "logits" if "logits" in prob.params else "logit"
        ]
        var[est.name] = float(np.sum(np.var(np.asarray(g), axis=0)))
    # 20000 single-pair estimates: the variance estimates are good to a few percent
    assert var["DisARM"] < 0.9 * var["ARM"], var


def test_disarm_is_exact_when_k_equals_two_categories_at_half():
    # at logit 0 the DisARM pair is (b, 1 − b) and the estimate is deterministic and exact
    prob = get_problem("bernoulli-toy-0.45", logit=0.0)
    g = grad_estimates(prob, DisARM(), num_samples=1, repeats=50)["logit"]
    np.testing.assert_allclose(g, prob.exact_grad(prob.params)["logit"], rtol=1e-5)


@pytest.mark.parametrize("est", [ARM(), DisARM()])
def test_counts_pairs_and_per_sample_grads(est, strict_ranks):
    assert est.evaluations(8) == 16
    prob = get_problem("bernoulli-nonlinear")
    key = jax.random.key(7)
    psg = ex.per_sample_grads(prob.f, prob.dist_fn, prob.params, key, estimator=est, num_samples=6)
    E = ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=6)
    g = jax.jit(jax.grad(E))(prob.params, key)
    for k in g:
        assert psg[k].shape == (6, *np.shape(g[k]))
        np.testing.assert_allclose(psg[k].mean(0), g[k], rtol=1e-5, atol=1e-6)


def test_independent_wrapper_and_batch():
    f = lambda p, b: jnp.sum(jnp.sin(jnp.arange(1.0, 4.0) * b))  # noqa: E731
    E = ex.expectation(
        f, lambda p: dist.Bernoulli(logits=p).to_event(1), estimator=DisARM(), num_samples=3
    )
    g = jax.jit(jax.grad(E))(jnp.array([0.2, -0.3, 0.5]), jax.random.key(0))
    assert g.shape == (3,) and np.all(np.isfinite(g))


def test_errors_name_an_estimator_that_can():
    cat = lambda p: dist.Categorical(logits=p)  # noqa: E731
    E = ex.expectation(lambda p, x: x, cat, estimator=ARM(), num_samples=2)
    with pytest.raises(ValueError, match="ARM serves Bernoulli.*DisARM"):
        E(jnp.zeros(3), jax.random.key(0))
    for est in (ARM(), DisARM()):
        E = ex.expectation(
            lambda p, x: x, lambda p: dist.Normal(p, 1.0), estimator=est, num_samples=2
        )
        with pytest.raises(ValueError, match="LeaveOneOut"):
            E(jnp.array(0.0), jax.random.key(0))
