"""The entry points: per_sample_grads vs jax.grad, pytrees, transformations, the protocol, optax.

The distribution protocol. ``dist_fn(params)`` may return any object with

- ``sample(key, sample_shape) -> x`` with shape ``sample_shape + batch_shape + event_shape``
  (used by :class:`ScoreFunction`, treated as a constant);
- ``log_prob(x) -> log p(x)`` with shape ``sample_shape + batch_shape`` (summed over the batch
  dimensions: one sample is the whole ``x`` passed to f), differentiable in the parameters;
- ``has_rsample: bool`` and ``rsample(key, sample_shape)``, a sample differentiable in the
  parameters (used by :class:`Pathwise`);

and, for :func:`per_sample_grads` (which vmaps ``dist_fn``), it must be a JAX pytree.
``HandNormal`` below is such a class written without numpyro.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest
from helpers import assert_unbiased, estimates, tree_allclose

import expectax as ex

ESTIMATORS = [ex.ScoreFunction(), ex.Pathwise()]
IDS = ["score", "pathwise"]


def _nested_problem():
    """Nested params (dict of tuple and dict) feeding both f and the distribution."""
    params = {
        "dist": ({"loc": jnp.array([0.3, -0.2])}, jnp.array([0.1, 0.4])),  # (loc, log_scale)
        "f": {"w": jnp.array([[1.0, 0.5], [0.0, -1.0]]), "b": jnp.array(0.2)},
    }

    def dist_fn(p):
        loc, log_scale = p["dist"][0]["loc"], p["dist"][1]
        return dist.Normal(loc, jnp.exp(log_scale)).to_event(1)

    def f(p, x):
        return jnp.sum(jnp.tanh(p["f"]["w"] @ x)) + p["f"]["b"] * jnp.sum(x**2)

    return f, dist_fn, params


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
@pytest.mark.parametrize("chunk_size", [None, 8])
def test_per_sample_grads_mean_is_grad(estimator, chunk_size):
    f, dist_fn, params = _nested_problem()
    key = jax.random.key(1)
    kw = dict(estimator=estimator, num_samples=32, chunk_size=chunk_size)
    psg = ex.per_sample_grads(f, dist_fn, params, key, **kw)
    grad = jax.grad(ex.expectation(f, dist_fn, **kw))(params, key)
    assert jax.tree_util.tree_structure(psg) == jax.tree_util.tree_structure(params)
    for g, p in zip(jax.tree_util.tree_leaves(psg), jax.tree_util.tree_leaves(params), strict=True):
        assert g.shape == (32, *p.shape)
    mean = jax.tree_util.tree_map(lambda g: g.mean(axis=0), psg)
    assert tree_allclose(mean, grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_chunking_keeps_the_estimate_unbiased_and_same_value(estimator):
    """Chunked E uses different samples, but its value is still the mean of its per-sample terms."""
    f, dist_fn, params = _nested_problem()
    key = jax.random.key(2)
    E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=16, chunk_size=4)
    E1 = ex.expectation(f, dist_fn, estimator=estimator, num_samples=16)
    v_chunked = estimates(E, params, key, 400)
    v_plain = estimates(E1, params, key, 400)
    # both estimate the same J: their difference has mean zero
    assert_unbiased(v_chunked - v_plain, 0.0, k=5)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_jit_vmap_grad_jvp_hessian(estimator):
    f = lambda p, x: (x - p["k"]) ** 2 + jnp.sin(x)
    dist_fn = lambda p: dist.Normal(p["mu"], p["sigma"])
    params = {"mu": jnp.array(0.5), "sigma": jnp.array(1.1), "k": jnp.array(2.0)}
    E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=16)
    key = jax.random.key(3)

    @jax.jit
    def everything(params, key):
        keys = jax.random.split(key, 5)
        batch = jax.tree_util.tree_map(lambda x: x + jnp.arange(4.0) / 10, params)
        tangent = {"mu": jnp.array(1.0), "sigma": jnp.array(-0.5), "k": jnp.array(0.3)}
        return dict(
            value=E(params, key),
            grad=jax.grad(E)(params, key),
            keys=keys,
            vk=jax.vmap(E, in_axes=(None, 0))(params, keys),
            vk2=E(params, keys[2]),
            vp=jax.vmap(jax.grad(E), in_axes=(0, None))(batch, key),
            vp1=jax.grad(E)(jax.tree_util.tree_map(lambda x: x[1], batch), key),
            jvp=jax.jvp(lambda p: E(p, key), (params,), (tangent,))[1],
            tangent=tangent,
            hess=jax.hessian(E)(params, key),
            d_mu=jax.grad(lambda p: jax.grad(E)(p, key)["mu"])(params),
        )

    out = everything(params, key)
    assert out["value"].shape == ()
    np.testing.assert_allclose(out["value"], E(params, key), rtol=1e-5)  # eager == jit
    assert out["vk"].shape == (5,)
    np.testing.assert_allclose(out["vk"][2], out["vk2"], rtol=1e-5)
    assert tree_allclose(jax.tree_util.tree_map(lambda x: x[1], out["vp"]), out["vp1"], rtol=1e-5)
    grad, tangent = out["grad"], out["tangent"]
    expected = sum(grad[n] * tangent[n] for n in params)  # forward mode == reverse mode
    np.testing.assert_allclose(out["jvp"], expected, rtol=1e-4, atol=1e-5)
    hess = out["hess"]
    np.testing.assert_allclose(hess["mu"]["k"], hess["k"]["mu"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hess["mu"]["mu"], out["d_mu"]["mu"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_legacy_prng_key(estimator):
    E = ex.expectation(
        lambda p, x: x**2, lambda p: dist.Normal(p, 1.0), estimator=estimator, num_samples=8
    )
    legacy = jax.random.PRNGKey(0)
    assert jnp.isfinite(E(jnp.array(0.5), legacy))
    g = jax.jit(jax.grad(E))(jnp.array(0.5), legacy)
    assert jnp.isfinite(g)
    psg = ex.per_sample_grads(
        lambda p, x: x**2,
        lambda p: dist.Normal(p, 1.0),
        jnp.array(0.5),
        legacy,
        estimator=estimator,
        num_samples=8,
    )
    np.testing.assert_allclose(psg.mean(), g, rtol=1e-5)
    # the same stream as the new-style key with the same seed
    np.testing.assert_allclose(
        E(jnp.array(0.5), jax.random.wrap_key_data(legacy)), E(jnp.array(0.5), legacy), rtol=1e-6
    )


@jax.tree_util.register_pytree_node_class
class HandNormal:
    """A Normal distribution written without numpyro, following the distribution protocol."""

    has_rsample = True

    def __init__(self, loc, scale):
        self.loc, self.scale = loc, scale

    def tree_flatten(self):
        return (self.loc, self.scale), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def rsample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + jnp.shape(self.loc)
        return self.loc + self.scale * jax.random.normal(key, shape)

    def sample(self, key, sample_shape=()):
        return jax.lax.stop_gradient(self.rsample(key, sample_shape))

    def log_prob(self, x):
        z = (x - self.loc) / self.scale
        return -0.5 * z**2 - jnp.log(self.scale) - 0.5 * jnp.log(2 * jnp.pi)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_distribution_protocol_with_hand_written_class(estimator):
    f = lambda p, x: jnp.sum((x - 3.0) ** 2)
    dist_fn = lambda p: HandNormal(p["mu"], p["sigma"])
    params = {"mu": jnp.array([1.0, -0.5]), "sigma": jnp.array([0.7, 1.2])}
    E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=16)
    grads = estimates(jax.grad(E), params, jax.random.key(4), 500)
    exact = {"mu": 2 * (params["mu"] - 3.0), "sigma": 2 * params["sigma"]}
    assert_unbiased(grads, exact, k=5, bonferroni=True)
    psg = ex.per_sample_grads(
        f, dist_fn, params, jax.random.key(5), estimator=estimator, num_samples=16
    )
    assert psg["mu"].shape == (16, 2)


def test_optax_adam_finds_the_optimum():
    """Minimise E_{N(μ, softplus(ρ)²)}[(x − 3)²]: μ → 3 and σ → 0."""
    f = lambda p, x: (x - 3.0) ** 2
    dist_fn = lambda p: dist.Normal(p["mu"], jax.nn.softplus(p["rho"]))
    E = ex.expectation(f, dist_fn, estimator=ex.Pathwise(), num_samples=16)
    opt = optax.adam(0.05)
    params = {"mu": jnp.array(0.0), "rho": jnp.array(0.5)}

    @jax.jit
    def step(carry, key):
        params, state = carry
        grads = jax.grad(E)(params, key)
        updates, state = opt.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), None

    keys = jax.random.split(jax.random.key(6), 600)
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), keys)
    assert abs(float(params["mu"]) - 3.0) < 0.1
    assert float(jax.nn.softplus(params["rho"])) < 0.2
    value = float(E(params, jax.random.key(7)))
    assert value < 0.1  # started at (0 − 3)² + softplus(0.5)² ≈ 9.9
