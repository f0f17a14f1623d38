"""Programs and ELBOs written with numpyro's ``scan``: unbiased against exact enumeration.

A 3-state HMM over T = 4 steps (3⁴ = 81 paths enumerated exactly), once with
``numpyro.contrib.control_flow.scan`` and once with a Python loop; a per-site estimator that
cannot serve a scanned site is refused by name.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased, estimates
from numpyro.contrib.control_flow import scan

import expectax as ex
from expectax import infer

T = 4
OBS = jnp.array([0.3, 2.1, -0.8, 1.5])
TRANS = jnp.array([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.25, 0.25, 0.5]])
MU = jnp.array([-1.0, 0.5, 2.0])
PARAMS = {
    "L": jnp.array([[0.2, -0.4, 0.1], [0.0, 0.5, -0.3], [-0.6, 0.2, 0.4], [0.3, 0.0, -0.2]]),
    "B": jnp.array([[0.5, -0.2, 0.0], [0.1, 0.3, -0.4], [-0.3, 0.0, 0.6]]),
}


def scan_model(obs):
    def step(z_prev, x):
        z = numpyro.sample("z", dist.Categorical(probs=TRANS[z_prev]))
        numpyro.sample("x", dist.Normal(MU[z], 1.0), obs=x)
        return z, None

    scan(step, 0, obs)


def scan_guide(obs):
    L = numpyro.param("L", jnp.zeros((T, 3)))
    B = numpyro.param("B", jnp.zeros((3, 3)))

    def step(z_prev, t):
        z = numpyro.sample("z", dist.Categorical(logits=L[t] + B[z_prev]))
        return z, None

    scan(step, 0, jnp.arange(T))


def loop_model(obs):
    z = 0
    for t in range(T):
        z = numpyro.sample(f"z_{t}", dist.Categorical(probs=TRANS[z]))
        numpyro.sample(f"x_{t}", dist.Normal(MU[z], 1.0), obs=obs[t])


def loop_guide(obs):
    L = numpyro.param("L", jnp.zeros((T, 3)))
    B = numpyro.param("B", jnp.zeros((3, 3)))
    z = 0
    for t in range(T):
        z = numpyro.sample(f"z_{t}", dist.Categorical(logits=L[t] + B[z]))


def exact_loss(params):
    """−ELBO summed over the 81 state paths."""
    total = 0.0
    for path in itertools.product(range(3), repeat=T):
        log_q = log_p = 0.0
        prev = 0
        for t, z in enumerate(path):
            log_q = log_q + jax.nn.log_softmax(params["L"][t] + params["B"][prev])[z]
            log_p = log_p + jnp.log(TRANS[prev, z]) + dist.Normal(MU[z], 1.0).log_prob(OBS[t])
            prev = z
        total = total + jnp.exp(log_q) * (log_p - log_q)
    return -total


# far from uniform (0.5·N(0, 1) logits, as benchmarks/scan_hmm.py): a baseline that peeked at
# a scanned particle's own earlier steps was biased here (|z| = 11.7) and not at PARAMS
PARAMS_FAR = {
    "L": 0.5 * jax.random.normal(jax.random.key(101), (T, 3)),
    "B": 0.5 * jax.random.normal(jax.random.key(102), (3, 3)),
}


@pytest.mark.parametrize("form", ["scan", "loop"])
@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("at", ["near", "far"])
def test_hmm_elbo_gradient_is_exact_in_expectation(form, k, at):
    model, guide = (scan_model, scan_guide) if form == "scan" else (loop_model, loop_guide)
    params = PARAMS if at == "near" else PARAMS_FAR
    elbo = infer.TraceGraph_ELBO(num_particles=k)
    grad = jax.grad(lambda p, key: elbo.loss(key, p, model, guide, OBS))
    grads = estimates(grad, params, jax.random.key(21), repeats=4000)
    exact = jax.grad(exact_loss)(params)
    assert_unbiased(grads, exact, k=5, bonferroni=True)
    assert float(jnp.abs(grads["L"]).mean()) > 0  # never the silent zero of issue 21


def test_scanned_particles_are_independent():
    """Four particles draw four independent paths: the loss spreads over keys as 1/4 of one
    particle's variance (it spread exactly as at one particle when they shared the draws)."""
    one = estimates(
        lambda p, key: infer.TraceGraph_ELBO(1).loss(key, p, scan_model, scan_guide, OBS),
        PARAMS,
        jax.random.key(3),
        2000,
    )
    four = estimates(
        lambda p, key: infer.TraceGraph_ELBO(4).loss(key, p, scan_model, scan_guide, OBS),
        PARAMS,
        jax.random.key(4),
        2000,
    )
    ratio = float(four.var() / one.var())
    assert 0.15 < ratio < 0.4, ratio


