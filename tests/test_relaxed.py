"""Relaxed estimators: Gumbel-softmax / binary Concrete and straight-through (biased by design)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import expectax as ex
from expectax.estimators.relaxed import (
    GumbelSoftmax,
    StraightThrough,
    binary_concrete,
    gumbel_softmax,
    temperature_schedule,
)
from expectax.problems import get_problem


def test_binary_concrete_is_two_class_gumbel_softmax(strict_ranks):
    key1 = jax.random.key(0)
    logits = jnp.broadcast_to(jnp.linspace(-2.0, 2.0, 7), (100, 7))
    g = jax.random.gumbel(key1, (100, 7, 2))
    for tau in (0.1, 0.5, 2.0):
        two_class = gumbel_softmax(jnp.stack([logits, jnp.zeros_like(logits)], -1), g, tau)
        binary = binary_concrete(logits, g[..., 0] - g[..., 1], tau)
        np.testing.assert_allclose(two_class[..., 0], binary, rtol=1e-5, atol=1e-6)


def test_gumbel_softmax_on_bernoulli_feeds_f_values_in_unit_interval():
    seen = []

    def f(p, z):
        seen.append(z)
        return z * (1.0 - z)

    E = ex.expectation(
        f, lambda p: dist.Bernoulli(logits=p), estimator=GumbelSoftmax(0.5), num_samples=500
    )
    value = E(jnp.array(0.3), jax.random.key(1))
    assert 0.0 < float(value) < 0.25  # values strictly inside (0, 1), not exact samples
    assert GumbelSoftmax.unbiased is False and StraightThrough.unbiased is False


@pytest.mark.parametrize("est", [StraightThrough(), GumbelSoftmax(0.5, straight_through=True)])
def test_straight_through_forward_values_are_exact_samples(est, strict_ranks):
    prob = get_problem("bernoulli-nonlinear")
    E = ex.expectation(
        lambda p, b: jnp.sum(b * (1.0 - b)), prob.dist_fn, estimator=est, num_samples=256
    )
    assert float(E(prob.params, jax.random.key(0))) == 0.0
    cat = get_problem("categorical-nonlinear")
    E = ex.expectation(lambda p, y: jnp.sum(y**2), cat.dist_fn, estimator=est, num_samples=256)
    np.testing.assert_allclose(E(cat.params, jax.random.key(0)), 1.0, rtol=1e-6)
    # the mean of the hard samples is the probability (forward values are exact samples)
    E = ex.expectation(lambda p, b: b[0], prob.dist_fn, estimator=est, num_samples=20000)
    p0 = jax.nn.sigmoid(prob.params["logits"][0])
    se = np.sqrt(p0 * (1 - p0) / 20000)
    assert abs(float(E(prob.params, jax.random.key(2))) - float(p0)) < 5 * se


def _bias_fn(prob, repeats=3000, n=8):
    """One compilation for all temperatures: the estimator is a pytree argument."""
    exact = np.asarray(prob.exact_grad(prob.params)["logits"])
    keys = jax.random.split(jax.random.key(3), repeats)

    @jax.jit
    def grads(est):
        E = ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=n)
        return jax.vmap(jax.grad(E), in_axes=(None, 0))(prob.params, keys)["logits"]

    def bias(est):
        g = np.asarray(grads(est))
        se = g.std(0) / np.sqrt(repeats)
        return np.linalg.norm(g.mean(0) - exact), np.linalg.norm(se)

    return bias


@pytest.mark.parametrize("name", ["bernoulli-nonlinear", "categorical-nonlinear"])
def test_gumbel_softmax_bias_shrinks_with_temperature(name):
    bias = _bias_fn(get_problem(name))
    biases = {tau: bias(GumbelSoftmax(jnp.asarray(tau))) for tau in (2.0, 0.5, 0.1)}
    # the relaxation is biased at high temperature, and the bias falls as τ falls
    (b2, se2), (b05, se05), (b01, se01) = biases[2.0], biases[0.5], biases[0.1]
    assert b2 > 5 * se2, biases
    assert b2 - b05 > 4 * np.hypot(se2, se05), biases
    assert b05 - b01 > 4 * np.hypot(se05, se01) or b01 < 4 * se01, biases


def test_temperature_schedule_and_traced_temperature():
    sched = temperature_schedule(1.0, 0.5, 1e-3)
    np.testing.assert_allclose(sched(0), 1.0)
    np.testing.assert_allclose(sched(100), np.exp(-0.1), rtol=1e-6)
    np.testing.assert_allclose(sched(10_000), 0.5)
    prob = get_problem("bernoulli-toy-0.45")

    @jax.jit
    def grad_at(step, key):
        est = GumbelSoftmax(temperature=sched(step))
        E = ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=16)
        return jax.grad(E)(prob.params, key)

    assert np.isfinite(float(grad_at(3, jax.random.key(0))["logit"]))
    with pytest.raises(ValueError, match="decay_rate must be"):
        temperature_schedule(1.0, 0.5, -1.0)
    with pytest.raises(ValueError, match="min_value must be > 0"):
        temperature_schedule(1.0, 0.0)


def test_relaxed_errors():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        GumbelSoftmax(temperature=0.0)
    for est in (GumbelSoftmax(), StraightThrough()):
        E = ex.expectation(
            lambda p, x: x, lambda p: dist.Normal(p, 1.0), estimator=est, num_samples=4
        )
        with pytest.raises(ValueError, match="Categorical.*ScoreFunction"):
            E(jnp.array(0.0), jax.random.key(0))
