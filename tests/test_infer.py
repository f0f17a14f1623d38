"""expectax.infer.TraceGraph_ELBO: a drop-in for numpyro's, checked against exact enumeration."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from helpers import assert_unbiased, estimates
from numpyro.infer import SVI, TraceEnum_ELBO

import expectax as ex
from expectax import baselines, infer

DATA = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # two binary data points, 3 pixels


def model(data):
    """A two-layer sigmoid belief network: z2 → z1 → x, inside a plate over the data."""
    with numpyro.plate("data", data.shape[0]):
        z2 = numpyro.sample("z2", dist.Bernoulli(logits=jnp.array([0.3, -0.2])).to_event(1))
        z1 = numpyro.sample("z1", dist.Bernoulli(logits=z2 @ W1 - 0.5).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=z1 @ W0 - 1.0).to_event(1), obs=data)


def guide(data):
    a = numpyro.param("a", jnp.zeros((3, 2)))
    b = numpyro.param("b", jnp.zeros((2, 2)))
    with numpyro.plate("data", data.shape[0]):
        z1 = numpyro.sample("z1", dist.Bernoulli(logits=data @ a).to_event(1))
        numpyro.sample("z2", dist.Bernoulli(logits=z1 @ b + 0.1).to_event(1))


PARAMS = {
    "a": jnp.array([[0.5, -0.3], [0.2, 0.8], [-0.6, 0.1]]),
    "b": jnp.array([[0.4, -0.7], [0.9, 0.3]]),
}


W1 = jnp.array([[1.5, -1.0], [0.5, 2.0]])
W0 = jnp.array([[2.0, -1.0, 0.5], [-1.5, 1.0, 1.0]])
STATES = jnp.array(list(itertools.product((0.0, 1.0), repeat=2)))  # the 4 states of a layer


def bern(logits, value):
    return jnp.sum(
        value * jax.nn.log_sigmoid(logits) + (1 - value) * jax.nn.log_sigmoid(-logits), -1
    )


def exact_loss(params):
    """−ELBO summed exactly over the guide's 2⁴ joint states of (z1, z2) per data point."""
    total = 0.0
    for z1 in STATES:
        for z2 in STATES:
            log_q = bern(DATA @ params["a"], z1) + bern(z1 @ params["b"] + 0.1, z2)
            log_p = (
                bern(jnp.array([0.3, -0.2]), z2)
                + bern(z2 @ W1 - 0.5, z1)
                + bern(z1 @ W0 - 1.0, DATA)
            )
            total = total + jnp.sum(jnp.exp(log_q) * (log_p - log_q))
    return -total


def exact_loss_grad(params):
    return jax.grad(exact_loss)(params)


CONFIGS = {
    "default (weighted LOO)": {},
    "RLOO": {
        "estimators": {
            "z1": ex.ScoreFunction(baseline=baselines.LeaveOneOut()),
            "z2": ex.ScoreFunction(baseline=baselines.LeaveOneOut()),
        }
    },
    "DisARM per site": {"estimators": {"z1": ex.DisARM(), "z2": ex.DisARM()}},
    "RELAX + RLOO": {
        "estimators": {"z1": ex.RELAX(), "z2": ex.ScoreFunction(baseline=baselines.LeaveOneOut())}
    },
    "score, no baseline": {"estimators": {"z1": ex.ScoreFunction(), "z2": ex.ScoreFunction()}},
}


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_elbo_gradient_is_exact_in_expectation(config):
    elbo = infer.TraceGraph_ELBO(num_particles=4, **CONFIGS[config])
    grad = jax.grad(lambda p, k: elbo.loss(k, p, model, guide, DATA))
    grads = estimates(grad, PARAMS, jax.random.key(1), repeats=3000)
    assert_unbiased(grads, exact_loss_grad(PARAMS), k=5, bonferroni=True)


