"""VIMCO, the unordered set estimator and the Rao-Blackwellised score function, by enumeration."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased

import expectax as ex
from expectax.estimators.multi_sample import VIMCO, SumAndSample, UnorderedSet
from expectax.problems import get_problem


def run_estimates(f, dist_fn, params, est, num_samples, repeats, seed=0):
    E = ex.expectation(f, dist_fn, estimator=est, num_samples=num_samples)
    keys = jax.random.split(jax.random.key(seed), repeats)
    return jax.jit(jax.vmap(jax.value_and_grad(E), in_axes=(None, 0)))(params, keys)


# --------------------------------------------------------------------------- VIMCO

D, K = 2, 3


def log_weight(params, x):
    x = jnp.asarray(x, params["a"].dtype)
    return jnp.dot(params["a"], x) - 0.5 * jnp.sum((x - 0.3) ** 2) + jnp.sin(params["a"][0])


def q_fn(params):
    return dist.Bernoulli(logits=params["logits"]).to_event(1)


def exact_bound(params):
    """E over K-tuples of log (1/K) Σ_k exp f(x_k), by enumerating all (2^D)^K tuples."""
    states = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=D)))
    lp = states * jax.nn.log_sigmoid(params["logits"]) + (1 - states) * jax.nn.log_sigmoid(
        -params["logits"]
    )
    lp = lp.sum(1)
    fs = jax.vmap(lambda s: log_weight(params, s))(states)
    idx = np.array(list(itertools.product(range(2**D), repeat=K)))
    bound = jax.scipy.special.logsumexp(fs[idx], axis=1) - np.log(K)
    return jnp.sum(jnp.exp(lp[idx].sum(1)) * bound)


def test_vimco_unbiased_for_the_multi_sample_bound():
    params = {"logits": jnp.array([0.4, -0.7]), "a": jnp.array([1.0, -0.5])}
    values, grads = run_estimates(log_weight, q_fn, params, VIMCO(), K, repeats=6000)
    assert_unbiased(values, exact_bound(params), k=5, name="VIMCO value")
    # the "a" gradient tests the importance-weighted ∇θ f term
    assert_unbiased(grads, jax.grad(exact_bound)(params), k=5, bonferroni=True, name="VIMCO")


def test_vimco_needs_two_samples_and_serves_categoricals():
    with pytest.raises(ValueError, match="at least 2"):
        ex.expectation(log_weight, q_fn, estimator=VIMCO(), num_samples=1)
    f = lambda p, x: jnp.cos(x.astype(jnp.float32))  # noqa: E731
    E = ex.expectation(f, lambda p: dist.Categorical(logits=p), estimator=VIMCO(), num_samples=4)
    g = jax.jit(jax.grad(E))(jnp.zeros(5), jax.random.key(0))
    assert g.shape == (5,) and np.all(np.isfinite(g))


# --------------------------------------------------------------------------- without replacement


@pytest.mark.parametrize("k", [2, 3])
def test_unordered_set_unbiased(k):
    prob = get_problem("categorical-nonlinear")
    values, grads = run_estimates(prob.f, prob.dist_fn, prob.params, UnorderedSet(), k, 4000)
    assert_unbiased(values, prob.exact_value(prob.params), k=5, name="UnorderedSet value")
    assert_unbiased(
        grads, prob.exact_grad(prob.params), k=5, bonferroni=True, name=f"UnorderedSet k={k}"
    )


def test_unordered_set_weights_sum_to_one():
    # f ≡ 1: the value is Σ_s p(s) R(S, s), the total probability of the first draw given S
    prob = get_problem("categorical-nonlinear")
    values, _ = run_estimates(lambda p, x: 1.0, prob.dist_fn, prob.params, UnorderedSet(), 4, 50)
    np.testing.assert_allclose(values, 1.0, rtol=1e-5)


def test_sum_and_sample_unbiased():
    prob = get_problem("categorical-nonlinear")
    values, grads = run_estimates(prob.f, prob.dist_fn, prob.params, SumAndSample(), 3, 4000)
    exact = prob.exact_grad(prob.params)
    assert_unbiased(values, prob.exact_value(prob.params), k=5, name="SumAndSample value")
    assert_unbiased(grads["logits"], exact["logits"], k=5, bonferroni=True)
    # v of the two summed (most probable) classes is differentiated exactly: no variance
    v = np.asarray(grads["v"], dtype=np.float64)
    random = v.std(0) > 1e-6 * np.abs(v).max()
    np.testing.assert_array_equal(random, [False, False, True, True, True])
    np.testing.assert_allclose(v[:, ~random].mean(0), np.asarray(exact["v"])[~random], rtol=1e-5)
    assert_unbiased(v[:, random], np.asarray(exact["v"])[random], k=5, bonferroni=True)


def test_sum_and_sample_is_exact_with_all_categories():
    prob = get_problem("categorical-nonlinear")
    _, grads = run_estimates(prob.f, prob.dist_fn, prob.params, SumAndSample(), 5, 4)
    exact = prob.exact_grad(prob.params)
    for name in exact:
        np.testing.assert_allclose(
            grads[name], np.broadcast_to(exact[name], grads[name].shape), rtol=1e-4, atol=1e-6
        )


def test_sum_and_sample_on_a_nearly_deterministic_categorical_is_finite_and_exact():
    """When the summed categories hold all but a float epsilon of the mass (a mixture
    assignment late in training), ``1 − p(C)`` rounds to 0 in float32: computed that way it
    made ``log q`` infinite and the gradient NaN (a DPM trained with it diverged). In log space
    the estimate stays finite; with every category but the last summed and the last one's
    probability e^-40 the estimate is exact up to that probability."""
    logits = jnp.array([30.0, 0.0, -10.0])
    values = jnp.array([1.0, -2.0, 5.0])

    def f(p, x):
        return values[x] * p["scale"]

    def dist_fn(p):
        return dist.Categorical(logits=p["logits"])

    params = {"logits": logits, "scale": jnp.array(1.5)}
    _, grads = run_estimates(f, dist_fn, params, SumAndSample(), 2, 200)

    def exact(p):
        return jnp.sum(jax.nn.softmax(p["logits"]) * values * p["scale"])

    ref = jax.grad(exact)(params)
    for name in ref:
        assert np.isfinite(np.asarray(grads[name])).all(), name
        np.testing.assert_allclose(np.asarray(grads[name]).mean(0), ref[name], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("est", [UnorderedSet(), SumAndSample()])
def test_per_sample_grads_and_errors(est, strict_ranks):
    prob = get_problem("categorical-nonlinear")
    key = jax.random.key(4)
    # jitted (eagerly, op by op, the per-sample gradients took seconds)
    psg = jax.jit(
        lambda p, k: ex.per_sample_grads(prob.f, prob.dist_fn, p, k, estimator=est, num_samples=3)
    )(prob.params, key)
    g = jax.jit(jax.grad(ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=3)))(
        prob.params, key
    )
    for name in g:
        np.testing.assert_allclose(psg[name].mean(0), g[name], rtol=1e-5, atol=1e-6)
    bern = ex.expectation(
        lambda p, x: x, lambda p: dist.Bernoulli(logits=p), estimator=est, num_samples=2
    )
    with pytest.raises(ValueError, match="single Categorical.*DisARM"):
        bern(jnp.array(0.3), jax.random.key(0))
    too_many = ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=6)
    with pytest.raises(ValueError, match="num_samples ≤ 5"):
        too_many(prob.params, key)
    batch = ex.expectation(
        lambda p, x: jnp.sum(x), lambda p: dist.Categorical(logits=p), estimator=est, num_samples=2
    )
    with pytest.raises(ValueError, match="batch_shape"):
        batch(jnp.zeros((2, 4)), key)
