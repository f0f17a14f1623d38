"""Time per SVI step against particles K and plate size N: expectax's ELBO vs numpyro's.

The model is the two-layer sigmoid belief network of :mod:`expectax.vi.sbn` (64 binary pixels
→ 32 → 16 Bernoulli latents) on the first N binarised digits (N = 1797: all of them), the full
data in one plate (no subsampling), so the plate and the particles are the only sizes. For each
(N, K) a jitted ``svi.update`` (Adam) of

- ``numpyro``: ``numpyro.infer.TraceGraph_ELBO(K)``;
- ``expectax``: ``expectax.infer.TraceGraph_ELBO(K)``, its defaults
  (``WeightedLeaveOneOut`` baselines on the Bernoulli sites);
- ``expectax+history``: the same with ``expectax.infer.with_baselines(guide)`` (the decaying
  averages carried through SVI's mutable state).

Timing: after compilation, interleaved rounds (each configuration runs ``--steps`` steps per
round, configurations alternate within a round so machine load hits all alike); the minimum
over rounds of the mean step time; the ratio column divides by numpyro's of the same round
set. The goal of issue 18 is ≤ 1.1× numpyro at every K and N: cost linear in K.

The leave-one-out sums are products with ``1 − I`` (``baselines.others_sum``), whose operands
XLA materialises, instead of ``Σ − d``, which XLA's CPU compiler could fuse into the kernel that
consumes it (recomputing every particle's cost once per particle, issue 18). On this machine the
old form did not reproduce the quadratic time in this model either, so the table is the
evidence: the ratio stays flat in K.

Run::

    python benchmarks/elbo_particles.py                  # N 200, 800, 1797; K 1..16
    python benchmarks/elbo_particles.py --quick          # N 1797, K 2, 16

Before the timings it prints the compiled program's flops per particle and temporary memory
for each K at the largest N (:func:`compiled_table`): the check that no fused kernel
recomputes the costs per particle, independent of machine load.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI
from numpyro.infer import TraceGraph_ELBO as NumpyroTraceGraph

import expectax.infer as xi
from expectax.vi.digits import load_digits
from expectax.vi.sbn import make_sbn


def data_and_model():
    d = load_digits()
    x = np.concatenate([np.asarray(d.train), np.asarray(d.test)])
    mean = np.clip(x.mean(0), 0.01, 0.99)
    model, guide = make_sbn(64, (32, 16), pixel_logits=np.log(mean / (1 - mean)))
    return x, model, guide


def make_step(name, k, model, guide, x):
    n = x.shape[0]
    if name == "numpyro":
        svi = SVI(model, guide, optax.adam(1e-3), loss=NumpyroTraceGraph(k))
    elif name == "expectax":
        svi = SVI(model, guide, optax.adam(1e-3), loss=xi.TraceGraph_ELBO(k))
    else:
        svi = SVI(model, xi.with_baselines(guide), optax.adam(1e-3), loss=xi.TraceGraph_ELBO(k))
    state = svi.init(jax.random.key(0), x, n)
    step = jax.jit(lambda s: svi.update(s, x, n))
    return step, state


def time_table(ns, ks, configs, rounds, steps):
    x_all, model, guide = data_and_model()
    rows = []
    for n in ns:
        x = jnp.asarray(x_all[:n])
        for k in ks:
            prepared = {}
            for c in configs:
                step, state = make_step(c, k, model, guide, x)
                state, loss = step(state)  # compile
                jax.block_until_ready(loss)
                prepared[c] = [step, state]
            best = {c: np.inf for c in configs}
            for _ in range(rounds):
                for c in configs:
                    step, state = prepared[c]
                    t = time.perf_counter()
                    for _ in range(steps):
                        state, loss = step(state)
                    jax.block_until_ready(loss)
                    best[c] = min(best[c], (time.perf_counter() - t) / steps)
                    prepared[c][1] = state
            rows.append((n, k, best))
            cells = "  ".join(
                f"{c} {best[c] * 1e3:7.2f} ms ({best[c] / best['numpyro']:.2f}×)" for c in configs
            )
            print(f"N={n:5d} K={k:3d}  {cells}", flush=True)
    return rows


def compiled_table(n, ks):
    """The compiled program, not a timing: XLA's flop count per particle and the temporary
    memory of one jitted ``svi.update`` for each K at plate size ``n``. A fused kernel that
    recomputed every particle's cost once per particle would show as flops per particle
    growing with K; here they must stay flat (and temporary memory linear in K)."""
    x_all, model, guide = data_and_model()
    x = jnp.asarray(x_all[:n])
    lines = [
        f"Compiled `svi.update` at N = {n} (XLA's cost and memory analysis; no timing)",
        "",
        "| K | numpyro GFLOP / particle | expectax GFLOP / particle | ratio "
        "| numpyro temp MiB | expectax temp MiB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for k in ks:
        stats = {}
        for c in ("numpyro", "expectax"):
            step, state = make_step(c, k, model, guide, x)
            compiled = step.lower(state).compile()
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            stats[c] = (cost["flops"] / k, compiled.memory_analysis().temp_size_in_bytes)
        (fn, mn), (fx, mx) = stats["numpyro"], stats["expectax"]
        lines.append(
            f"| {k} | {fn / 1e9:.3f} | {fx / 1e9:.3f} | {fx / fn:.2f} "
            f"| {mn / 2**20:.1f} | {mx / 2**20:.1f} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def markdown(rows, configs):
    head = "| N | K | " + " | ".join(f"{c} ms/step" for c in configs)
    head += " | " + " | ".join(f"{c} / numpyro" for c in configs if c != "numpyro")
    head += " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for n, k, best in rows:
        cells = [f"{best[c] * 1e3:.2f}" for c in configs]
        cells += [f"{best[c] / best['numpyro']:.2f}" for c in configs if c != "numpyro"]
        lines.append(f"| {n} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N 1797, K 2 and 16, fewer rounds")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--steps", type=int, default=10, help="steps per configuration per round")
    ap.add_argument("--out", default="benchmarks/results/elbo_particles.md", help="table file")
    args = ap.parse_args()
    ns, ks = ([1797], [2, 16]) if args.quick else ([200, 800, 1797], [1, 2, 4, 8, 16])
    rounds = 3 if args.quick else args.rounds
    configs = ["numpyro", "expectax", "expectax+history"]
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; seed 0; SBN 64-32-16")
    compiled = compiled_table(max(ns), ks if not args.quick else [1, 2, 4, 8, 16])
    rows = time_table(ns, ks, configs, rounds, args.steps)
    table = markdown(rows, configs)
    print(table)
    import pathlib

    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(
        "Command: `python benchmarks/elbo_particles.py"
        + (" --quick" if args.quick else "")
        + f"` (jax {jax.__version__}, CPU, 2 shared cores; min over {rounds} interleaved rounds"
        + f" of {args.steps} steps)\n\n"
        + table
        + "\n\n"
        + compiled
        + "\n"
    )


if __name__ == "__main__":
    main()
