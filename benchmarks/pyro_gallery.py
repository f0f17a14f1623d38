r"""The ELBO gallery in Pyro 1.9: ``TraceGraph_ELBO`` with Pyro's decaying-average baseline.

The same models as ``benchmarks/gallery_models.py`` written in Pyro, on the same data, from the
same initial parameters, with the same particles, Adam learning rates, step budgets and seeds
(``benchmarks/gallery_data.py``; Pyro's random numbers differ, of course). Every
non-reparameterised guide site carries
``infer={"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}``; the loss is
``pyro.infer.TraceGraph_ELBO(num_particles=K)`` (particles in a loop, Pyro's default), with
argument validation off (numpyro's default) and one torch thread. ``--no-baseline`` drops the
baseline; ``--simplex stickbreaking`` parameterises the mixtures' ``phi`` as numpyro does
(Pyro's own parameter store uses a softmax), to compare the estimators alone.

It exports the trained parameters (model and guide, constrained) at evenly spaced checkpoints
(and at steps 1, 2, 5, 10, 20, 50, ..., where its equal-time budget may end) and its time per
step to a JSON; ``benchmarks/elbo_gallery.py`` evaluates those parameters in numpyro with the
same evaluation key as every other method, so the numbers compare. The time per step is the
median over seeds of the training time (checkpoint export excluded) divided by the steps,
measured in this process alone, on whatever load the machine has.

It runs in its own benchmark-only environment (CPU torch), never in CI nor among the library's
dependencies::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 pyro-ppl numpy scikit-learn
    .venv-bench/bin/python benchmarks/pyro_gallery.py --seeds 100-104  # results/pyro_gallery.json
    .venv-bench/bin/python benchmarks/pyro_gallery.py --quick  # results/pyro_gallery-quick.json

then ``.venv/bin/python benchmarks/elbo_gallery.py`` (with the same ``--quick``/``--seeds``)
merges it into the table. A slow model's seeds may run in two processes, one per core, joined
afterwards (``--join a.json b.json --out c.json``; the time per step is then the median over
all seeds, each taken in its own process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gallery_data as gdata  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
from pyro.distributions import constraints  # noqa: E402
from pyro.infer import SVI, TraceGraph_ELBO  # noqa: E402
from pyro.optim import Adam  # noqa: E402

BASELINE = {"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}

#: how the mixtures' guides parameterise ``phi``: ``"softmax"`` (Pyro's simplex param, through
#: torch's ``transform_to``) or ``"stickbreaking"`` (numpyro's bijection: a free param
#: ``phi_sb`` through ``biject_to(simplex)``, exported as ``phi``), ``--simplex``
SIMPLEX = "softmax"
SIMPLEX_FREE = "_sb"  # the suffix of the free param in the stick-breaking parameterisation
STICK_BREAKING = torch.distributions.biject_to(constraints.simplex)  # numpyro's simplex map


def _simplex_param(name, init):
    """``phi`` drawn by ``init()``, parameterised as :data:`SIMPLEX`."""
    if SIMPLEX == "stickbreaking":
        free = pyro.param(name + SIMPLEX_FREE, lambda: STICK_BREAKING.inv(init()))
        return STICK_BREAKING(free)
    return pyro.param(name, init, constraint=constraints.simplex)


# ---------------------------------------------------------------------------------------------
# The models (as in gallery_models.py); param names and shapes match the numpyro versions.
# ---------------------------------------------------------------------------------------------


class NonreparameterizedBeta(dist.Beta):
    has_rsample = False  # Pyro then samples without a gradient and uses the score function


def coin_model(flips):
    fairness = pyro.sample("latent_fairness", dist.Beta(*gdata.COIN_PRIOR))
    with pyro.plate("data", len(flips)):
        pyro.sample("obs", dist.Bernoulli(fairness), obs=flips)


def coin_guide(flips):
    alpha_q = pyro.param(
        "alpha_q", torch.tensor(gdata.COIN_INIT[0]), constraint=constraints.positive
    )
    beta_q = pyro.param("beta_q", torch.tensor(gdata.COIN_INIT[1]), constraint=constraints.positive)
    pyro.sample("latent_fairness", NonreparameterizedBeta(alpha_q, beta_q), infer=BASELINE)


def mix_weights(beta):
    remaining = torch.cumprod(1 - beta, -1)
    return torch.nn.functional.pad(beta, (0, 1), value=1.0) * torch.nn.functional.pad(
        remaining, (1, 0), value=1.0
    )


def dpm_model(points):
    t = gdata.DPM_T
    with pyro.plate("beta_plate", t - 1):
        beta = pyro.sample("beta", dist.Beta(1.0, gdata.DPM_ALPHA))
    with pyro.plate("mu_plate", t):
        mu = pyro.sample("mu", dist.MultivariateNormal(torch.zeros(2), 5 * torch.eye(2)))
    with pyro.plate("data", len(points)):
        z = pyro.sample("z", dist.Categorical(mix_weights(beta)))
        pyro.sample("obs", dist.MultivariateNormal(mu[z], torch.eye(2)), obs=points)


def dpm_guide(points):
    t, n = gdata.DPM_T, len(points)
    kappa = pyro.param("kappa", lambda: 2 * torch.rand(t - 1), constraint=constraints.positive)
    tau = pyro.param("tau", lambda: 3**0.5 * torch.randn(t, 2))
    phi = _simplex_param("phi", lambda: dist.Dirichlet(torch.ones(t) / t).sample([n]))
    with pyro.plate("beta_plate", t - 1):
        pyro.sample("beta", dist.Beta(torch.ones(t - 1), kappa))
    with pyro.plate("mu_plate", t):
        pyro.sample("mu", dist.MultivariateNormal(tau, torch.eye(2)))
    with pyro.plate("data", n):
        pyro.sample("z", dist.Categorical(phi), infer=BASELINE)


def sbn_model(x):
    b, d = x.shape
    h1, h2 = gdata.SBN_HIDDEN
    p_b2 = pyro.param("p_b2", torch.zeros(h2))
    p_w21 = pyro.param("p_w21", torch.zeros(h2, h1))
    p_b1 = pyro.param("p_b1", torch.zeros(h1))
    p_w10 = pyro.param("p_w10", torch.zeros(h1, d))
    p_b0 = pyro.param("p_b0", torch.zeros(d))
    with pyro.plate("data", b):
        z2 = pyro.sample("z2", dist.Bernoulli(logits=p_b2.expand(b, h2)).to_event(1))
        z1 = pyro.sample("z1", dist.Bernoulli(logits=z2 @ p_w21 + p_b1).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=z1 @ p_w10 + p_b0).to_event(1), obs=x)


def sbn_guide(x):
    b, d = x.shape
    h1, h2 = gdata.SBN_HIDDEN
    q_w01 = pyro.param("q_w01", torch.zeros(d, h1))
    q_b1 = pyro.param("q_b1", torch.zeros(h1))
    q_w12 = pyro.param("q_w12", torch.zeros(h1, h2))
    q_b2 = pyro.param("q_b2", torch.zeros(h2))
    with pyro.plate("data", b):
        z1 = pyro.sample("z1", dist.Bernoulli(logits=x @ q_w01 + q_b1).to_event(1), infer=BASELINE)
        pyro.sample("z2", dist.Bernoulli(logits=z1 @ q_w12 + q_b2).to_event(1), infer=BASELINE)


def coal_model(counts):
    years = len(counts)
    switch = pyro.sample("switch", dist.Categorical(logits=torch.zeros(years)))
    early = pyro.sample("early_rate", dist.Exponential(1.0))
    late = pyro.sample("late_rate", dist.Exponential(1.0))
    rate = torch.where(torch.arange(years) < switch, early, late)
    with pyro.plate("years", years):
        pyro.sample("disasters", dist.Poisson(rate), obs=counts)


def coal_guide(counts):
    logits = pyro.param("switch_logits", torch.zeros(len(counts)))
    pyro.sample("switch", dist.Categorical(logits=logits), infer=BASELINE)
    for name in ("early", "late"):
        loc = pyro.param(f"{name}_loc", torch.tensor(0.0))
        scale = pyro.param(f"{name}_scale", torch.tensor(0.5), constraint=constraints.positive)
        pyro.sample(f"{name}_rate", dist.LogNormal(loc, scale))


def spike_model(x, y):
    n, d = x.shape
    with pyro.plate("features", d):
        included = pyro.sample("included", dist.Bernoulli(gdata.SPIKE_PRIOR_INCLUSION))
        coef = pyro.sample("coef", dist.Normal(0.0, gdata.SPIKE_SLAB_SCALE))
    bias = pyro.sample("bias", dist.Normal(0.0, 5.0))
    logits = bias + x @ (included * coef)
    with pyro.plate("data", n):
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)


def spike_guide(x, y):
    d = x.shape[1]
    incl_logits = pyro.param("incl_logits", torch.zeros(d))
    coef_loc = pyro.param("coef_loc", torch.zeros(d))
    coef_scale = pyro.param("coef_scale", 0.5 * torch.ones(d), constraint=constraints.positive)
    with pyro.plate("features", d):
        pyro.sample("included", dist.Bernoulli(logits=incl_logits), infer=BASELINE)
        pyro.sample("coef", dist.Normal(coef_loc, coef_scale))
    bias_loc = pyro.param("bias_loc", torch.tensor(0.0))
    bias_scale = pyro.param("bias_scale", torch.tensor(0.5), constraint=constraints.positive)
    pyro.sample("bias", dist.Normal(bias_loc, bias_scale))


def _mixture_guide_common(n, k):
    conc = pyro.param("weights_conc", torch.ones(k), constraint=constraints.positive)
    pyro.sample("weights", dist.Dirichlet(conc))
    return _simplex_param("phi", lambda: dist.Dirichlet(torch.ones(k)).sample([n]))


def gmm_model(x):
    n, d = x.shape
    k = gdata.GMM_K
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(k)))
    with pyro.plate("components", k):
        locs = pyro.sample("locs", dist.Normal(torch.zeros(d), 2.0).to_event(1))
        scales = pyro.sample("scales", dist.LogNormal(torch.zeros(d), 1.0).to_event(1))
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[z], scales[z]).to_event(1), obs=x)


def gmm_guide(x):
    n, d = x.shape
    k = gdata.GMM_K
    phi = _mixture_guide_common(n, k)
    pos = constraints.positive
    locs_loc = pyro.param("locs_loc", lambda: torch.randn(k, d))
    locs_scale = pyro.param("locs_scale", lambda: torch.full((k, d), 0.1), constraint=pos)
    scales_loc = pyro.param("scales_loc", lambda: torch.zeros(k, d))
    scales_scale = pyro.param("scales_scale", lambda: torch.full((k, d), 0.1), constraint=pos)
    with pyro.plate("components", k):
        pyro.sample("locs", dist.Normal(locs_loc, locs_scale).to_event(1))
        pyro.sample("scales", dist.LogNormal(scales_loc, scales_scale).to_event(1))
    with pyro.plate("data", n):
        pyro.sample("z", dist.Categorical(phi), infer=BASELINE)


def _bmm_prior(d):
    k = gdata.BMM_K
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(k)))
    with pyro.plate("components", k):
        logits = pyro.sample(
            "logits", dist.Normal(torch.zeros(d), gdata.BMM_LOGIT_SCALE).to_event(1)
        )
    return weights, logits


def bmm_model(pixels):
    n, d = pixels.shape
    weights, logits = _bmm_prior(d)
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("obs", dist.Bernoulli(logits=logits[z]).to_event(1), obs=pixels)


def bmm_guide(pixels):
    n, d = pixels.shape
    k = gdata.BMM_K
    phi = _mixture_guide_common(n, k)
    loc = pyro.param("logits_loc", lambda: 0.5 * torch.randn(k, d))
    scale = pyro.param(
        "logits_scale", lambda: torch.full((k, d), 0.1), constraint=constraints.positive
    )
    with pyro.plate("components", k):
        pyro.sample("logits", dist.Normal(loc, scale).to_event(1))
    with pyro.plate("data", n):
        pyro.sample("z", dist.Categorical(phi), infer=BASELINE)


def mixreg_model(x, y):
    n, d = x.shape
    k = gdata.MIXREG_K
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(k)))
    with pyro.plate("components", k):
        coef = pyro.sample("coef", dist.Normal(torch.zeros(d), 1.0).to_event(1))
        icpt = pyro.sample("icpt", dist.Normal(0.0, 1.0))
        noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", n):
        z = pyro.sample("z", dist.Categorical(weights))
        mean = torch.sum(x * coef[z], dim=-1) + icpt[z]
        pyro.sample("obs", dist.Normal(mean, noise[z]), obs=y)


def mixreg_guide(x, y):
    n, d = x.shape
    k = gdata.MIXREG_K
    pos = constraints.positive
    conc = pyro.param("weights_conc", torch.ones(k), constraint=pos)
    pyro.sample("weights", dist.Dirichlet(conc))
    z_logits = pyro.param("z_logits", lambda: torch.randn(n, k))
    coef_loc = pyro.param("coef_loc", lambda: 0.5 * torch.randn(k, d))
    coef_scale = pyro.param("coef_scale", lambda: torch.full((k, d), 0.1), constraint=pos)
    icpt_loc = pyro.param("icpt_loc", lambda: 0.5 * torch.randn(k))
    icpt_scale = pyro.param("icpt_scale", lambda: torch.full((k,), 0.1), constraint=pos)
    noise_loc = pyro.param("noise_loc", lambda: torch.zeros(k))
    noise_scale = pyro.param("noise_scale", lambda: torch.full((k,), 0.1), constraint=pos)
    with pyro.plate("components", k):
        pyro.sample("coef", dist.Normal(coef_loc, coef_scale).to_event(1))
        pyro.sample("icpt", dist.Normal(icpt_loc, icpt_scale))
        pyro.sample("noise", dist.LogNormal(noise_loc, noise_scale))
    with pyro.plate("data", n):
        pyro.sample("z", dist.Categorical(logits=z_logits), infer=BASELINE)


def outlier_model(x, y):
    n, d = x.shape
    coef = pyro.sample("coef", dist.Normal(torch.zeros(d), 1.0).to_event(1))
    icpt = pyro.sample("icpt", dist.Normal(0.0, 1.0))
    noise = pyro.sample("noise", dist.LogNormal(0.0, 1.0))
    frac = pyro.sample("frac", dist.Beta(1.0, 9.0))
    with pyro.plate("data", n):
        o = pyro.sample("o", dist.Bernoulli(probs=frac))
        scale = torch.where(o > 0.5, torch.tensor(gdata.OUTLIER_SCALE), noise)
        pyro.sample("obs", dist.Normal(x @ coef + icpt, scale), obs=y)


def outlier_guide(x, y):
    n, d = x.shape
    pos = constraints.positive
    o_logits = pyro.param("o_logits", lambda: -1.0 + 0.5 * torch.randn(n))
    coef_loc = pyro.param("coef_loc", lambda: 0.5 * torch.randn(d))
    coef_scale = pyro.param("coef_scale", lambda: torch.full((d,), 0.1), constraint=pos)
    icpt_loc = pyro.param("icpt_loc", lambda: torch.tensor(0.0))
    icpt_scale = pyro.param("icpt_scale", lambda: torch.tensor(0.1), constraint=pos)
    noise_loc = pyro.param("noise_loc", lambda: torch.tensor(0.0))
    noise_scale = pyro.param("noise_scale", lambda: torch.tensor(0.1), constraint=pos)
    frac_a = pyro.param("frac_a", lambda: torch.tensor(1.0), constraint=pos)
    frac_b = pyro.param("frac_b", lambda: torch.tensor(9.0), constraint=pos)
    pyro.sample("coef", dist.Normal(coef_loc, coef_scale).to_event(1))
    pyro.sample("icpt", dist.Normal(icpt_loc, icpt_scale))
    pyro.sample("noise", dist.LogNormal(noise_loc, noise_scale))
    pyro.sample("frac", dist.Beta(frac_a, frac_b))
    with pyro.plate("data", n):
        pyro.sample("o", dist.Bernoulli(logits=o_logits), infer=BASELINE)


def amix_model(pixels, batch):
    n, d = pixels.shape
    weights, logits = _bmm_prior(d)
    with pyro.plate("data", n, subsample_size=batch) as idx:
        z = pyro.sample("z", dist.Categorical(weights))
        pyro.sample("obs", dist.Bernoulli(logits=logits[z]).to_event(1), obs=pixels[idx])


def amix_guide(pixels, batch):
    n, d = pixels.shape
    k = gdata.BMM_K
    conc = pyro.param("weights_conc", torch.ones(k), constraint=constraints.positive)
    pyro.sample("weights", dist.Dirichlet(conc))
    loc = pyro.param("logits_loc", lambda: 0.5 * torch.randn(k, d))
    scale = pyro.param(
        "logits_scale", lambda: torch.full((k, d), 0.1), constraint=constraints.positive
    )
    with pyro.plate("components", k):
        pyro.sample("logits", dist.Normal(loc, scale).to_event(1))
    enc_w = pyro.param("enc_w", lambda: 0.01 * torch.randn(d, k))
    enc_b = pyro.param("enc_b", lambda: torch.zeros(k))
    with pyro.plate("data", n, subsample_size=batch) as idx:
        pyro.sample("z", dist.Categorical(logits=pixels[idx] @ enc_w + enc_b), infer=BASELINE)


def hmm_model(counts):
    with pyro.plate("states", 2):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        stay = pyro.sample("stay", dist.Beta(4.0, 1.0))
    z = pyro.sample("z_0", dist.Bernoulli(probs=torch.tensor(0.5))).long()
    pyro.sample("y_0", dist.Poisson(rate[z]), obs=counts[0])
    for t in range(1, counts.shape[0]):
        to_1 = torch.where(z == 1, stay[1], 1.0 - stay[0])
        z = pyro.sample(f"z_{t}", dist.Bernoulli(probs=to_1)).long()
        pyro.sample(f"y_{t}", dist.Poisson(rate[z]), obs=counts[t])


def hmm_guide(counts):
    years = counts.shape[0]
    pos = constraints.positive
    z_logits = pyro.param("z_logits", lambda: torch.zeros(years))
    rate_loc = pyro.param("rate_loc", lambda: torch.zeros(2))
    rate_scale = pyro.param("rate_scale", lambda: torch.full((2,), 0.1), constraint=pos)
    stay_a = pyro.param("stay_a", lambda: torch.full((2,), 4.0), constraint=pos)
    stay_b = pyro.param("stay_b", lambda: torch.full((2,), 1.0), constraint=pos)
    with pyro.plate("states", 2):
        pyro.sample("rate", dist.LogNormal(rate_loc, rate_scale))
        pyro.sample("stay", dist.Beta(stay_a, stay_b))
    for t in range(years):
        pyro.sample(f"z_{t}", dist.Bernoulli(logits=z_logits[t]), infer=BASELINE)


def _ssvae_net(prefix, x):
    h = gdata.SSVAE_HIDDEN
    out = gdata.SSVAE_OUT[prefix]
    w1 = pyro.param(f"{prefix}_w1", lambda: torch.zeros(x.shape[-1], h))
    b1 = pyro.param(f"{prefix}_b1", lambda: torch.zeros(h))
    w2 = pyro.param(f"{prefix}_w2", lambda: torch.zeros(h, out))
    b2 = pyro.param(f"{prefix}_b2", lambda: torch.zeros(out))
    return torch.nn.functional.softplus(x @ w1 + b1) @ w2 + b2


def _with_label(x, y):
    onehot = torch.nn.functional.one_hot(y.long(), gdata.SSVAE_CLASSES).to(x.dtype)
    return torch.cat([x, onehot], dim=-1)


def ssvae_model(xs_l, ys_l, xs_u, batch):
    zeros = torch.zeros(gdata.SSVAE_Z)
    uniform = dist.Categorical(logits=torch.zeros(gdata.SSVAE_CLASSES))
    with pyro.plate("labelled", xs_l.shape[0]):
        z = pyro.sample("z_l", dist.Normal(zeros, 1.0).to_event(1))
        pyro.sample("y_l", uniform, obs=ys_l)
        logits = _ssvae_net("dec", _with_label(z, ys_l))
        pyro.sample("x_l", dist.Bernoulli(logits=logits).to_event(1), obs=xs_l)
    with pyro.plate("unlabelled", xs_u.shape[0], subsample_size=batch) as idx:
        y = pyro.sample("y_u", uniform)
        z = pyro.sample("z_u", dist.Normal(zeros, 1.0).to_event(1))
        logits = _ssvae_net("dec", _with_label(z, y))
        pyro.sample("x_u", dist.Bernoulli(logits=logits).to_event(1), obs=xs_u[idx])


def _ssvae_encode(x, y):
    out = _ssvae_net("enc", _with_label(x, y))
    return dist.Normal(out[..., : gdata.SSVAE_Z], out[..., gdata.SSVAE_Z :].exp()).to_event(1)


def ssvae_guide(xs_l, ys_l, xs_u, batch):
    with pyro.plate("labelled", xs_l.shape[0]):
        pyro.sample("z_l", _ssvae_encode(xs_l, ys_l))
    with pyro.plate("unlabelled", xs_u.shape[0], subsample_size=batch) as idx:
        x = xs_u[idx]
        y = pyro.sample("y_u", dist.Categorical(logits=_ssvae_net("cls", x)), infer=BASELINE)
        pyro.sample("z_u", _ssvae_encode(x, y))


def models() -> dict:
    t = torch.tensor
    x, y = gdata.breast_cancer_data()
    return {
        "coin": (coin_model, coin_guide, (t(gdata.COIN_FLIPS),)),
        "dpm": (dpm_model, dpm_guide, (t(gdata.dpm_data()),)),
        "sbn": (sbn_model, sbn_guide, (t(gdata.digits_data()),)),
        "coal": (coal_model, coal_guide, (t(gdata.COAL_COUNTS),)),
        "spike": (spike_model, spike_guide, (t(x), t(y))),
        "gmm": (gmm_model, gmm_guide, (t(gdata.iris_data()),)),
        "bmm": (bmm_model, bmm_guide, (t(gdata.digits_data()),)),
        "mixreg": (mixreg_model, mixreg_guide, tuple(t(a) for a in gdata.diabetes_data())),
        "outlier": (outlier_model, outlier_guide, tuple(t(a) for a in gdata.diabetes_data())),
        "hmm": (hmm_model, hmm_guide, (t(gdata.COAL_COUNTS),)),
        "amix": (amix_model, amix_guide, (t(gdata.digits_data()), gdata.AMIX_BATCH)),
        "ssvae": (
            ssvae_model,
            ssvae_guide,
            (*(t(a) for a in gdata.ssvae_data()[:3]), gdata.SSVAE_BATCH),
        ),
    }


# ---------------------------------------------------------------------------------------------


def export() -> dict:
    """The constrained values of the model's and guide's params (not Pyro's baseline state)."""
    store = pyro.get_param_store()
    out = {}
    for k in store.keys():
        if k.startswith("__"):
            continue
        value = store[k].detach()
        if SIMPLEX == "stickbreaking" and k.endswith(SIMPLEX_FREE):
            k, value = k[: -len(SIMPLEX_FREE)], STICK_BREAKING(value)
        out[k] = np.round(value.numpy().astype(np.float64), 7).tolist()
    return out


def train(key, model, guide, args, k, lr, b1, steps, seed, grid):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    pyro.poutine.trace(guide).get_trace(*args)  # creates the params (and their constraints)
    pyro.poutine.trace(model).get_trace(*args)
    store = pyro.get_param_store()
    for name, value in gdata.initial_params(key, seed).items():
        value = torch.tensor(value)  # the seed's shared initial value, constrained
        if SIMPLEX == "stickbreaking" and name + SIMPLEX_FREE in store.keys():
            name, value = name + SIMPLEX_FREE, STICK_BREAKING.inv(value)
        store[name] = value
    svi = SVI(model, guide, Adam({"lr": lr, "betas": (b1, 0.999)}), loss=TraceGraph_ELBO(k))
    ckpts, done, train_s = {}, 0, 0.0
    for g in grid:
        t0 = time.perf_counter()
        for _ in range(g - done):
            svi.step(*args)
        train_s += time.perf_counter() - t0
        done = g
        ckpts[g] = export()
    return ckpts, train_s / max(done, 1)


def join(paths: list[str], out: str) -> None:
    """One JSON from runs of the same models on disjoint seeds (``--join``; e.g. two processes
    on two cores): seeds and checkpoints concatenated in the order given, the time per step
    the median over all seeds."""
    blobs = []
    for path in paths:
        with open(path) as f:
            blobs.append(json.load(f))
    result = dict(blobs[0], seeds=[s for b in blobs for s in b["seeds"]], models={})
    result["total_s"] = sum(b["total_s"] for b in blobs)
    for name, first in blobs[0]["models"].items():
        runs = [b["models"][name] for b in blobs]
        times = [t for r in runs for t in r["seed_step_s"]]
        result["models"][name] = dict(
            first,
            seeds=[s for r in runs for s in r["seeds"]],
            step_s=statistics.median(times),
            seed_step_s=times,
            checkpoints={
                g: [p for r in runs for p in r["checkpoints"][g]] for g in first["checkpoints"]
            },
        )
    with open(out, "w") as f:
        json.dump(result, f)
    print(f"wrote {out}: seeds {result['seeds']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", default=None, help="e.g. 100-104 (headline) or 0-4")
    ap.add_argument("--models", default=None, help="subset, e.g. coin,dpm")
    ap.add_argument("--curve-points", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--no-baseline",
        action="store_true",
        help="Pyro's TraceGraph_ELBO without its decaying average (infer={} at every site), to "
        "separate the baseline from the rest of Pyro's estimator",
    )
    ap.add_argument(
        "--simplex",
        choices=("softmax", "stickbreaking"),
        default="softmax",
        help="the mixtures' phi: Pyro's softmax parameterisation (default) or numpyro's "
        "stick-breaking one, to compare estimators without the difference",
    )
    ap.add_argument(
        "--join",
        nargs="+",
        metavar="JSON",
        help="instead of training: join these runs of the same models on disjoint seeds into "
        "--out (seeds in the order given; time per step the median over all seeds)",
    )
    args = ap.parse_args()
    if args.join:
        if not args.out:
            ap.error("--join needs --out")
        return join(args.join, args.out)
    global BASELINE, SIMPLEX
    SIMPLEX = args.simplex  # the guides read the module's globals when they run
    if args.no_baseline:
        BASELINE = {}
    seeds = []
    for part in (args.seeds or ("0-1" if args.quick else "100-104")).split(","):
        a, _, b = part.partition("-")
        seeds += list(range(int(a), int(b or a) + 1))
    points = 10 if args.quick else args.curve_points
    out = args.out or os.path.join(
        HERE, "results", "pyro_gallery" + ("-quick" if args.quick else "") + ".json"
    )
    torch.set_num_threads(1)  # small tensors: threads only contend on a shared machine
    # numpyro does not validate distribution arguments by default; Pyro does (and it costs ~40%
    # of a small model's step): off, so that the times compare like for like
    pyro.enable_validation(False)
    keep = set(args.models.split(",")) if args.models else None
    table = models()
    result = {
        "versions": {"pyro": pyro.__version__, "torch": torch.__version__},
        "settings": {
            "validation": False,
            "torch_threads": 1,
            "vectorize_particles": False,
            "baseline": BASELINE.get("baseline"),
            "simplex": SIMPLEX,
        },
        "seeds": seeds,
        "quick": args.quick,
        "models": {},
    }
    t_all = time.perf_counter()
    for name, key, k, lr, b1, steps in gdata.GALLERY:
        if keep and key not in keep:
            continue
        if args.quick:
            if name not in gdata.QUICK_ROWS:
                continue
            steps = gdata.quick_steps(steps)
        model, guide, data_args = table[key]
        grid = gdata.checkpoints(steps, points, early=True)
        runs, times = [], []
        for seed in seeds:
            ckpts, step_s = train(key, model, guide, data_args, k, lr, b1, steps, seed, grid)
            runs.append(ckpts)
            times.append(step_s)
        step_s = statistics.median(times)
        result["models"][name] = {
            "seeds": seeds,
            "particles": k,
            "lr": lr,
            "steps": steps,
            "step_s": step_s,
            "seed_step_s": times,
            "checkpoints": {str(g): [r[g] for r in runs] for g in grid},
        }
        print(f"{name}: {1e3 * step_s:.2f} ms/step, {len(seeds)} seeds x {steps} steps", flush=True)
    result["total_s"] = time.perf_counter() - t_all
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f)
    print(f"wrote {out} ({result['total_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
