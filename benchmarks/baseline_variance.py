r"""Gradient variance of the ELBO's baselines through SVI, against Pyro's decaying average.

Issue 18, item 3's goal: expectax's baselines carried through SVI have **gradient variance at
or below Pyro 1.9's decaying-average baseline at 1, 2 and 8 particles on the coin and the
SBN**. For each model and K ∈ {1, 2, 8} it measures, at one fixed point θ*, the
per-coordinate variance of the gradient of ``−ELBO``, summed over the *guide's* parameters in
the unconstrained coordinates SVI optimises (``log α``, ``log β`` of the coin's Beta; the
SBN's guide weights and biases as they are), of

(a) ``numpyro.infer.TraceGraph_ELBO(K)`` (no baseline),
(b) ``expectax.infer.TraceGraph_ELBO(K)``, the default (``WeightedLeaveOneOut`` over the K
    particles) without the wrapper,
(c) the same with ``expectax.infer.with_baselines(guide)``: the decaying averages of earlier
    steps (rate 0.9), carried in numpyro's mutable state, join the baseline,
(d) Pyro 1.9's ``TraceGraph_ELBO(K)`` with
    ``infer={"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}`` at every
    non-reparameterised guide site (``benchmarks/pyro_baseline_variance.py``, run in the
    benchmark-only environment ``.venv-bench``).

**How every method sees the same parameters and a warmed-up baseline.**

1. θ* (model and guide parameters) per model: 300 steps of numpyro SVI with (c) at 2 particles
   and the gallery's Adam (coin: lr 5e-4, b1 0.93; SBN: lr 3e-3) from the gallery's initial
   parameters of seed 0 (``gallery_data.initial_params``), SVI key 0. The SBN is the gallery's:
   64 → 32 → 16 on all 1,797 binarised digits, full batch. θ* is written, as float32 values
   in the constrained space, to ``results/baseline_variance.params.json`` with a fingerprint.
2. (a) and (b) are stateless: R independent estimates at θ* on independent keys.
3. (c) and (d) keep state. Each runs one chain at θ*, with the parameters never updated: 300
   warm-up steps (the loss and its gradient, the baseline state carried forward exactly as in
   SVI: expectax through ``loss_with_mutable_state``'s mutable state, Pyro through its param
   store, which ``loss_and_grads`` updates per particle), then R measured steps that carry the
   state on in the same way. Both baselines have therefore seen the same 300 steps, at the
   same parameters, before the first measurement, and are stationary by then (rate 0.9: a
   memory of about 10 steps). Pyro reads θ* from the JSON, so both evaluate at identical
   float32 values.

Each cell: ``V = Σ_p Var(g_p)`` from R estimates (R = 1,000 on the coin; 300 on the SBN, for
time, where the SE is still about 1 % of V), and its standard error, the SE of the mean
of the per-repeat sums ``s_r = Σ_p (g_rp − ḡ_p)²``. Successive steps of a chain share the
baseline state, so for (c) and (d) the SE is the larger of that and a batch-means SE (20
batches). Ratios are to Pyro's V, with the SE of the ratio by the delta method.

**Unbiasedness of (c) on the coin**: 2,000 *independent* chains (300 warm-up steps at θ*,
then one gradient each), their mean against the closed-form gradient of −ELBO
(``gallery_models.coin_exact_neg_elbo``: Beta-Bernoulli, digamma moments) in the same
coordinates; a z-score per coordinate.

Usage (the numpyro side runs Pyro's script as a subprocess when ``.venv-bench`` exists)::

    .venv/bin/python benchmarks/baseline_variance.py            # everything, ~10 min on 2 cores
    .venv-bench/bin/python benchmarks/pyro_baseline_variance.py # Pyro alone (reads θ*)

Output: a Markdown table on stdout and in ``results/baseline_variance.md``; all numbers in
``results/baseline_variance.json`` (Pyro's in ``results/baseline_variance.pyro.json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gallery_data as gdata  # noqa: E402
import gallery_models as gm  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.distributions import constraints  # noqa: E402
from numpyro.distributions.transforms import biject_to  # noqa: E402
from numpyro.infer import SVI  # noqa: E402

ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
PARAMS_JSON = os.path.join(RESULTS, "baseline_variance.params.json")
PYRO_JSON = os.path.join(RESULTS, "baseline_variance.pyro.json")
OUT_JSON = os.path.join(RESULTS, "baseline_variance.json")
OUT_MD = os.path.join(RESULTS, "baseline_variance.md")

PARTICLES = (1, 2, 8)
WARMUP = 300  # SVI steps to θ*, and warm-up steps of every stateful baseline at θ*
THETA_PARTICLES = 2  # particles of the SVI run that gives θ*
#: R per cell. The SBN has 300, not 1000, for time: Pyro's step at K = 8 on 1,797 images takes
#: ~0.25 s on a loaded 2-core machine, and at R = 300 the SE is already ~1 % of V.
REPEATS = {"coin": 1000, "sbn": 300}
UNBIASED_CHAINS = 2000
BATCHES = 20  # batch means for the chains' SE
#: every seed of the run (jax.random.key(seed); Pyro: pyro.set_rng_seed(seed + 10 K + model))
SEEDS = {
    "init": 0,  # gallery_data.initial_params(model, 0)
    "svi": 0,  # the SVI run to θ*
    "numpyro": 1,  # (a)
    "default": 2,  # (b)
    "stateful": 3,  # (c)
    "unbiased": 4,  # (c)'s independent chains on the coin
    "pyro": 5,  # (d), in pyro_baseline_variance.py
}
METHODS = ("numpyro", "default", "stateful", "pyro")
LABELS = {
    "numpyro": "numpyro TraceGraph_ELBO",
    "default": "expectax default",
    "stateful": "expectax + with_baselines",
    "pyro": "Pyro decaying avg (β 0.9)",
}


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def models() -> dict:
    digits = jnp.asarray(gdata.digits_data())
    sbn_model, sbn_guide = gm.sbn(np.asarray(digits))
    lr = {key: (lr, b1) for _, key, _, lr, b1, _ in gdata.GALLERY}
    return {
        "coin": dict(
            model=gm.coin_model,
            guide=gm.coin_guide,
            args=(jnp.asarray(gdata.COIN_FLIPS),),
            lr=lr["coin"],
            chunk=2000,
        ),
        "sbn": dict(
            model=sbn_model,
            guide=sbn_guide,
            args=(digits, digits.shape[0]),
            lr=lr["sbn"],
            chunk=25,
        ),
    }


def param_sites(fn, args, params) -> dict:
    """``{name: constraint}`` of the ``param`` sites of ``fn``."""
    tr = handlers.trace(handlers.seed(handlers.substitute(fn, data=params), 0)).get_trace(*args)
    return {
        n: s["kwargs"].get("constraint", constraints.real)
        for n, s in tr.items()
        if s["type"] == "param"
    }


def theta_star(m: dict, key: str):
    """θ*: 300 SVI steps of (c) at 2 particles from the gallery's initial parameters."""
    import expectax.infer as xi

    init = {k: jnp.asarray(v) for k, v in gdata.initial_params(key, SEEDS["init"]).items()}
    lr, b1 = m["lr"]
    svi = SVI(
        m["model"],
        xi.with_baselines(m["guide"]),
        optax.adam(lr, b1=b1),
        loss=xi.TraceGraph_ELBO(THETA_PARTICLES),
    )
    state = svi.init(jax.random.key(SEEDS["svi"]), *m["args"], init_params=init)
    args = m["args"]
    run = jax.jit(lambda s: jax.lax.fori_loop(0, WARMUP, lambda i, s: svi.update(s, *args)[0], s))
    state = run(state)
    return {k: np.asarray(v, np.float32) for k, v in svi.get_params(state).items()}


