"""``expectax.infer.softmax_simplex``: Pyro's softmax parameterisation of ``simplex`` params.

The wrapped guide must train exactly as a guide written with free logits through a softmax
(Pyro's parameter store), start from the same probabilities, leave every other param and every
draw as it was, and compose with ``with_baselines``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.distributions import constraints
from numpyro.infer import SVI

from expectax import infer
from expectax.infer.simplex import SOFTMAX_SIMPLEX

POINTS = jnp.array([-2.1, -1.9, -2.3, 2.0, 2.2, 1.8])
PHI0 = jax.random.dirichlet(jax.random.key(3), jnp.ones(2), (6,))


def model(points):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2), 5.0).to_event(1))
    with numpyro.plate("data", points.shape[0]):
        z = numpyro.sample("z", dist.Categorical(probs=jnp.ones(2) / 2))
        numpyro.sample("obs", dist.Normal(mu[z], 1.0), obs=points)


def _guide(phi):
    loc = numpyro.param("loc", jnp.array([-1.0, 1.0]))
    numpyro.sample("mu", dist.Normal(loc, 1.0).to_event(1))
    with numpyro.plate("data", POINTS.shape[0]):
        numpyro.sample("z", dist.Categorical(probs=phi))


def guide(points):  # numpyro's way: a simplex param, optimised through stick-breaking
    _guide(numpyro.param("phi", PHI0, constraint=constraints.simplex))


def guide_logits(points):  # Pyro's way, written by hand: free logits through a softmax
    _guide(jax.nn.softmax(numpyro.param("phi_logits", jnp.log(PHI0)), axis=-1))


def _train(g, steps=60):
    svi = SVI(model, g, optax.adam(0.05), loss=infer.TraceGraph_ELBO(4))
    result = svi.run(jax.random.key(0), steps, POINTS, progress_bar=False)
    params = result.params
    if "phi_logits" in params:
        params = dict(params, phi=jax.nn.softmax(params.pop("phi_logits"), axis=-1))
    return params, result.losses


def test_trains_exactly_as_free_logits_through_a_softmax():
    wrapped, losses = _train(infer.softmax_simplex(guide))
    by_hand, losses_by_hand = _train(guide_logits)
    np.testing.assert_array_equal(losses, losses_by_hand)
    for name in ("phi", "loc"):
        np.testing.assert_allclose(wrapped[name], by_hand[name], rtol=1e-6, atol=1e-7)
    stick, _ = _train(guide)  # and not as numpyro's stick-breaking does
    assert np.max(np.abs(stick["phi"] - wrapped["phi"])) > 1e-2


def test_free_logits_start_at_the_log_of_the_initial_value():
    svi = SVI(model, infer.softmax_simplex(guide), optax.adam(0.05), loss=infer.TraceGraph_ELBO(4))
    state = svi.init(jax.random.key(0), POINTS)
    free = svi.optim.get_params(state.optim_state)
    assert free["phi"].shape == PHI0.shape  # k logits per row, not k - 1 sticks
    np.testing.assert_allclose(free["phi"], jnp.log(PHI0), rtol=1e-6)
    np.testing.assert_allclose(free["loc"], jnp.array([-1.0, 1.0]))  # other params as they were
    np.testing.assert_allclose(svi.get_params(state)["phi"], PHI0, rtol=1e-5)


def test_draws_and_other_sites_unchanged():
    def trace(g):
        return numpyro.handlers.trace(numpyro.handlers.seed(g, 7)).get_trace(POINTS)

    plain, wrapped = trace(guide), trace(infer.softmax_simplex(guide))
    for name in ("mu", "z"):
        np.testing.assert_array_equal(plain[name]["value"], wrapped[name]["value"])
    assert wrapped["phi"]["kwargs"]["constraint"] is SOFTMAX_SIMPLEX
    assert plain["phi"]["kwargs"]["constraint"] is constraints.simplex  # the original untouched
    assert wrapped["loc"]["kwargs"].get("constraint", constraints.real) is constraints.real


def test_composes_with_with_baselines_in_either_order():
    first, _ = _train(infer.with_baselines(infer.softmax_simplex(guide)), steps=20)
    second, _ = _train(infer.softmax_simplex(infer.with_baselines(guide)), steps=20)
    np.testing.assert_array_equal(first["phi"], second["phi"])
    assert infer.BASELINE_STATE not in first


def test_the_softmax_has_no_jacobian_and_bad_input_is_refused():
    transform = numpyro.distributions.transforms.biject_to(SOFTMAX_SIMPLEX)
    x = jnp.zeros(3)
    np.testing.assert_allclose(transform(x), jnp.full(3, 1 / 3))
    with pytest.raises(NotImplementedError, match="not a bijection"):
        transform.log_abs_det_jacobian(x, transform(x))
    with pytest.raises(TypeError, match=r"softmax_simplex\(fn\): fn must be"):
        infer.softmax_simplex("guide")
