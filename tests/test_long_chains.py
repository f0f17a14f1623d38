"""Long sums in the ELBO's surrogate: a Markov chain of discrete sites written as a Python loop.

Every earlier state is upstream of each later cost, so the surrogate's sums of log-densities
(and the baselines' downstream costs) have up to T terms. Where a program's sums have more
than ``programs._LONG_TOTAL`` terms in all, those of more than ``programs._CHAIN_TERMS`` terms
are one masked reduction over a stack of the terms instead of a chain of additions (linear,
not quadratic, growth of the compiled program in T: ``benchmarks/chain_compile.py``). A chain
long enough to reach ``_LONG_TOTAL`` by itself cannot be enumerated, so these tests lower
``_LONG_TOTAL`` to 0 and check that path against enumeration, against the chain of additions,
and that an infinite term stays in its own sums.
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

T = 12  # 4,096 state paths: enumerable, and longer than programs._CHAIN_TERMS
STAY = jnp.array([0.8, 0.7])  # P(z_t = z_{t-1})
MU = jnp.array([-1.0, 1.5])
OBS = jnp.array([-0.9, -1.2, 0.4, 1.8, 1.1, 1.6, -0.3, -1.4, -0.8, 0.9, 1.7, 1.2])
PARAMS = {
    "a": 0.5 * jax.random.normal(jax.random.key(7), (T,)),
    "b": jnp.array(0.8),
}


def chain_model(obs):
    z = 0
    for t in range(T):
        p1 = jnp.where(z == 1, STAY[1], 1.0 - STAY[0])
        z = numpyro.sample(f"z_{t}", dist.Bernoulli(probs=p1)).astype(jnp.int32)
        numpyro.sample(f"x_{t}", dist.Normal(MU[z], 1.0), obs=obs[t])


def chain_guide(obs):
    a = numpyro.param("a", jnp.zeros(T))
    b = numpyro.param("b", jnp.array(0.0))
    z = 0
    for t in range(T):  # structured: q(z_t | z_{t-1}), so provenance sees the whole past
        z = numpyro.sample(f"z_{t}", dist.Bernoulli(logits=a[t] + b * z)).astype(jnp.int32)


PATHS = jnp.array(list(itertools.product((0, 1), repeat=T)))  # (4096, T)
PREV = jnp.concatenate([jnp.zeros((len(PATHS), 1), PATHS.dtype), PATHS[:, :-1]], axis=1)


def exact_loss(params):
    """−ELBO summed over every state path."""
    logits = params["a"][None] + params["b"] * PREV
    log_q = jnp.sum(dist.Bernoulli(logits=logits).log_prob(PATHS), axis=1)
    p1 = jnp.where(PREV == 1, STAY[1], 1.0 - STAY[0])
    log_p = dist.Bernoulli(probs=p1).log_prob(PATHS) + dist.Normal(MU[PATHS], 1.0).log_prob(OBS)
    return -jnp.sum(jnp.exp(log_q) * (jnp.sum(log_p, axis=1) - log_q))


@pytest.fixture
def long_sums(monkeypatch):
    """Every sum of more than ``_CHAIN_TERMS`` terms a masked reduction, however few in all."""
    monkeypatch.setattr(programs, "_LONG_TOTAL", 0)


def _gradients(k):
    elbo = infer.TraceGraph_ELBO(num_particles=k)
    grad = jax.grad(lambda p, key: elbo.loss(key, p, chain_model, chain_guide, OBS))
    return jax.jit(jax.vmap(grad, in_axes=(None, 0)))


def _spy_on_long_sums(monkeypatch):
    seen = []

    def spy(wanted):
        out = programs_long_sums(wanted)
        seen.extend(out)
        return out

    programs_long_sums = programs._long_sums
    monkeypatch.setattr(programs, "_long_sums", spy)
    elbo = infer.TraceGraph_ELBO(num_particles=2)
    elbo.loss(jax.random.key(0), PARAMS, chain_model, chain_guide, OBS)
    return seen


def test_a_short_chain_keeps_the_chain_of_additions(monkeypatch):
    assert _spy_on_long_sums(monkeypatch) == []


def test_the_chain_takes_the_masked_reduction(monkeypatch, long_sums):
    # the tests below exercise the masked reduction only if the engine takes it here
    seen = _spy_on_long_sums(monkeypatch)
    assert {o[0] for o in seen if isinstance(o, tuple)} == {"cost", "anc"}
    assert any(isinstance(o, str) for o in seen)  # the baselines' downstream costs


def test_long_chain_gradient_is_exact_in_expectation(long_sums):
    grads = _gradients(4)(PARAMS, jax.random.split(jax.random.key(3), 3000))
    assert_unbiased(grads, jax.grad(exact_loss)(PARAMS), k=5, bonferroni=True)


def test_masked_reduction_equals_the_chain_of_additions(monkeypatch, long_sums):
    keys = jax.random.split(jax.random.key(11), 8)
    long = _gradients(4)(PARAMS, keys)
    monkeypatch.setattr(programs, "_LONG_TOTAL", 10**6)  # every sum a chain of additions
    chained = _gradients(4)(PARAMS, keys)
    assert tree_allclose(long, chained, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(long["a"]).mean()) > 0


def test_an_infinite_term_stays_in_its_own_sums():
    terms = {i: jnp.full((3,), float(i)) for i in range(12)}
    terms[0] = jnp.array([-jnp.inf, 0.0, 1.0])
    wanted = {
        "with": [(i, lambda i=i: terms[i]) for i in range(12)],
        "without": [(i, lambda i=i: terms[i]) for i in range(1, 12)],
    }
    out = programs._long_sums(wanted)
    np.testing.assert_array_equal(np.asarray(out["without"]), np.full(3, 66.0))
    assert np.asarray(out["with"])[0] == -np.inf
    np.testing.assert_array_equal(np.asarray(out["with"])[1:], [66.0, 67.0])
