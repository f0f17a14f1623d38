"""How much a gallery model's time per SVI step depends on the compilation.

The ELBO gallery (``elbo_gallery.py``) compiles each method once. For the DPM, whose step takes
about 0.2 ms, separate compilations of the *same* code differ in speed by up to a quarter
(XLA's CPU runtime; the same was seen for the smallest programs of ``estimators.py``), so a
single compilation's ratio to numpyro is not the method's. This script compiles each method
``--compilations`` times in one process (``svi.update`` in a jitted ``fori_loop``, seed 300's
initial parameters) and times every compilation, interleaved, as the best of ``--rounds``
rounds of ``--steps`` steps; it prints each compilation's time and, per method, the median and
best over compilations against numpyro's.

Run (the numbers in docs/elbo-gallery.md, "A second held-out set" and "The time per step on
one core")::

    python benchmarks/gallery_compile_spread.py                 # DPM, K = 4, 3 compilations
    python benchmarks/gallery_compile_spread.py --model coal
    taskset -c 0 python benchmarks/gallery_compile_spread.py --compilations 7   # one core

On two cores XLA's CPU runtime spreads a step's small kernels over both, and at a fifth of a
millisecond per step the ratio between two compilations of the same code then swings by a
quarter; pinned to one core (``taskset``) the spread falls to a few per cent, which measures
the work each method does rather than how its kernels happened to be scheduled.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import elbo_gallery as gallery  # noqa: E402
import gallery_data as gdata  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import SVI  # noqa: E402

METHODS = {
    "numpyro": gallery._numpyro_elbo,
    "expectax": gallery._expectax_elbo,
    "none": gallery.CONFIGS["none"],
}


def compiled_run(spec, factory):
    elbo, transform = factory(spec.particles, spec.sites)
    svi = SVI(spec.model, transform(spec.guide), optax.adam(spec.lr, b1=spec.b1), loss=elbo)
    init = {k: jnp.asarray(v) for k, v in gdata.initial_params(spec.key, 300).items()}
    state = svi.init(jax.random.key(300), *spec.args, init_params=init)
    args = spec.args

    def run(state, n):
        return jax.lax.fori_loop(0, n, lambda i, s: svi.update(s, *args)[0], state)

    run = jax.jit(run, static_argnums=1)
    return run, state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="dpm", help="a gallery model key (dpm, coal, spike, ...)")
    ap.add_argument("--compilations", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    specs = {s.key: s for s in gallery.gallery(False)}
    spec = specs[args.model]
    runs = {}
    for i in range(args.compilations):
        for name, factory in METHODS.items():
            run, state = compiled_run(spec, factory)
            jax.block_until_ready(run(state, args.steps))  # compile and warm up
            runs[(name, i)] = (run, state)
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):
        for key, (run, state) in runs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run(state, args.steps))
            best[key] = min(best[key], (time.perf_counter() - t0) / args.steps)
    how = f"best of {args.rounds} rounds of {args.steps} steps, per compilation"
    print(f"{spec.name}: ms per step, {how}")
    per = {name: [best[(name, i)] for i in range(args.compilations)] for name in METHODS}
    for name, times in per.items():
        cells = "  ".join(f"{t * 1e3:.3f}" for t in times)
        med = statistics.median(times) / statistics.median(per["numpyro"])
        low = min(times) / min(per["numpyro"])
        print(f"  {name:9s} {cells}   median {med:.2f}x numpyro, best {low:.2f}x")


if __name__ == "__main__":
    main()