def test_program_with_scan_is_unbiased():
    def program(theta):
        def step(carry, t):
            z = numpyro.sample("z", dist.Bernoulli(logits=theta[t]))
            return carry + z * (t + 1.0), None

        total, _ = scan(step, 0.0, jnp.arange(3))
        return (total - 2.0) ** 2

    theta = jnp.array([0.3, -0.5, 1.0])

    def exact(theta):
        total = 0.0
        for bits in itertools.product((0.0, 1.0), repeat=3):
            b = jnp.array(bits)
            logp = jnp.sum(b * jax.nn.log_sigmoid(theta) + (1 - b) * jax.nn.log_sigmoid(-theta))
            total = total + jnp.exp(logp) * (jnp.sum(b * jnp.arange(1.0, 4.0)) - 2.0) ** 2
        return total

    E = ex.program_expectation(program, num_particles=4)
    grads = estimates(jax.grad(E), theta, jax.random.key(5), 3000)
    assert_unbiased(grads, jax.grad(exact)(theta), k=5, bonferroni=True)


def test_per_site_estimators_inside_scan_are_refused_by_name():
    elbo = infer.TraceGraph_ELBO(2, estimators={"z": ex.DisARM()})
    with pytest.raises(ValueError, match=r"site 'z' is drawn inside numpyro's scan.*Python for"):
        elbo.loss(jax.random.key(0), PARAMS, scan_model, scan_guide, OBS)

    def program(theta):
        def step(c, t):
            return c + numpyro.sample("y", dist.Normal(theta, 1.0)), None

        return scan(step, 0.0, jnp.arange(2))[0]

    E = ex.program_expectation(program, num_particles=2, estimators={"y": ex.ScoreFunction()})
    with pytest.raises(ValueError, match="ScoreFunction on a continuous distribution"):
        jax.grad(E)(jnp.array(0.1), jax.random.key(0))


def test_masked_latent_site_keeps_its_score():
    """handlers.mask(mask=False) around a latent site removes its density from the costs but
    not its draw: E over p_θ still depends on θ (gradient σ'(θ)·(0.49 − 0.09)), as defined in
    docs/programs.md (numpyro's ELBO drops the score too; expectax does not)."""
    from numpyro import handlers

    def program(theta):
        with handlers.mask(mask=False):
            z = numpyro.sample("z", dist.Bernoulli(logits=theta))
        return (z - 0.3) ** 2

    theta = jnp.array(0.4)
    exact = jax.nn.sigmoid(theta) * (1 - jax.nn.sigmoid(theta)) * 0.4
    for est in (None, {"z": ex.ScoreFunction()}):
        E = ex.program_expectation(program, num_particles=4, estimators=est)
        assert_unbiased(estimates(jax.grad(E), theta, jax.random.key(8), 3000), exact, k=5)