def test_loss_value_is_unbiased_for_the_elbo():
    elbo = infer.TraceGraph_ELBO(num_particles=2)
    losses = estimates(
        lambda p, k: elbo.loss(k, p, model, guide, DATA), PARAMS, jax.random.key(2), 3000
    )
    assert_unbiased(losses, exact_loss(PARAMS), k=5)


def test_against_numpyro_trace_enum_elbo():
    """On a model whose guide numpyro can enumerate (funsor), TraceEnum_ELBO gives the exact
    gradient; each configuration matches it within 5 SE."""
    data = jnp.array([0.3, -1.0, 2.0])

    def model(data):
        with numpyro.plate("d", 3):
            z = numpyro.sample("z", dist.Bernoulli(0.4))
            numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=data)

    def guide(data, enumerate=False):
        phi = numpyro.param("phi", jnp.zeros(3))
        e = {"enumerate": "parallel"} if enumerate else {}
        with numpyro.plate("d", 3):
            numpyro.sample("z", dist.Bernoulli(logits=phi), infer=e)

    params = {"phi": jnp.array([0.2, -0.5, 1.0])}
    enum_guide = lambda d: guide(d, enumerate=True)  # noqa: E731
    exact = jax.grad(lambda p: TraceEnum_ELBO().loss(jax.random.key(0), p, model, enum_guide, data))
    exact = jax.jit(exact)(params)  # once, compiled (funsor's eager ops took seconds)
    for est in ({}, {"z": ex.DisARM()}):  # RELAX and plain score: on the SBN above
        elbo = infer.TraceGraph_ELBO(num_particles=4, estimators=est)
        grad = jax.grad(lambda p, k, elbo=elbo: elbo.loss(k, p, model, guide, data))
        grads = estimates(grad, params, jax.random.key(7), repeats=2000)
        assert_unbiased(grads, exact, k=5, bonferroni=True)


def test_lower_variance_than_numpyro_at_equal_particles():
    ours = infer.TraceGraph_ELBO(num_particles=8)
    theirs = numpyro.infer.TraceGraph_ELBO(num_particles=8)

    def total_variance(elbo):
        grad = jax.grad(lambda p, k: elbo.loss(k, p, model, guide, DATA))
        g = estimates(grad, PARAMS, jax.random.key(3), repeats=1000)
        return sum(float(v.var(0).sum()) for v in jax.tree_util.tree_leaves(g))

    assert total_variance(ours) < 0.5 * total_variance(theirs)


def test_is_a_numpyro_elbo_and_trains_with_svi():
    elbo = infer.TraceGraph_ELBO(num_particles=4)
    assert isinstance(elbo, numpyro.infer.ELBO)
    svi = SVI(model, guide, optax.adam(0.05), loss=elbo)
    result = svi.run(jax.random.key(0), 200, DATA, progress_bar=False)
    assert np.all(np.isfinite(result.losses))
    assert float(result.losses[-50:].mean()) < float(result.losses[:20].mean())


def test_vectorize_particles_false_gives_the_same_numbers():
    g1 = jax.grad(lambda p: infer.TraceGraph_ELBO(4).loss(jax.random.key(5), p, model, guide, DATA))
    g2 = jax.grad(
        lambda p: infer.TraceGraph_ELBO(4, vectorize_particles=False).loss(
            jax.random.key(5), p, model, guide, DATA
        )
    )
    a, b = jax.jit(g1)(PARAMS), jax.jit(g2)(PARAMS)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


SUB_DATA = jnp.array([0.5, -1.0, 2.0, 0.3])
SUB_PARAMS = {"m": jnp.array(0.2), "phi": jnp.array([0.1, -0.4, 0.7, 0.0])}


def sub_model(data):
    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", 4, subsample_size=2) as idx:
        z = numpyro.sample("z", dist.Bernoulli(0.3))
        numpyro.sample("x", dist.Normal(mu + 2.0 * z, 1.0), obs=data[idx])


