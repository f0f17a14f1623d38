"""numpyro structures a user puts in a program or guide (issue 21, item 3): nested plates with
explicit ``dim=`` (with a gap between them) and ``numpyro.module`` neural parameters in an
ELBO's guide, each unbiased against an exact answer by enumeration."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased, estimates
from jax.example_libraries import stax

import expectax as ex
from expectax.infer import TraceGraph_ELBO

# ------------------------------------------------------------------ nested plates with dim=

W = jnp.array([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]])


def nested(theta):
    """rows at dim −3, cols at dim −1 (dim −2 left empty): u per row, z per cell, costs per
    cell and per row, so Rao-Blackwellisation must line the plates up by their dims."""
    with numpyro.plate("rows", 2, dim=-3):
        u = numpyro.sample("u", dist.Bernoulli(logits=theta[:, :1, None]))  # (2, 1, 1)
        with numpyro.plate("cols", 3, dim=-1):
            z = numpyro.sample("z", dist.Bernoulli(logits=theta[:, None, :] - u))  # (2, 1, 3)
            numpyro.factor("cell", W[:, None, :] * (z - 0.4 * u) ** 2)
        numpyro.factor("row", 0.8 * u * jnp.sum(z, axis=-1, keepdims=True))  # (2, 1, 1)
    return 0.5 * jnp.sum(u)


BITS = jnp.array(list(itertools.product((0.0, 1.0), repeat=8)))  # every (u, z): 256 rows


def nested_exact(theta):
    def one(bits):
        u, z = bits[:2], bits[2:].reshape(2, 3)
        lu, lz = theta[:, 0], theta - u[:, None]
        logp = jnp.sum(jax.nn.log_sigmoid(jnp.where(u > 0, lu, -lu)))
        logp = logp + jnp.sum(jax.nn.log_sigmoid(jnp.where(z > 0, lz, -lz)))
        cost = jnp.sum(W * (z - 0.4 * u[:, None]) ** 2)
        cost = cost + jnp.sum(0.8 * u * jnp.sum(z, axis=-1)) + 0.5 * jnp.sum(u)
        return jnp.exp(logp) * cost

    return jnp.sum(jax.vmap(one)(BITS))


THETA = jnp.array([[0.3, -0.5, 0.8], [-0.2, 0.6, 0.1]])


def test_nested_plates_with_explicit_dims_are_unbiased():
    E = ex.program_expectation(nested, num_particles=4)
    grads = estimates(jax.grad(E), THETA, jax.random.key(3), repeats=1000)
    assert_unbiased(grads, jax.grad(nested_exact)(THETA), k=5)
    values = estimates(E, THETA, jax.random.key(4), repeats=1000)
    assert_unbiased(values, nested_exact(THETA), k=5)


# ------------------------------------------------------------- numpyro.module in a guide

NET = stax.serial(stax.Dense(4), stax.Tanh, stax.Dense(2))
X = jnp.array([[0.5, -1.0, 0.25]])
PRIOR = jnp.array([0.3, 0.6])
OBS = jnp.array([1.0, 0.0, 1.0])


def model():
    with numpyro.plate("units", 2):
        z = numpyro.sample("z", dist.Bernoulli(probs=PRIOR))
    numpyro.sample("x", dist.Normal(jnp.sum(z) - 0.5, 1.0).expand([3]).to_event(1), obs=OBS)


def guide():
    net = numpyro.module("net", NET, input_shape=(1, 3))
    logits = net(X)[0]
    with numpyro.plate("units", 2):
        numpyro.sample("z", dist.Bernoulli(logits=logits))


def exact_loss(net_params):
    """−ELBO by enumerating the guide's four values of z."""
    logits = NET[1](net_params, X)[0]
    total = 0.0
    for bits in itertools.product((0.0, 1.0), repeat=2):
        z = jnp.array(bits)
        log_q = jnp.sum(jax.nn.log_sigmoid(jnp.where(z > 0, logits, -logits)))
        log_p = jnp.sum(jnp.where(z > 0, jnp.log(PRIOR), jnp.log1p(-PRIOR)))
        log_p = log_p + jnp.sum(dist.Normal(jnp.sum(z) - 0.5, 1.0).log_prob(OBS))
        total = total + jnp.exp(log_q) * (log_q - log_p)
    return total


def test_numpyro_module_parameters_in_the_guide_get_unbiased_gradients():
    _, net_params = NET[0](jax.random.key(0), (1, 3))
    params = {"net$params": net_params}
    elbo = TraceGraph_ELBO(num_particles=2)

    def loss(p, key):
        return elbo.loss(key, p, model, guide)

    grads = estimates(jax.grad(loss), params, jax.random.key(5), repeats=1000)
    exact = jax.grad(lambda p: exact_loss(p["net$params"]))(params)
    assert_unbiased(grads, exact, k=5)
    # the loss is the exact −ELBO in expectation
    values = estimates(loss, params, jax.random.key(6), repeats=1000)
    assert_unbiased(values, exact_loss(net_params), k=5)
    assert np.isfinite(float(loss(params, jax.random.key(0))))


# ------------------------------------ numpyro.param / numpyro.module in program_expectation


def test_params_inside_program_expectation_are_refused_not_frozen():
    """program_expectation optimises only ``params``: a numpyro.param or numpyro.module inside
    the program would return its initial value on every run (gradient 0), so it is refused
    with the site's name and what to do; a value the user substitutes is accepted."""

    def with_param(theta):
        w = numpyro.param("w", 0.5)
        z = numpyro.sample("z", dist.Bernoulli(logits=theta))
        return (z - w) ** 2

    def with_module(theta):
        net = numpyro.module("net", NET, input_shape=(1, 3))
        z = numpyro.sample("z", dist.Bernoulli(logits=theta + net(X)[0, 0]))
        return z

    key = jax.random.key(0)
    for program, call in ((with_param, "numpyro.param('w'"), (with_module, "numpyro.module('net'")):
        E = ex.program_expectation(program, num_particles=2)
        with pytest.raises(ValueError, match="program_expectation") as err:
            jax.grad(E)(0.3, key)
        assert call in str(err.value) and "params" in str(err.value)
        with pytest.raises(ValueError, match="program_expectation"):
            jax.jit(E)(0.3, key)

    substituted = numpyro.handlers.substitute(with_param, data={"w": 0.25})
    E = ex.program_expectation(substituted, num_particles=2)
    p = jax.nn.sigmoid(0.3)
    exact = p * 0.75**2 + (1 - p) * 0.25**2
    values = estimates(E, 0.3, jax.random.key(7), repeats=2000)
    assert_unbiased(values, exact, k=5)