def fingerprint(params_json: dict) -> str:
    text = json.dumps(params_json, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Gradients at θ*, in the unconstrained coordinates of the guide's parameters
# ---------------------------------------------------------------------------------------------


class Point:
    """θ* of one model: the fixed model parameters and the guide's unconstrained ones."""

    def __init__(self, m: dict, theta: dict):
        self.m = m
        theta = {k: jnp.asarray(v) for k, v in theta.items()}
        self.guide_constraints = param_sites(m["guide"], m["args"], theta)
        self.fixed = {k: v for k, v in theta.items() if k not in self.guide_constraints}
        self.u = {k: biject_to(c).inv(theta[k]) for k, c in sorted(self.guide_constraints.items())}

    def params(self, u: dict) -> dict:
        out = dict(self.fixed)
        out.update({k: biject_to(c)(u[k]) for k, c in self.guide_constraints.items()})
        return out


def flat(g: dict) -> jax.Array:
    return jnp.concatenate([jnp.ravel(g[k]) for k in sorted(g)])


def stateless_grads(point: Point, elbo, keys) -> np.ndarray:
    """R independent gradients ``(R, P)`` of ``elbo.loss`` at θ*."""
    m = point.m

    def grad(key):
        g = jax.grad(lambda u: elbo.loss(key, point.params(u), m["model"], m["guide"], *m["args"]))(
            point.u
        )
        return flat(g)

    fn = jax.jit(lambda ks: jax.lax.map(grad, ks, batch_size=m["chunk"]))
    return np.asarray(fn(keys))


def stateful_step(point: Point, elbo, wrapped):
    m = point.m

    def step(mutable, key):
        def loss(u):
            pm = {**point.params(u), **mutable}
            out = elbo.loss_with_mutable_state(key, pm, m["model"], wrapped, *m["args"])
            return out["loss"], out["mutable_state"]

        g, new = jax.grad(loss, has_aux=True)(point.u)
        return new, flat(g)

    return step


def initial_mutable(point: Point, wrapped, elbo) -> dict:
    m = point.m
    svi = SVI(m["model"], wrapped, optax.sgd(0.0), loss=elbo)
    state = svi.init(jax.random.key(0), *m["args"], init_params=point.params(point.u))
    return state.mutable_state


def stateful_chain(point: Point, k: int, key, repeats: int) -> tuple[np.ndarray, int]:
    """One chain at θ*: WARMUP steps, then ``repeats`` measured ones; ``(grads, count)``."""
    import expectax.infer as xi

    elbo = xi.TraceGraph_ELBO(k)
    wrapped = xi.with_baselines(point.m["guide"])
    step = stateful_step(point, elbo, wrapped)
    mutable = initial_mutable(point, wrapped, elbo)
    k_warm, k_meas = jax.random.split(key)

    @jax.jit
    def run(mutable):
        mutable, _ = jax.lax.scan(
            lambda s, kk: (step(s, kk)[0], None), mutable, jax.random.split(k_warm, WARMUP)
        )
        return jax.lax.scan(step, mutable, jax.random.split(k_meas, repeats))

    mutable, grads = run(mutable)
    count = jax.tree_util.tree_leaves(
        {n: s["count"] for n, s in mutable[xi.BASELINE_STATE].items()}
    )
    return np.asarray(grads), int(count[0])


def independent_chains(point: Point, k: int, key, chains: int) -> np.ndarray:
    """``chains`` independent chains (WARMUP steps, then one gradient each): ``(chains, P)``."""
    import expectax.infer as xi

    elbo = xi.TraceGraph_ELBO(k)
    wrapped = xi.with_baselines(point.m["guide"])
    step = stateful_step(point, elbo, wrapped)
    mutable = initial_mutable(point, wrapped, elbo)

    def chain(kc):
        s, _ = jax.lax.scan(
            lambda s, kk: (step(s, kk)[0], None), mutable, jax.random.split(kc, WARMUP)
        )
        return step(s, jax.random.fold_in(kc, WARMUP))[1]

    return np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(key, chains)))


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def summed_variance(g: np.ndarray, chain: bool) -> dict:
    """``V = Σ_p Var(g_p)`` and its SE (for a chain: max of iid and batch-means SE)."""
    g = np.asarray(g, np.float64)
    r = g.shape[0]
    s = np.sum((g - g.mean(0)) ** 2, axis=1) * r / (r - 1)
    v = float(s.mean())
    se_iid = float(s.std(ddof=1) / math.sqrt(r))
    out = {"V": v, "SE": se_iid, "SE_iid": se_iid, "R": r}
    if chain:
        b = r // BATCHES
        means = s[: b * BATCHES].reshape(BATCHES, b).mean(1)
        se_bm = float(means.std(ddof=1) / math.sqrt(BATCHES))
        out["SE_batch_means"] = se_bm
        out["SE"] = max(se_iid, se_bm)
    return out