def sub_guide(data):
    m = numpyro.param("m", 0.2)
    phi = numpyro.param("phi", jnp.array([0.1, -0.4, 0.7, 0.0]))
    numpyro.sample("mu", dist.Normal(m, 0.5))
    with numpyro.plate("data", 4, subsample_size=2) as idx:
        numpyro.sample("z", dist.Bernoulli(logits=phi[idx]))


def sub_exact_loss(p):
    """−ELBO of the full data: z enumerated per point, Gauss–Hermite quadrature for mu."""
    x, w = np.polynomial.hermite_e.hermegauss(40)
    mu = p["m"] + 0.5 * x
    q = jax.nn.sigmoid(p["phi"])
    total = 0.0
    for zv in (0.0, 1.0):
        qz = q if zv else 1 - q
        lp = jnp.log(0.3 if zv else 0.7) + dist.Normal(mu[:, None] + 2 * zv, 1.0).log_prob(SUB_DATA)
        total = total + qz * (lp - jnp.log(qz))
    local = jnp.sum(w[:, None] * total, axis=0) / jnp.sqrt(2 * jnp.pi)
    prior = dist.Normal(0, 2.0).log_prob(mu) - dist.Normal(p["m"], 0.5).log_prob(mu)
    return -(local.sum() + jnp.sum(w * prior) / jnp.sqrt(2 * jnp.pi))


def test_reparameterised_and_subsampled_sites():
    """A Normal guide site (pathwise) and a subsampled plate: unbiased for the full-data ELBO."""
    elbo = infer.TraceGraph_ELBO(num_particles=4)
    grad = jax.grad(lambda p, k: elbo.loss(k, p, sub_model, sub_guide, SUB_DATA))
    grads = estimates(grad, SUB_PARAMS, jax.random.key(6), repeats=4000)
    assert_unbiased(grads, jax.grad(sub_exact_loss)(SUB_PARAMS), k=5, bonferroni=True)


def test_shared_subsample_is_unbiased_and_shares_the_minibatch():
    """``share_subsample=True``: the estimate stays unbiased for the full-data ELBO, and the K
    particles see one minibatch per step (read off the loss below). Without it each particle
    draws its own, as numpyro's do."""
    elbo = infer.TraceGraph_ELBO(num_particles=4, share_subsample=True)
    grad = jax.grad(lambda p, k: elbo.loss(k, p, sub_model, sub_guide, SUB_DATA))
    grads = estimates(grad, SUB_PARAMS, jax.random.key(6), repeats=4000)
    assert_unbiased(grads, jax.grad(sub_exact_loss)(SUB_PARAMS), k=5, bonferroni=True)

    # which minibatch each particle saw, read off the loss: the cost depends on the data point
    # alone (u cancels exactly), so one shared minibatch gives one of two values per key
    data = jnp.array([1.0, 3.0])

    def data_model(data):
        numpyro.sample("u", dist.Normal(0.0, 1.0))
        with numpyro.plate("d", 2, subsample_size=1) as idx:
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=data[idx])

    def data_guide(data):
        numpyro.sample("u", dist.Normal(0.0, 1.0))

    one = -2 * dist.Normal(0.0, 1.0).log_prob(data)  # the loss if all particles saw point i
    for share in (True, False):
        loss = jax.jit(infer.TraceGraph_ELBO(4, share_subsample=share).loss, static_argnums=(2, 3))
        values = np.array(
            [loss(jax.random.key(s), {}, data_model, data_guide, data) for s in range(8)]
        )
        single = np.isclose(values[:, None], np.asarray(one)[None], rtol=1e-6).any(axis=1)
        assert single.all() if share else not single.all(), values
    with pytest.raises(ValueError, match="share_subsample must be True"):
        infer.TraceGraph_ELBO(4, share_subsample="yes")


