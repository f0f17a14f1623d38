"""Compile time and memory of the ELBO's gradient for a Markov chain of discrete sites.

A chain written as a Python loop (one site per step, each drawn given the one before: the
3-state HMM of ``benchmarks/scan_hmm.py`` with its structured guide ``q(z_t | z_{t−1})``)
gives every step's score all later steps' costs through provenance; the compiled gradient
then grows faster than linearly in the chain's length T, in numpyro's ``TraceGraph_ELBO`` and
in expectax's alike. Written with numpyro's ``scan`` (one scanned site), expectax compiles it
in a time that barely depends on T. Each cell runs in a fresh process (``jax.jit(grad)`` of
``elbo.loss`` at 4 particles, lowered and compiled once): seconds to trace and compile, the
process's peak resident memory, and then the compiled gradient's time per call (median of 7
rounds of 50 calls; run it on an otherwise idle core, e.g. under ``taskset -c 0``).

Run::

    python benchmarks/chain_compile.py                 # T = 15, 30, 60
    python benchmarks/chain_compile.py --lengths 15 30  # fewer
    python benchmarks/chain_compile.py --rows loop:expectax  # one row (e.g. another commit's)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(form: str, library: str, T: int) -> dict:
    """In this process: trace, lower and compile the gradient once; seconds and peak memory."""
    import resource
    import time

    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(HERE))
    from scan_hmm import make, params_for

    if library == "numpyro":
        from numpyro.infer import TraceGraph_ELBO
    else:
        from expectax.infer import TraceGraph_ELBO
    model, guide = make(T)[form]
    obs = jnp.linspace(-1.0, 2.0, T)
    elbo = TraceGraph_ELBO(num_particles=4)
    g = jax.jit(jax.grad(lambda p, k: elbo.loss(k, p, model, guide, obs)))
    args = (params_for(T, 0), jax.random.key(0))
    t0 = time.perf_counter()
    lowered = g.lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # then the compiled gradient's time per call: median of 7 rounds of 50 calls
    jax.block_until_ready(compiled(*args))
    rounds = []
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(50):
            out = compiled(*args)
        jax.block_until_ready(out)
        rounds.append((time.perf_counter() - t) / 50)
    call_ms = 1e3 * sorted(rounds)[3]
    return {"trace_s": t1 - t0, "compile_s": t2 - t1, "peak_mb": peak_mb, "call_ms": call_ms}


#: the (form, library) rows the script knows, in the table's order
ROWS = (("loop", "numpyro"), ("loop", "expectax"), ("scan", "expectax"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=(15, 30, 60))
    ap.add_argument(
        "--rows",
        default=",".join(":".join(r) for r in ROWS),
        help="comma-separated FORM:LIBRARY (default: all three)",
    )
    ap.add_argument("--cell", nargs=3, metavar=("FORM", "LIBRARY", "T"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        form, library, T = args.cell
        print(json.dumps(measure(form, library, int(T))))
        return
    rows = [tuple(r.split(":", 1)) for r in args.rows.split(",") if r]
    unknown = [":".join(r) for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"--rows: unknown {unknown}; known: {sorted(':'.join(r) for r in ROWS)}")
    print(
        "| form | ELBO | T | trace + lower (s) | compile (s) | peak memory (MB) | gradient (ms) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for form, library in rows:
        for T in args.lengths:
            cmd = [sys.executable, __file__, "--cell", form, library, str(T)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {form} | {library} | {T} | failed (exit {out.returncode}) | | | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"| {form} | {library} | {T} | {r['trace_s']:.1f} | {r['compile_s']:.1f} "
                f"| {r['peak_mb']:.0f} | {r['call_ms']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
