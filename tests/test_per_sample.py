"""per_sample_grads against a brute-force per-sample Jacobian.

per_sample_grads builds the distribution once, copies its leaves (and θ, for f) once per
sample, and pulls each sample's gradient with respect to the distribution's leaves back to θ
through one shared linearisation of dist_fn. The reference here does none of that: it is
``jax.jacrev`` (a vmap of one reverse pass per sample) of the estimator's ``(N,)`` surrogate
terms with respect to θ itself, each term being one sample's contribution. The distribution's
parameters go through a chain rule (a scale exp(log σ), a mean W @ z), f depends on θ too,
and the masked case has a boolean leaf (the mask) next to the float ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import expectax as ex
from expectax import baselines
from expectax.estimators.base import Context

N = 8


def f(p, x):
    return jnp.sum(jnp.sin(x) * p["w"]) + jnp.sum((x - 0.5) ** 2)


def gaussian(p):
    return dist.Normal(p["W"] @ p["z"], jnp.exp(p["log_s"])).to_event(1)


def masked(p):  # a bool leaf (the mask) next to the float ones
    base = dist.Normal(p["W"] @ p["z"], jnp.exp(p["log_s"]))
    return base.mask(jnp.array([True, False, True])).to_event(1)


PARAMS = {
    "W": jnp.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2]]),
    "z": jnp.array([0.7, -1.1]),
    "log_s": jnp.array([-0.3, 0.2, -1.0]),
    "w": jnp.array([0.5, -1.0, 2.0]),
}

# (estimator, dist_fn, chunk_size)
CASES = {
    "score_function-loo-chunked": (ex.ScoreFunction(baseline=baselines.LeaveOneOut()), gaussian, 4),
    "pathwise": (ex.Pathwise(), gaussian, None),
    "measure_valued": (ex.MeasureValued(), gaussian, None),
    "score_function-masked": (ex.ScoreFunction(), masked, None),
}


def brute_force(estimator, dist_fn, params, key, n):
    """J[i] = ∂ term_i / ∂θ: one reverse pass per sample, no copies of θ or of the distribution."""
    diff = estimator.name if estimator.differentiates_f else None

    def terms(p):
        ctx = Context(f, dist_fn(p), p, differentiates_f=diff)
        return estimator.terms(ctx, key, n)

    return jax.jacrev(terms)(params)


@pytest.mark.parametrize("case", list(CASES))
def test_equals_brute_force_per_sample_jacobian(case):
    estimator, dist_fn, chunk_size = CASES[case]

    @jax.jit  # one compilation for both sides
    def both(params, key):
        ours = ex.per_sample_grads(
            f, dist_fn, params, key, estimator=estimator, num_samples=N, chunk_size=chunk_size
        )
        chunk = N if chunk_size is None else chunk_size
        keys = (
            [key] if chunk_size is None else [jax.random.fold_in(key, j) for j in range(N // chunk)]
        )
        parts = [
            brute_force(estimator, dist_fn, params, k, chunk) for k in keys
        ]  # chunk j: fold_in(key, j)
        return ours, jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)

    ours, ref = both(PARAMS, jax.random.key(3))
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(PARAMS)
    for name in PARAMS:
        assert ours[name].shape == (N, *PARAMS[name].shape)
        np.testing.assert_allclose(ours[name], ref[name], rtol=2e-5, atol=2e-6, err_msg=name)
    # every θ leaf gets a nonzero gradient: the comparison is not vacuous
    assert all(float(jnp.max(jnp.abs(ours[k]))) > 1e-3 for k in PARAMS)


@pytest.mark.parametrize("estimator", [ex.ScoreFunction(), ex.Pathwise()], ids=["score", "path"])
def test_constant_leaves_stay_constant(estimator):
    """A distribution that does not depend on θ (a fixed support's bounds are constants) is
    not refused as 'support depends on θ', and the Leibniz-rule gradient E[∂f/∂a] = E[x] = 1/2
    is unbiased (k = 5 standard errors)."""
    jac = ex.per_sample_grads(
        lambda p, x: p["a"] * x,
        lambda p: dist.Uniform(0.0, 1.0),
        {"a": jnp.array(2.0)},
        jax.random.key(3),
        estimator=estimator,
        num_samples=2000,
    )["a"]
    assert abs(float(jnp.mean(jac)) - 0.5) < 5 * float(jnp.std(jac)) / np.sqrt(2000)