def test_numpyro_tracegraph_is_biased_under_subsampling():
    """The difference docs/programs.md states: numpyro's TraceGraph_ELBO multiplies a local
    site's *scaled* log q by the scaled downstream cost, so its score term for a subsampled
    site is `scale` (here 2) times too large. If numpyro fixes this, update the docs."""
    elbo = numpyro.infer.TraceGraph_ELBO(num_particles=4)
    grad = jax.grad(lambda p, k: elbo.loss(k, p, sub_model, sub_guide, SUB_DATA))
    grads = estimates(grad, SUB_PARAMS, jax.random.key(6), repeats=2000)
    exact = jax.grad(sub_exact_loss)(SUB_PARAMS)["phi"]
    g = np.asarray(grads["phi"])
    z = (g.mean(0) - exact) / (g.std(0) / np.sqrt(len(g)))
    assert np.max(np.abs(z)) > 8
    np.testing.assert_allclose(g.mean(0)[:2], 2 * exact[:2], rtol=0.3)


def test_model_guide_mismatch_is_reported():
    def bad_guide(data):
        numpyro.sample("z1", dist.Bernoulli(0.5).expand([2, 2]).to_event(1))

    with pytest.raises(Exception, match="z2"):
        infer.TraceGraph_ELBO(2).loss(jax.random.key(0), {}, model, bad_guide, DATA)


FACTOR_DATA = jnp.array([0.2, 1.1, 0.7])


def _factor_model(x):
    with numpyro.plate("data", 3):
        z = numpyro.sample("z", dist.Bernoulli(0.4))
        numpyro.sample("x", dist.Normal(z, 0.5), obs=x)


def _factor_guide(x):
    logits = numpyro.param("logits", jnp.array([-0.5, 0.8, 0.1]))
    a = numpyro.param("a", jnp.array(0.7))
    with numpyro.plate("data", 3):
        z = numpyro.sample("z", dist.Bernoulli(logits=logits))
        numpyro.factor("gf", a * z + a**2)  # counted in log q, as numpyro's ELBOs count it
        numpyro.sample("aux", dist.Normal(a * z, 1.0), obs=x)  # so is an observed guide site


def _factor_neg_elbo(p):
    q1 = jax.nn.sigmoid(p["logits"])
    a = p["a"]

    def cost(z):  # log q(z) + factor + log N(x; a z, 1) − log p(z, x), per element
        log_q = jnp.log(jnp.where(z == 1, q1, 1 - q1))
        log_q = log_q + a * z + a**2 + dist.Normal(a * z, 1.0).log_prob(FACTOR_DATA)
        log_p = jnp.log(jnp.where(z == 1, 0.4, 0.6)) + dist.Normal(z, 0.5).log_prob(FACTOR_DATA)
        return log_q - log_p

    return jnp.sum(q1 * cost(1.0) + (1 - q1) * cost(0.0))


@pytest.mark.parametrize("k", [1, 4])
def test_factor_and_observed_site_in_the_guide_count_in_log_q(k):
    # numpyro's ELBOs add a guide's numpyro.factor (and obs= sites) to log q; so does this one,
    # with both its pathwise derivative in φ and its place downstream of the draw it reads
    p = {"logits": jnp.array([-0.5, 0.8, 0.1]), "a": jnp.array(0.7)}
    elbo = infer.TraceGraph_ELBO(num_particles=k)
    loss = jax.jit(lambda p, key: elbo.loss(key, p, _factor_model, _factor_guide, FACTOR_DATA))
    same = numpyro.infer.Trace_ELBO(num_particles=k)
    key = jax.random.key(5)
    np.testing.assert_allclose(
        loss(p, key), same.loss(key, p, _factor_model, _factor_guide, FACTOR_DATA), rtol=1e-6
    )
    grads = estimates(jax.grad(loss), p, jax.random.key(6), repeats=3000)
    assert_unbiased(grads, jax.grad(_factor_neg_elbo)(p), k=5, bonferroni=True)


def test_constructor_checks():
    with pytest.raises(ValueError, match="num_particles must be at least 1"):
        infer.TraceGraph_ELBO(0)
    with pytest.raises(TypeError, match="mapping from site name"):
        infer.TraceGraph_ELBO(2, estimators=ex.DisARM())


