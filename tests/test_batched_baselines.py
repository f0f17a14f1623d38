"""The default baseline of many discrete sites computed at once.

``WeightedLeaveOneOut``'s weights and baselines of all sites of one kind (Bernoulli or
Categorical from logits or probabilities, Poisson, unweighted) are computed on their
particles' values side by side (``programs._weighted_loo_sites``): a chain of T sites then
costs a handful of kernels, not T handfuls (``benchmarks/chain_compile.py``). These tests check
that it gives each site its own baseline (equal to computing it site by site), that the
gradient stays exact in expectation with every kind in one guide, and that a site whose
log-density has a batch axis outside any plate keeps its weights computed on its own.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased, tree_allclose

from expectax import infer, programs

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


SITES = ["b0", "b1", "b2", "bp", "k0", "k1", "kp"]
SUPPORT = [(0, 1)] * 4 + [(0, 1, 2)] * 3


VALUES = jnp.array(list(itertools.product(*SUPPORT)))  # (432, 7): every joint value


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


def _gradients(k, m=model, g=guide):
    elbo = infer.TraceGraph_ELBO(num_particles=k)
    grad = jax.grad(lambda p, key: elbo.loss(key, p, m, g))
    return jax.jit(jax.vmap(grad, in_axes=(None, 0)))


def _site_by_site(monkeypatch):
    """``_weighted_loo_sites`` called once per site: the computation before batching."""
    batched = programs._weighted_loo_sites

    def one_at_a_time(kind, group, share):
        out = {}
        for g in group:
            out |= batched(kind, [g], share)
        return out

    monkeypatch.setattr(programs, "_weighted_loo_sites", one_at_a_time)


def _groups(monkeypatch, m=model, g=guide, params=PARAMS):
    seen = []
    batched = programs._weighted_loo_sites

    def spy(kind, group, share):
        seen.append((kind, sorted(x[0] for x in group)))
        return batched(kind, group, share)

    monkeypatch.setattr(programs, "_weighted_loo_sites", spy)
    infer.TraceGraph_ELBO(num_particles=3).loss(jax.random.key(0), params, m, g)
    return dict(seen)


def test_sites_of_one_kind_are_computed_together(monkeypatch):
    assert _groups(monkeypatch) == {
        "bernoulli": ["bp"],
        "bernoulli_logits": ["b0", "b1", "b2"],
        "categorical": ["kp"],
        "categorical_logits": ["k0", "k1"],
    }


def test_together_equals_site_by_site(monkeypatch):
    keys = jax.random.split(jax.random.key(5), 16)
    together = _gradients(4)(PARAMS, keys)
    _site_by_site(monkeypatch)
    alone = _gradients(4)(PARAMS, keys)
    assert tree_allclose(together, alone, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(together["c"]).mean()) > 0


def test_gradient_with_every_kind_is_exact_in_expectation():
    grads = _gradients(4)(PARAMS, jax.random.split(jax.random.key(8), 4000))
    assert_unbiased(grads, jax.grad(exact_loss)(PARAMS), k=5, bonferroni=True)


# sites with plates, a Poisson, and a Bernoulli with a batch axis in no plate (of size 1)
def plated_model(x):
    r = numpyro.sample("r", dist.Poisson(3.0))
    s = numpyro.sample("s", dist.Poisson(2.0))
    with numpyro.plate("data", 4):
        z = numpyro.sample("z", dist.Bernoulli(probs=0.4))
        u = numpyro.sample("u", dist.Categorical(logits=jnp.zeros(3)))
        loose = numpyro.sample("loose", dist.Bernoulli(probs=0.5))
        numpyro.sample("x", dist.Normal(z + u + 0.1 * (r + s) + loose, 1.0), obs=x)


def plated_guide(x):
    lam = numpyro.param("lam", jnp.array([2.0, 1.5]), constraint=dist.constraints.positive)
    numpyro.sample("r", dist.Poisson(lam[0]))
    numpyro.sample("s", dist.Poisson(lam[1]))
    with numpyro.plate("data", 4):
        numpyro.sample("z", dist.Bernoulli(logits=numpyro.param("zl", jnp.zeros(4))))
        numpyro.sample("u", dist.Categorical(logits=numpyro.param("ul", jnp.zeros((4, 3)))))
        numpyro.sample("loose", dist.Bernoulli(logits=numpyro.param("l", jnp.zeros(4))[None]))


X = jnp.array([0.5, 1.5, 2.5, 3.5])
PLATED = {
    "lam": jnp.array([2.0, 1.5]),
    "l": jnp.array([0.3, -0.2, 0.0, 0.5]),
    "zl": jnp.array([0.1, -0.4, 0.8, 0.0]),
    "ul": jnp.array([[0.1, 0.2, -0.3]] * 4),
}


def test_plates_poisson_and_a_batch_axis_outside_plates(monkeypatch):
    m, g = lambda: plated_model(X), lambda: plated_guide(X)
    groups = _groups(monkeypatch, m, g, PLATED)
    # "loose" has an axis in no plate: its weights are reduced over it on their own ("given")
    assert groups == {
        "bernoulli_logits": ["z"],
        "categorical_logits": ["u"],
        "poisson": ["r", "s"],
        "given": ["loose"],
    }
    monkeypatch.undo()
    keys = jax.random.split(jax.random.key(2), 8)
    together = _gradients(4, m, g)(PLATED, keys)
    _site_by_site(monkeypatch)
    alone = _gradients(4, m, g)(PLATED, keys)
    assert tree_allclose(together, alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2])
def test_few_particles(k):
    # one particle: the baseline is 0; two: each particle's baseline is the other's cost
    grads = _gradients(k)(PARAMS, jax.random.split(jax.random.key(9), 4))
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(grads))
