"""Gradient memory with chunk_size stays flat as N grows (XLA's compiled memory analysis).

Reverse mode through ``lax.map`` would keep every chunk's residuals; expectax recomputes each
chunk in the backward pass (``jax.checkpoint``), so the compiled program's temporary memory
does not depend on the number of chunks. The analysis is deterministic (no timing involved).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import expectax as ex
from expectax import baselines

P = 20_000


def f(p, x):
    return jnp.sum(jnp.tanh(p["w"] * x)) + x


def dist_fn(p):
    return dist.Normal(p["mu"], jnp.exp(p["log_s"]))


PARAMS = {"w": jnp.ones(P), "mu": jnp.zeros(()), "log_s": jnp.zeros(())}


def temp_bytes(estimator, n, chunk, fn=jax.grad):
    E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=n, chunk_size=chunk)
    compiled = jax.jit(fn(E)).lower(PARAMS, jax.random.key(0)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize(
    "estimator",
    [ex.Pathwise(), ex.ScoreFunction(), ex.ScoreFunction(baseline=baselines.LeaveOneOut())],
    ids=["pathwise", "score", "rloo"],
)
def test_gradient_memory_is_flat_in_the_number_of_chunks(estimator):
    small = temp_bytes(estimator, 2 * 50, 50)
    large = temp_bytes(estimator, 200 * 50, 50)  # 100× the samples
    assert large <= 1.1 * small + 2**20, (small, large)
    # and it is far below what keeping every chunk's residuals would take (N × P floats)
    assert large < 0.1 * 200 * 50 * P * 4


def test_chunked_gradient_and_forward_mode_agree():
    E = ex.expectation(f, dist_fn, estimator=ex.Pathwise(), num_samples=40, chunk_size=10)
    key = jax.random.key(3)
    small = {"w": jnp.ones(3), "mu": jnp.array(0.2), "log_s": jnp.array(-0.1)}
    rev = jax.grad(E)(small, key)
    fwd = jax.jacfwd(E)(small, key)
    for a, b in zip(jax.tree_util.tree_leaves(rev), jax.tree_util.tree_leaves(fwd), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    hess = jax.hessian(E)(small, key)
    assert np.all(np.isfinite(np.asarray(hess["mu"]["mu"])))


def test_per_sample_grads_refuses_a_result_that_cannot_fit():
    big = {"w": jax.ShapeDtypeStruct((10**7,), jnp.float32)}
    params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), big)
    with pytest.raises(ValueError, match=r"num_samples × \|θ\|.*gradient_moments"):
        ex.per_sample_grads(
            lambda p, x: jnp.sum(p["w"]) * x,
            lambda p: dist.Normal(0.0, 1.0),
            params,
            jax.random.key(0),
            estimator=ex.ScoreFunction(),
            num_samples=10**5,
        )