def ratio(x: dict, y: dict) -> tuple[float, float]:
    r = x["V"] / y["V"]
    return r, r * math.hypot(x["SE"] / x["V"], y["SE"] / y["V"])


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def fmt(v: float, se: float) -> str:
    if not math.isfinite(v):
        return "—"
    exp = math.floor(math.log10(abs(v))) if v else 0
    if -2 <= exp <= 3:
        d = max(0, 2 - exp)
        return f"{v:.{d}f} ± {se:.{d}f}"
    scale = 10.0**exp
    return f"({v / scale:.2f} ± {se / scale:.2f})e{exp}"


def _g(x: float, digits: int) -> str:
    """``digits`` significant digits, trailing zeros kept (1.00), no bare trailing point."""
    return f"{x:#.{digits}g}".rstrip(".")


def markdown(res: dict) -> str:
    meta = res["meta"]
    lines = [
        "Gradient variance of −ELBO at θ*, summed over the guide's parameters (unconstrained "
        "coordinates), ± its standard error; ratios to Pyro's decaying average (< 1: below "
        "Pyro).",
        "",
        "| model | K | R | (a) numpyro | (b) expectax default | (c) + with_baselines "
        "| (d) Pyro decaying avg | (a)/(d) | (b)/(d) | **(c)/(d)** |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in res["cells"]:
        for k in PARTICLES:
            c = res["cells"][key].get(str(k))
            if c is None:
                continue
            row = [key, str(k), str(c["stateful"]["R"])]
            row += [fmt(c[mth]["V"], c[mth]["SE"]) if mth in c else "—" for mth in METHODS]
            for mth in ("numpyro", "default", "stateful"):
                if "pyro" in c:
                    r, se = ratio(c[mth], c["pyro"])
                    cell = f"{_g(r, 3)} ± {_g(se, 2)}"
                    row.append(f"**{cell}**" if mth == "stateful" else cell)
                else:
                    row.append("—")
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    pyro = res.get("pyro_meta")
    lines.append(
        f"θ*: {WARMUP} Adam steps of (c) at K = {THETA_PARTICLES} from the gallery's seed-0 "
        f"initial parameters (SVI key {SEEDS['svi']}); (c) and (d) each warmed by {WARMUP} "
        "steps at θ* (parameters fixed), then measured on the same chain. Seeds: "
        + ", ".join(f"{k} {v}" for k, v in SEEDS.items())
        + " (a cell's key: fold_in(key(seed), 10 K); Pyro's seed: 5 + 10 K + model index)"
        + f". jax {meta['jax']}, numpyro {meta['numpyro']}"
        + (f", Pyro {pyro['pyro']}, torch {pyro['torch']}" if pyro else "")
        + f"; θ* fingerprint {meta['fingerprint']}."
    )
    if res.get("pyro_note"):
        lines += ["", res["pyro_note"]]
    verdict = goal_lines(res)
    if verdict:
        lines += [""] + verdict
    ub = res.get("unbiased")
    if ub:
        lines += [
            "",
            "Unbiasedness of (c) on the coin (independent chains, mean vs closed form):",
            "",
        ]
        lines += [
            "| K | chains | coordinate | mean | exact | z |",
            "|---:|---:|---|---:|---:|---:|",
        ]
        for k, u in ub.items():
            for i, name in enumerate(u["coords"]):
                lines.append(
                    f"| {k} | {u['chains']} | {name} | {u['mean'][i]:.4f} | "
                    f"{u['exact'][i]:.4f} | {u['z'][i]:+.2f} |"
                )
    return "\n".join(lines) + "\n"


def goal_lines(res: dict) -> list[str]:
    out = []
    for key, cells in res["cells"].items():
        for k, c in cells.items():
            if "pyro" not in c:
                continue
            r, se = ratio(c["stateful"], c["pyro"])
            if r > 1 + 2 * se:
                out.append(
                    f"- **{key}, K = {k}: (c) is above Pyro's variance**, "
                    f"{_g(r, 3)}× ± {_g(se, 2)}."
                )
            elif r > 1:
                out.append(
                    f"- {key}, K = {k}: (c) is {_g(r, 3)}× Pyro's (± {_g(se, 2)}: within 2 SE)."
                )
    if not out and any("pyro" in c for cells in res["cells"].values() for c in cells.values()):
        out.append("- (c) is at or below Pyro's variance in every cell.")
    return out


# ---------------------------------------------------------------------------------------------


def run_pyro(python: str, args) -> None:
    cmd = [python, os.path.join(HERE, "pyro_baseline_variance.py"), "--params", PARAMS_JSON]
    cmd += ["--out", PYRO_JSON]
    if args.models:
        cmd += ["--models", args.models]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=None, help="subset: coin,sbn")
    ap.add_argument("--repeats", type=int, default=None, help="R for every model (a check)")
    ap.add_argument(
        "--pyro-python",
        default=os.path.join(ROOT, ".venv-bench", "bin", "python"),
        help="the Pyro environment's python ('' to skip running it; its JSON is still merged)",
    )
    ap.add_argument("--particles", default=None, help="subset of K, e.g. 2 (a check)")
    ap.add_argument(
        "--suffix",
        default=None,
        help="write results/baseline_variance.<suffix>.* instead (a supplementary run)",
    )
    ap.add_argument(
        "--rewrite", action="store_true", help="only rewrite the .md from the run's .json"
    )
    args = ap.parse_args()
    global PARTICLES, PARAMS_JSON, PYRO_JSON, OUT_JSON, OUT_MD
    if args.particles:
        PARTICLES = tuple(int(k) for k in args.particles.split(","))
    if args.suffix:
        stem = os.path.join(RESULTS, f"baseline_variance.{args.suffix}")
        PARAMS_JSON, PYRO_JSON = stem + ".params.json", stem + ".pyro.json"
        OUT_JSON, OUT_MD = stem + ".json", stem + ".md"
    if args.rewrite:
        with open(OUT_JSON) as f:
            md = markdown(json.load(f))
        with open(OUT_MD, "w") as f:
            f.write(md)
        print(md)
        return
    t_all = time.perf_counter()
    table = models()
    keys = [k for k in table if not args.models or k in args.models.split(",")]
    repeats = {k: args.repeats or REPEATS[k] for k in table}

    # 1. θ*, exported for Pyro
    thetas, exported = {}, {}
    for key in keys:
        t0 = time.perf_counter()
        thetas[key] = theta_star(table[key], key)
        exported[key] = {
            "params": {n: np.asarray(v, np.float64).tolist() for n, v in thetas[key].items()},
            "guide_params": sorted(
                param_sites(table[key]["guide"], table[key]["args"], thetas[key])
            ),
            "repeats": repeats[key],
        }
        print(f"θ* {key}: {time.perf_counter() - t0:.1f} s", flush=True)
    settings = {
        "warmup": WARMUP,
        "particles": list(PARTICLES),
        "batches": BATCHES,
        "seed": SEEDS["pyro"],
    }
    blob = {"settings": settings, "models": exported}
    blob["fingerprint"] = fingerprint(blob)
    os.makedirs(RESULTS, exist_ok=True)
    with open(PARAMS_JSON, "w") as f:
        json.dump(blob, f)
    print(f"wrote {PARAMS_JSON} (fingerprint {blob['fingerprint']})", flush=True)

    # 2. Pyro (sequentially: the machine is small)
    if args.pyro_python and os.path.exists(args.pyro_python):
        run_pyro(args.pyro_python, args)

    # 3. numpyro and expectax
    import numpyro
    from numpyro.infer import TraceGraph_ELBO as NumpyroTG

    import expectax.infer as xi

    res = {
        "meta": {
            "jax": jax.__version__,
            "numpyro": numpyro.__version__,
            "fingerprint": blob["fingerprint"],
            "seeds": SEEDS,
            "warmup": WARMUP,
        },
        "cells": {},
    }
    print(f"seeds: {SEEDS}", flush=True)
    for key in keys:
        point = Point(table[key], thetas[key])
        r = repeats[key]
        res["cells"][key] = {}
        for k in PARTICLES:
            t0 = time.perf_counter()
            cell = {}

            def kk(name, k=k, r=r):
                return jax.random.split(jax.random.fold_in(jax.random.key(SEEDS[name]), 10 * k), r)

            cell["numpyro"] = summed_variance(
                stateless_grads(point, NumpyroTG(num_particles=k), kk("numpyro")), chain=False
            )
            cell["default"] = summed_variance(
                stateless_grads(point, xi.TraceGraph_ELBO(k), kk("default")), chain=False
            )
            g, count = stateful_chain(
                point, k, jax.random.fold_in(jax.random.key(SEEDS["stateful"]), 10 * k), r
            )
            cell["stateful"] = summed_variance(g, chain=True)
            cell["stateful"]["state_count"] = count
            cell["stateful"]["mean_grad_norm"] = float(np.linalg.norm(g.mean(0)))
            res["cells"][key][str(k)] = cell
            print(
                f"{key} K={k}: "
                + ", ".join(f"{m} {fmt(cell[m]['V'], cell[m]['SE'])}" for m in cell)
                + f" ({time.perf_counter() - t0:.1f} s; state count {count})",
                flush=True,
            )

    # 4. unbiasedness of (c) on the coin
    if "coin" in keys:
        point = Point(table["coin"], thetas["coin"])
        u = point.u
        exact = jax.grad(
            lambda u: gm.coin_exact_neg_elbo(point.params(u), table["coin"]["args"][0])
        )(u)
        exact = np.asarray(flat(exact), np.float64)
        res["unbiased"] = {}
        for k in PARTICLES:
            t0 = time.perf_counter()
            key = jax.random.fold_in(jax.random.key(SEEDS["unbiased"]), 10 * k)
            g = np.asarray(independent_chains(point, k, key, UNBIASED_CHAINS), np.float64)
            mean, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(g.shape[0])
            z = (mean - exact) / se
            res["unbiased"][str(k)] = {
                "chains": g.shape[0],
                "coords": [f"∂/∂ log {n}" for n in sorted(point.u)],
                "mean": mean.tolist(),
                "exact": exact.tolist(),
                "se": se.tolist(),
                "z": z.tolist(),
                "V_independent": summed_variance(g, chain=False),
            }
            vi = res["unbiased"][str(k)]["V_independent"]
            print(
                f"unbiased coin K={k}: mean {np.round(mean, 4)}, exact {np.round(exact, 4)}, "
                f"z {np.round(z, 2)}; V over independent chains {fmt(vi['V'], vi['SE'])} "
                f"({time.perf_counter() - t0:.1f} s)",
                flush=True,
            )

    # 5. merge Pyro's
    if os.path.exists(PYRO_JSON):
        with open(PYRO_JSON) as f:
            pyro = json.load(f)
        if pyro.get("fingerprint") != blob["fingerprint"]:
            res["pyro_note"] = (
                f"Pyro's JSON is for another θ* (fingerprint {pyro.get('fingerprint')}, this run "
                f"{blob['fingerprint']}): not merged. Run pyro_baseline_variance.py again."
            )
        else:
            res["pyro_meta"] = pyro["versions"]
            for key in keys:
                for k, cell in pyro["models"].get(key, {}).items():
                    if k in res["cells"][key]:
                        res["cells"][key][k]["pyro"] = cell
    else:
        res["pyro_note"] = "No Pyro JSON: run benchmarks/pyro_baseline_variance.py in .venv-bench."
    res["total_s"] = time.perf_counter() - t_all
    md = markdown(res)
    with open(OUT_MD, "w") as f:
        f.write(md)
    with open(OUT_JSON, "w") as f:
        json.dump(res, f, indent=1)
    print()
    print(md)
    print(f"wrote {OUT_MD}, {OUT_JSON} ({res['total_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