@pytest.mark.parametrize(
    "est",
    [ex.DisARM(), ex.ARM(), ex.RELAX(), ex.UnorderedSet()],
    ids=lambda e: type(e).__name__,
)
def test_second_derivatives_of_per_site_estimators_are_refused(est):
    """Their surrogate's gradient is unbiased, its Hessian estimates nothing: refused (it was
    silently zero), while the gradient still works and ScoreFunction's Hessian is allowed."""
    bernoulli = isinstance(est, (ex.ARM, ex.RELAX))

    def program(theta):
        d = dist.Bernoulli(logits=theta[0]) if bernoulli else dist.Categorical(logits=theta)
        z = numpyro.sample("z", d)
        return (z - 0.7) ** 2

    theta = jnp.array([0.2, -0.3, 0.5])
    E = ex.program_expectation(program, num_particles=2, estimators={"z": est})
    assert jnp.all(jnp.isfinite(jax.grad(E)(theta, jax.random.key(0))))
    for second in (jax.hessian, lambda fn: jax.jacrev(jax.jacfwd(fn))):
        with pytest.raises(ValueError, match=r"at site 'z' gives an unbiased first derivative"):
            second(E)(theta, jax.random.key(0))
    sf = ex.program_expectation(program, num_particles=2)
    assert jnp.all(jnp.isfinite(jax.hessian(sf)(theta, jax.random.key(0))))


def test_cond_condition_and_reparam_handlers():
    """numpyro's other structural handlers: ``cond`` (sites inside it are served like scanned
    ones), ``handlers.condition`` (the site becomes observed) and ``handlers.reparam`` (the
    program draws the reparameterised base site): each unbiased against an exact gradient."""
    from numpyro import handlers
    from numpyro.contrib.control_flow import cond
    from numpyro.infer.reparam import LocScaleReparam

    def program(theta):
        a = numpyro.sample("a", dist.Bernoulli(logits=theta[0]))

        def true_fn(_):
            return numpyro.sample("b", dist.Bernoulli(logits=theta[1]))

        def false_fn(_):
            return numpyro.sample("b", dist.Bernoulli(logits=-theta[1]))

        b = cond(a > 0, true_fn, false_fn, None)
        return (a + 2.0 * b - 1.2) ** 2

    def exact(theta):
        pa = jax.nn.sigmoid(theta[0])
        total = 0.0
        for a in (0.0, 1.0):
            pb = jax.nn.sigmoid(theta[1] if a else -theta[1])
            for b in (0.0, 1.0):
                p = (pa if a else 1 - pa) * (pb if b else 1 - pb)
                total = total + p * (a + 2 * b - 1.2) ** 2
        return total

    theta = jnp.array([0.4, -0.7])
    E = ex.program_expectation(program, num_particles=4)
    grads = estimates(jax.grad(E), theta, jax.random.key(9), 3000)
    assert_unbiased(grads, jax.grad(exact)(theta), k=5, bonferroni=True)

    def scaled(theta):  # x ~ N(θ0, e^θ1) written through LocScaleReparam; E[x²] = θ0² + e^{2θ1}
        with handlers.reparam(config={"x": LocScaleReparam(centered=0.0)}):
            x = numpyro.sample("x", dist.Normal(theta[0], jnp.exp(theta[1])))
        return x**2

    E = ex.program_expectation(scaled, num_particles=8)
    exact_g = jnp.array([2 * theta[0], 2 * jnp.exp(2 * theta[1])])
    assert_unbiased(estimates(jax.grad(E), theta, jax.random.key(10), 3000), exact_g, k=5)

    def conditioned(theta):  # z observed at 1 by handlers.condition: cost −log p(z = 1)
        with handlers.condition(data={"z": 1.0}):
            numpyro.sample("z", dist.Bernoulli(logits=theta[0]))

    E = ex.program_expectation(conditioned, num_particles=2)
    g = jax.grad(E)(theta, jax.random.key(0))
    # the program's cost is the observed site's log-density log σ(θ0): its derivative 1 − σ(θ0)
    np.testing.assert_allclose(g[0], 1 - jax.nn.sigmoid(theta[0]), rtol=1e-5)