# --------------------------------------------------------------------------- IWELBO


def iw_model(data):
    with numpyro.plate("d", 2):
        z = numpyro.sample("z", dist.Bernoulli(0.4))
        numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=data)


def iw_guide(data):
    phi = numpyro.param("phi", jnp.zeros(2))
    with numpyro.plate("d", 2):
        numpyro.sample("z", dist.Bernoulli(logits=phi))


IW_DATA = jnp.array([0.3, -1.0])
IW_PARAMS = {"phi": jnp.array([0.4, -0.7])}


def exact_iw_bound(params, k):
    """E[log (1/K) Σ_k w_k] by enumerating the K-tuples of the guide's 4 joint states."""
    states = jnp.array(list(itertools.product((0.0, 1.0), repeat=2)))  # (4, 2)
    q = jax.nn.sigmoid(params["phi"])
    log_q = jnp.sum(jnp.where(states > 0, jnp.log(q), jnp.log1p(-q)), axis=1)
    log_p = jnp.sum(
        jnp.where(states > 0, jnp.log(0.4), jnp.log(0.6))
        + dist.Normal(2 * states - 1, 1.0).log_prob(IW_DATA),
        axis=1,
    )
    log_w = log_p - log_q
    total = 0.0
    for idx in itertools.product(range(4), repeat=k):
        idx = jnp.array(idx)
        total = total + jnp.exp(jnp.sum(log_q[idx])) * (
            jax.scipy.special.logsumexp(log_w[idx]) - jnp.log(k)
        )
    return total


@pytest.mark.parametrize("k", [1, 3])
def test_iwelbo_vimco_is_unbiased_for_the_bound(k):
    elbo = infer.IWELBO(num_particles=k)
    assert isinstance(elbo, numpyro.infer.ELBO)
    loss = lambda p, key: elbo.loss(key, p, iw_model, iw_guide, IW_DATA)  # noqa: E731
    grads = estimates(jax.grad(loss), IW_PARAMS, jax.random.key(8), repeats=4000)
    exact = jax.grad(lambda p: -exact_iw_bound(p, k))(IW_PARAMS)
    assert_unbiased(grads, exact, k=5)
    values = estimates(loss, IW_PARAMS, jax.random.key(9), repeats=4000)
    assert_unbiased(values, -exact_iw_bound(IW_PARAMS, k), k=5)


def gauss_model(data):
    mu = numpyro.param("mu", 0.0)
    z = numpyro.sample("z", dist.Normal(mu, 1.0).expand([2]).to_event(1))
    numpyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=data)


def gauss_guide(data):
    m = numpyro.param("m", jnp.zeros(2))
    s = numpyro.param("log_s", jnp.zeros(2))
    numpyro.sample("z", dist.Normal(m, jnp.exp(s)).to_event(1))


def test_dreg_agrees_with_iwae_and_has_higher_snr():
    """DReG and the plain IWAE (pathwise) estimator estimate the same gradient; DReG's
    signal-to-noise ratio for the guide is higher at K = 16 (Tucker et al. 2019)."""
    data = jnp.array([0.8, -0.4])
    params = {"mu": jnp.array(0.1), "m": jnp.array([0.3, -0.1]), "log_s": jnp.array([-0.5, -0.3])}
    out = {}
    for dreg in (False, True):
        elbo = infer.IWELBO(num_particles=16, dreg=dreg)
        loss = lambda p, key, e=elbo: e.loss(key, p, gauss_model, gauss_guide, data)  # noqa: E731
        out[dreg] = estimates(jax.grad(loss), params, jax.random.key(10), repeats=4000)
    for name in params:
        a, b = np.asarray(out[False][name]), np.asarray(out[True][name])
        se = np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 5 * se), name
    snr = lambda g: np.abs(g.mean(0)) / g.std(0)  # noqa: E731
    assert np.all(snr(np.asarray(out[True]["log_s"])) > snr(np.asarray(out[False]["log_s"])))


