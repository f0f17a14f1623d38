"""The default baseline (``WeightedLeaveOneOut``) with every kind of weighted site in one guide.

Bernoulli and Categorical sites from logits and from probabilities each get their own squared
natural score as weights (``baselines.natural_score_weights``); the gradient must stay exact
in expectation with all of them side by side, checked against enumeration of the 432 joint
values (fails with a baseline that uses the particle's own cost).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from helpers import assert_unbiased, estimates

from expectax import infer

PARAMS = {
    "a": jnp.array([0.3, -0.6, 1.1]),  # three Bernoulli(logits) sites
    "p": jnp.array(0.35),  # a Bernoulli(probs) site
    "c": jnp.array([[0.2, -0.5, 0.9], [-1.0, 0.4, 0.1]]),  # two Categorical(logits) sites
    "q": jnp.array([0.5, 0.3, 0.2]),  # a Categorical(probs) site
}
W = jnp.array([0.7, -1.3, 0.4])  # the model's weights of the states


def model():
    total = 0.0
    for i in range(3):
        z = numpyro.sample(f"b{i}", dist.Bernoulli(probs=0.3 + 0.2 * i))
        total = total + W[i] * z
    y = numpyro.sample("bp", dist.Bernoulli(probs=0.6))
    for j in range(2):
        k = numpyro.sample(f"k{j}", dist.Categorical(logits=jnp.array([0.0, 0.5, -0.5])))
        total = total + W[k] * (1.0 + y)
    m = numpyro.sample("kp", dist.Categorical(probs=jnp.array([0.2, 0.2, 0.6])))
    numpyro.sample("obs", dist.Normal(total + W[m], 1.0), obs=0.8)


def guide():
    a = numpyro.param("a", jnp.zeros(3))
    for i in range(3):
        numpyro.sample(f"b{i}", dist.Bernoulli(logits=a[i]))
    numpyro.sample("bp", dist.Bernoulli(probs=numpyro.param("p", 0.5)))
    c = numpyro.param("c", jnp.zeros((2, 3)))
    for j in range(2):
        numpyro.sample(f"k{j}", dist.Categorical(logits=c[j]))
    q = numpyro.param("q", jnp.ones(3) / 3)
    numpyro.sample("kp", dist.Categorical(probs=q / q.sum()))


# every joint value of b0, b1, b2, bp (two values each) and k0, k1, kp (three each): (432, 7)
VALUES = jnp.array(list(itertools.product(*([(0, 1)] * 4 + [(0, 1, 2)] * 3))))


def exact_loss(params):
    """−ELBO summed over the 432 joint values of the seven sites (the model and guide above,
    written out on every value at once)."""
    b, bp, k, kp = VALUES[:, :3], VALUES[:, 3], VALUES[:, 4:6], VALUES[:, 6]
    q = params["q"] / params["q"].sum()
    log_q = (
        jnp.sum(dist.Bernoulli(logits=params["a"]).log_prob(b), axis=1)
        + dist.Bernoulli(probs=params["p"]).log_prob(bp)
        + jnp.sum(jax.nn.log_softmax(params["c"])[jnp.arange(2), k], axis=1)
        + jnp.log(q[kp])
    )
    total = jnp.sum(W * b, axis=1) + jnp.sum(W[k], axis=1) * (1.0 + bp)
    log_p = (
        jnp.sum(dist.Bernoulli(probs=0.3 + 0.2 * jnp.arange(3)).log_prob(b), axis=1)
        + dist.Bernoulli(probs=0.6).log_prob(bp)
        + jnp.sum(jax.nn.log_softmax(jnp.array([0.0, 0.5, -0.5]))[k], axis=1)
        + jnp.log(jnp.array([0.2, 0.2, 0.6])[kp])
        + dist.Normal(total + W[kp], 1.0).log_prob(0.8)
    )
    return jnp.sum(jnp.exp(log_q) * (log_q - log_p))


def test_gradient_with_every_kind_is_exact_in_expectation():
    elbo = infer.TraceGraph_ELBO(num_particles=4)
    grad = jax.grad(lambda p, key: elbo.loss(key, p, model, guide))
    grads = estimates(grad, PARAMS, jax.random.key(8), 4000)
    assert_unbiased(grads, jax.grad(exact_loss)(PARAMS), k=5, bonferroni=True)
