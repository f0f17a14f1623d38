"""``expectax svi`` (a sigmoid belief network trained with numpyro.infer.SVI) and the exactness
of expectax's ``TraceGraph_ELBO`` gradient on tiny SBNs.

Exact gradients come from enumeration: numpyro's ``TraceEnum_ELBO`` with every guide site
enumerated (funsor) for an SBN with one site per unit, and a brute-force sum over all latent
configurations for the application's own model (one site per layer, ``.to_event(1)``), each
checked against the other where both apply.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased, estimates
from numpyro import handlers

import expectax as ex
from expectax.infer import TraceGraph_ELBO
from expectax.vi import svi
from expectax.vi.sbn import log_weights, make_sbn

H1, H2, D = 2, 2, 3  # the application's (layered) SBN
#: the per-unit SBN for TraceEnum_ELBO: numpyro 0.22's guide-side enumeration fails (a reshape
#: error inside funsor's to_funsor) as soon as two top-layer units feed a bottom unit, so the
#: top layer has one unit there; the layered test covers 2 × 2 by brute force.
UH1, UH2 = 2, 1
X = jnp.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])  # 2 data points


def _params(seed=0, h1=H1, h2=H2):
    keys = jax.random.split(jax.random.key(seed), 9)
    shapes = {
        "p_b2": (h2,),
        "p_w21": (h2, h1),
        "p_b1": (h1,),
        "p_w10": (h1, D),
        "p_b0": (D,),
        "q_w01": (D, h1),
        "q_b1": (h1,),
        "q_w12": (h1, h2),
        "q_b2": (h2,),
    }
    return {
        n: 0.8 * jax.random.normal(k, s) for k, (n, s) in zip(keys, shapes.items(), strict=True)
    }


# --------------------------------------------------------------------------- per-unit SBN


def unit_model(x):
    p = {n: numpyro.param(n, None) for n in ("p_b2", "p_w21", "p_b1", "p_w10", "p_b0")}
    with numpyro.plate("data", x.shape[0]):
        z2 = [numpyro.sample(f"z2_{j}", dist.Bernoulli(logits=p["p_b2"][j])) for j in range(UH2)]
        z1 = []
        for i in range(UH1):
            logit = p["p_b1"][i] + sum(z2[j] * p["p_w21"][j, i] for j in range(UH2))
            z1.append(numpyro.sample(f"z1_{i}", dist.Bernoulli(logits=logit)))
        logits = p["p_b0"] + sum(z1[i][..., None] * p["p_w10"][i] for i in range(UH1))
        numpyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def unit_guide(x, enumerate=False):
    q = {n: numpyro.param(n, None) for n in ("q_w01", "q_b1", "q_w12", "q_b2")}
    infer = {"enumerate": "parallel"} if enumerate else {}
    with numpyro.plate("data", x.shape[0]):
        z1 = []
        for i in range(UH1):
            logit = x @ q["q_w01"][:, i] + q["q_b1"][i]
            z1.append(numpyro.sample(f"z1_{i}", dist.Bernoulli(logits=logit), infer=infer))
        for j in range(UH2):
            logit = q["q_b2"][j] + sum(z1[i] * q["q_w12"][i, j] for i in range(UH1))
            numpyro.sample(f"z2_{j}", dist.Bernoulli(logits=logit), infer=infer)


def _enum_guide(x):
    return unit_guide(x, enumerate=True)


def _unit_exact_loss(params):
    from numpyro.infer import TraceEnum_ELBO

    return TraceEnum_ELBO().loss(jax.random.key(0), params, unit_model, _enum_guide, X)


def _brute_force_loss(model, guide, params, args, site_shapes):
    """−ELBO by summing over every latent configuration (the same one for all data points:
    the ELBO is a sum of per-point terms, each computed over all configurations)."""
    total = 0.0
    names = list(site_shapes)
    sizes = [int(np.prod(site_shapes[n])) for n in names]
    for bits in itertools.product((0.0, 1.0), repeat=sum(sizes)):
        values, pos = {}, 0
        for n, s in zip(names, sizes, strict=True):
            v = jnp.array(bits[pos : pos + s]).reshape(site_shapes[n])
            values[n] = jnp.broadcast_to(v, (X.shape[0], *site_shapes[n]))
            pos += s
        g = handlers.substitute(handlers.condition(guide, data=values), data=params)
        m = handlers.substitute(handlers.condition(model, data=values), data=params)
        g_tr = handlers.trace(g).get_trace(*args)
        m_tr = handlers.trace(m).get_trace(*args)
        lq = sum(s["fn"].log_prob(s["value"]) for s in g_tr.values() if s["type"] == "sample")
        lp = sum(s["fn"].log_prob(s["value"]) for s in m_tr.values() if s["type"] == "sample")
        total = total + jnp.sum(jnp.exp(lq) * (lp - lq))
    return -total


UNIT_SITES = [f"z1_{i}" for i in range(UH1)] + [f"z2_{j}" for j in range(UH2)]
LAYERED_SHAPES = {"z1": (H1,), "z2": (H2,)}


@functools.cache
def _unit_exact():
    """(−ELBO, its gradient) of the per-unit SBN at ``_params(0)`` by TraceEnum_ELBO, jitted
    and computed once per process (eagerly, funsor's many small ops took ~10 s per test)."""
    return jax.jit(jax.value_and_grad(_unit_exact_loss))(_params(0, UH1, UH2))


@functools.cache
def _layered_exact():
    """(−ELBO, its gradient) of the application's SBN at ``_params(1)`` by brute force, jitted
    and computed once per process."""
    model, guide = make_sbn(D, (H1, H2))
    args = (X, X.shape[0])
    loss = functools.partial(_brute_force_loss, model, guide, args=args, site_shapes=LAYERED_SHAPES)
    return jax.jit(jax.value_and_grad(lambda p: loss(params=p)))(_params(1))


CONFIGS = {
    "default": lambda sites: None,
    "disarm": lambda sites: {s: ex.DisARM() for s in sites},
    "relax": lambda sites: {s: ex.RELAX() for s in sites},
}


def test_trace_enum_is_the_exact_elbo():
    params = _params(0, UH1, UH2)
    exact, g_enum = _unit_exact()
    shapes = {s: () for s in UNIT_SITES}
    brute, g_brute = jax.jit(
        jax.value_and_grad(lambda p: _brute_force_loss(unit_model, unit_guide, p, (X,), shapes))
    )(params)
    np.testing.assert_allclose(exact, brute, rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(g_enum[name], g_brute[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_unit_sbn_gradient_matches_trace_enum(config):
    params = _params(0, UH1, UH2)
    exact = _unit_exact()[1]
    elbo = TraceGraph_ELBO(num_particles=4, estimators=CONFIGS[config](UNIT_SITES))

    def grad(p, key):
        return jax.grad(lambda q: elbo.loss(key, q, unit_model, unit_guide, X))(p)

    grads = estimates(grad, params, jax.random.key(1), repeats=3000)
    assert_unbiased(grads, exact, k=5, name=f"unit SBN, {config}")


# --------------------------------------------------------------------------- the app's SBN


@pytest.mark.parametrize("config", list(CONFIGS))
def test_layered_sbn_gradient_matches_enumeration(config):
    """The application's model (one site per layer, DisARM/RELAX per layer) is unbiased."""
    model, guide = make_sbn(D, (H1, H2))
    params = _params(1)
    n = X.shape[0]
    exact = _layered_exact()[1]
    elbo = TraceGraph_ELBO(num_particles=4, estimators=CONFIGS[config](("z1", "z2")))

    def grad(p, key):
        return jax.grad(lambda q: elbo.loss(key, q, model, guide, X, n))(p)

    grads = estimates(grad, params, jax.random.key(2), repeats=3000)
    assert_unbiased(grads, exact, k=5, name=f"layered SBN, {config}")


def test_log_weights_mean_is_the_elbo():
    model, guide = make_sbn(D, (H1, H2))
    params = _params(1)
    lw = log_weights(model, guide, params, X, jax.random.key(3), 20000)
    exact = -_layered_exact()[0]
    se = float(jnp.std(lw.sum(axis=1)) / np.sqrt(lw.shape[0]))
    assert abs(float(lw.sum(axis=1).mean()) - float(exact)) < 5 * se


def test_make_elbo_and_evaluations():
    import numpyro.infer

    assert isinstance(svi.make_elbo("numpyro", 2), numpyro.infer.TraceGraph_ELBO)
    for name in ("default", "rloo", "disarm", "relax"):
        assert isinstance(svi.make_elbo(name, 2), TraceGraph_ELBO)
    from expectax.infer import IWELBO

    assert isinstance(svi.make_elbo("vimco", 2), IWELBO)
    assert [svi.evaluations(e, 2) for e in svi.ELBOS] == [2, 2, 2, 10, 14, 2]
    with pytest.raises(ValueError, match="--elbo must be one of"):
        svi.make_elbo("nope", 2)


# --------------------------------------------------------------------------- the command


def _args(*argv):
    return svi.configure_parser(argparse.ArgumentParser()).parse_args(list(argv))


def test_cli_smoke(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "--elbo", "disarm", "--num-particles", "2", "--steps", "3",
        "--batch-size", "10", "--hidden", "3", "2", "--variance-samples", "3",
        "--test-samples", "3", "--train-samples", "2", "--seed", "0", "--out", str(out),
        "--quiet", "--json",
    ]  # fmt: skip
    assert svi.run(_args(*argv)) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [g["elbo"] for g in summary["groups"]] == ["disarm"]
    for r in summary["runs"]:
        assert r["status"] == "ok" and r["steps"] == 3
        assert np.isfinite(r["test_iw"]) and r["test_iw"] < 0
        assert r["grad_var_init"] > 0
    assert (out / "summary.csv").exists() and (out / "log.csv").exists()
    # an earlier run is never overwritten silently
    assert svi.run(_args(*argv)) == 2
    assert "already holds an earlier run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--elbo", "nope"], "--elbo: invalid choice 'nope'"),
        (["--elbo", "rlo"], "did you mean 'rloo'?"),
        (["--seed", "1", "1"], "lists a seed twice"),
        (["--elbo", "rloo", "--num-particles", "1"], "needs at least 2"),
        (["--batch-size", "5000"], "exceeds the 1500 training images"),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, message):
    from expectax.cli import main

    assert main(["svi", *argv, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()  # no empty folder left behind