def test_iwelbo_refusals():
    with pytest.raises(ValueError, match="DReG needs every guide site"):
        infer.IWELBO(4, dreg=True).loss(jax.random.key(0), IW_PARAMS, iw_model, iw_guide, IW_DATA)

    def sub_model(data):
        with numpyro.plate("d", 2, subsample_size=1):
            numpyro.sample("x", dist.Normal(0.0, 1.0), obs=0.0)

    with pytest.raises(ValueError, match="subsampled or scaled plate.*plate="):
        infer.IWELBO(2).loss(jax.random.key(0), {}, sub_model, lambda data: None, IW_DATA)


def exact_per_element_bound(params, k, data=IW_DATA):
    """Σ_i E[log (1/K) Σ_k w_ik]: each element's K-tuples of its own two states enumerated."""
    q = jax.nn.sigmoid(params["phi"])
    total = 0.0
    for i in range(len(data)):
        log_q = jnp.array([jnp.log1p(-q[i]), jnp.log(q[i])])
        log_p = jnp.array([jnp.log(0.6), jnp.log(0.4)]) + dist.Normal(
            jnp.array([-1.0, 1.0]), 1.0
        ).log_prob(data[i])
        log_w = log_p - log_q
        for idx in itertools.product(range(2), repeat=k):
            idx = jnp.array(idx)
            prob = jnp.exp(jnp.sum(log_q[idx]))
            total = total + prob * (jax.scipy.special.logsumexp(log_w[idx]) - jnp.log(k))
    return total


@pytest.mark.parametrize("subsample", [False, True], ids=["full", "subsampled"])
def test_iwelbo_per_element_bound_is_unbiased(subsample):
    """plate='d': a bound per data point (VIMCO on a VAE); with a subsampled plate, the scaled
    minibatch estimate is unbiased for the full data's sum of per-point bounds."""
    size = 1 if subsample else None

    def model(data):
        with numpyro.plate("d", 2, subsample_size=size) as idx:
            z = numpyro.sample("z", dist.Bernoulli(0.4))
            numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=data[idx])

    def guide(data):
        phi = numpyro.param("phi", jnp.zeros(2))
        with numpyro.plate("d", 2, subsample_size=size) as idx:
            numpyro.sample("z", dist.Bernoulli(logits=phi[idx]))

    elbo = infer.IWELBO(num_particles=3, plate="d")
    loss = lambda p, key: elbo.loss(key, p, model, guide, IW_DATA)  # noqa: E731
    grads = estimates(jax.grad(loss), IW_PARAMS, jax.random.key(11), repeats=4000)
    exact = jax.grad(lambda p: -exact_per_element_bound(p, 3))(IW_PARAMS)
    assert_unbiased(grads, exact, k=5)
    values = estimates(loss, IW_PARAMS, jax.random.key(12), repeats=4000)
    assert_unbiased(values, -exact_per_element_bound(IW_PARAMS, 3), k=5)


def test_iwelbo_per_element_refuses_a_site_outside_the_plate():
    with pytest.raises(ValueError, match=r"site 'mu' is outside the plate 'data'"):
        infer.IWELBO(2, plate="data").loss(
            jax.random.key(0), SUB_PARAMS, sub_model, sub_guide, SUB_DATA
        )


def test_iwelbo_subsampled_plate_shares_one_minibatch_across_particles():
    """The K particles of a per-element bound see the same subsampled data points: the values
    of a site in a subsampled plate come from one minibatch (recorded here per particle)."""
    data = jnp.array([-3.0, 0.0, 3.0, 6.0])

    def model(data):
        with numpyro.plate("d", 4, subsample_size=2) as idx:
            numpyro.sample("x", dist.Normal(data[idx], 1.0), obs=data[idx])

    seen = []

    def guide(data):
        with numpyro.plate("d", 4, subsample_size=2) as idx:
            seen.append(idx)

    elbo = infer.IWELBO(num_particles=4, plate="d", vectorize_particles=False)
    with jax.disable_jit():
        elbo.loss(jax.random.key(3), {}, model, guide, data)
    idx = np.stack([np.asarray(i) for i in seen[-4:]])
    assert (idx == idx[0]).all(), idx


