r"""Pyro 1.9's decaying-average baseline: gradient variance at the parameters θ* of
``benchmarks/baseline_variance.py`` (column (d) of its table).

It reads θ* (model and guide parameters, constrained float32 values) from
``results/baseline_variance.params.json``, which ``baseline_variance.py`` writes, and for each
model (the coin, the SBN on all 1,797 digits; the Pyro models of ``pyro_gallery.py``) and
K ∈ {1, 2, 8}:

1. clears the param store, creates the parameters by tracing the guide and the model, sets
   every one to θ* (``pyro.get_param_store()[name] = value``, constrained; Pyro stores the
   unconstrained value, e.g. ``log α``);
2. runs ``TraceGraph_ELBO(K).loss_and_grads`` (particles in a loop, Pyro's default) 300 times
   at θ* with no optimiser step, so that the parameters stay at θ* while the decaying averages
   ``__baseline_avg_downstream_cost_<site>`` (``baseline_beta`` 0.9, one per plate element,
   updated by Pyro after every particle) warm up exactly as they would in SVI;
3. runs R more steps on the same chain, recording each step's gradient of the guide's
   parameters (the ``.grad`` of the unconstrained tensors SVI's optimiser updates, zeroed
   before every step).

Every non-reparameterised guide site carries
``infer={"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}}``. Argument
validation off and one torch thread, as in ``pyro_gallery.py``. Seed:
``pyro.set_rng_seed(seed + 10 K + model index)`` with ``seed`` from the params JSON.

The summed variance ``V = Σ_p Var(g_p)``, its SE (iid and batch-means, as on the numpyro side)
and timings go to ``results/baseline_variance.pyro.json`` with θ*'s fingerprint; the numpyro
script merges it only when the fingerprints match. Run in the benchmark-only environment::

    .venv-bench/bin/python benchmarks/pyro_baseline_variance.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro_gallery as pg  # noqa: E402
import torch  # noqa: E402
from pyro.infer import TraceGraph_ELBO  # noqa: E402

MODEL_INDEX = {"coin": 0, "sbn": 1}


def summed_variance(g: np.ndarray, batches: int) -> dict:
    """As ``baseline_variance.summed_variance`` for a chain."""
    g = np.asarray(g, np.float64)
    r = g.shape[0]
    s = np.sum((g - g.mean(0)) ** 2, axis=1) * r / (r - 1)
    se_iid = float(s.std(ddof=1) / math.sqrt(r))
    b = r // batches
    means = s[: b * batches].reshape(batches, b).mean(1)
    se_bm = float(means.std(ddof=1) / math.sqrt(batches))
    return {
        "V": float(s.mean()),
        "SE": max(se_iid, se_bm),
        "SE_iid": se_iid,
        "SE_batch_means": se_bm,
        "R": r,
    }


def chain(model, guide, args, theta, guide_params, k, warmup, repeats, seed):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    pyro.poutine.trace(guide).get_trace(*args)  # creates the params (and their constraints)
    pyro.poutine.trace(model).get_trace(*args)
    store = pyro.get_param_store()
    for name, value in theta.items():
        store[name] = torch.tensor(np.asarray(value, np.float32))
    unconstrained = {n: store._params[n] for n in guide_params}  # what SVI's optimiser updates
    elbo = TraceGraph_ELBO(num_particles=k)
    grads = np.empty((repeats, sum(p.numel() for p in unconstrained.values())), np.float64)
    for i in range(warmup + repeats):
        for p in store._params.values():
            p.grad = None
        elbo.loss_and_grads(model, guide, *args)
        if i >= warmup:
            grads[i - warmup] = torch.cat(
                [unconstrained[n].grad.reshape(-1) for n in sorted(guide_params)]
            ).numpy()
    # the parameters never moved
    for name, value in theta.items():
        got = store[name].detach().numpy()
        assert np.allclose(got, np.asarray(value, np.float32), rtol=1e-5, atol=1e-6), name
    baselines = sorted(n for n in store.keys() if n.startswith("__baseline"))
    return grads, baselines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--params", default=os.path.join(HERE, "results", "baseline_variance.params.json")
    )
    ap.add_argument("--out", default=os.path.join(HERE, "results", "baseline_variance.pyro.json"))
    ap.add_argument("--models", default=None, help="subset: coin,sbn")
    args = ap.parse_args()
    with open(args.params) as f:
        blob = json.load(f)
    settings = blob["settings"]
    torch.set_num_threads(1)
    pyro.enable_validation(False)
    table = pg.models()
    result = {
        "versions": {"pyro": pyro.__version__, "torch": torch.__version__},
        "fingerprint": blob["fingerprint"],
        "settings": settings,
        "models": {},
    }
    t_all = time.perf_counter()
    for key, spec in blob["models"].items():
        if args.models and key not in args.models.split(","):
            continue
        model, guide, data_args = table[key]
        result["models"][key] = {}
        for k in settings["particles"]:
            t0 = time.perf_counter()
            seed = settings["seed"] + 10 * k + MODEL_INDEX[key]
            grads, names = chain(
                model,
                guide,
                data_args,
                spec["params"],
                spec["guide_params"],
                k,
                settings["warmup"],
                spec["repeats"],
                seed,
            )
            cell = summed_variance(grads, settings["batches"])
            cell.update(
                seed=seed,
                baseline_params=names,
                mean_grad_norm=float(np.linalg.norm(grads.mean(0))),
                seconds=time.perf_counter() - t0,
            )
            result["models"][key][str(k)] = cell
            print(
                f"pyro {key} K={k}: V {cell['V']:.4g} ± {cell['SE']:.2g} "
                f"(R {cell['R']}, seed {seed}, {cell['seconds']:.1f} s)",
                flush=True,
            )
    result["total_s"] = time.perf_counter() - t_all
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out} ({result['total_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