def test_same_samples_and_loss_as_numpyro_for_the_same_key():
    """The drop-in contract: an instance of numpyro's TraceGraph_ELBO, and for one key the same
    draws (so the same loss value) as numpyro's, at one particle and at several. Each loss is
    jitted once and run on the three keys (eagerly, op by op, the 24 losses took ~30 s)."""
    assert isinstance(infer.TraceGraph_ELBO(2), numpyro.infer.TraceGraph_ELBO)

    def jitted_loss(elbo, params, m, g, data):
        return jax.jit(lambda key: elbo.loss(key, params, m, g, data))

    problems = [(SUB_PARAMS, sub_model, sub_guide, SUB_DATA), (PARAMS, model, guide, DATA)]
    for k in (1, 4):
        for problem in problems:
            ours = jitted_loss(infer.TraceGraph_ELBO(k), *problem)
            theirs = jitted_loss(numpyro.infer.TraceGraph_ELBO(k), *problem)
            for seed in range(3):
                key = jax.random.key(seed)
                np.testing.assert_allclose(ours(key), theirs(key), rtol=1e-5)


# --------------------------------------------------------------------------- exact sums

MIX_X = jnp.array([-1.5, 0.4, 2.0])


def _mixture(x):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2), 5.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Categorical(probs=jnp.array([0.5, 0.5])))
        numpyro.sample("obs", dist.Normal(mu[z], 1.0), obs=x)


def _mixture_guide(x):
    loc = numpyro.param("loc", jnp.zeros(2))
    phi = numpyro.param("phi", jnp.full((x.shape[0], 2), 0.5))
    numpyro.sample("mu", dist.Normal(loc, 1.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Categorical(probs=phi), infer={"num_samples": 2})


def _mixture_neg_elbo(p):
    """−ELBO in closed form: E over μ ~ N(loc, 1) of log N(x | μ_c, 1) is log N(x | loc_c, 1)
    − 1/2, and KL(N(loc, 1) ‖ N(0, 25)) per component."""
    phi, loc = p["phi"], p["loc"]
    ll = dist.Normal(loc, 1.0).log_prob(MIX_X[:, None]) - 0.5  # (points, 2)
    local = jnp.sum(phi * (jnp.log(phi) - jnp.log(0.5) - ll))
    kl = jnp.sum(jnp.log(5.0) + (1.0 + loc**2) / 50.0 - 0.5)
    return local + kl


def test_sum_and_sample_over_all_values_of_a_plated_site_in_an_elbo():
    """A mixture's assignments summed exactly (SumAndSample with as many draws as clusters),
    evaluated in lockstep over the plate, with the cluster means (pathwise, independent of z)
    reused from the main run: the ELBO's gradient matches the closed form, the assignments'
    part with no sampling noise beyond the means'."""
    params = {
        "loc": jnp.array([-1.0, 1.2]),
        "phi": jnp.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]]),
    }
    elbo = infer.TraceGraph_ELBO(2, estimators={"z": ex.SumAndSample()})

    def loss(p, key):
        return elbo.loss(key, p, _mixture, _mixture_guide, MIX_X)

    grads = estimates(jax.grad(loss), params, jax.random.key(31), repeats=2000)
    exact = jax.grad(_mixture_neg_elbo)(params)
    assert_unbiased(grads["loc"], exact["loc"], k=5, bonferroni=True)

    # each row of phi is a distribution: only the gradient along the simplex (row mean
    # removed) is the objective's; along (1, 1) the estimators differ (a baseline adds b·1)
    # and SVI's simplex transform drops it
    def along(g):
        return g - jnp.mean(g, axis=-1, keepdims=True)

    assert_unbiased(along(grads["phi"]), along(exact["phi"]), k=5, bonferroni=True)
