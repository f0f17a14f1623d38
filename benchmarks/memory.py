"""Gradient memory against N: XLA's compiled temporary memory and the process's peak RSS.

    python benchmarks/memory.py [--params 100000] [--chunk 100] [--n 100 1000 10000]

For each estimator and N, ``jax.grad`` of ``expectation(..., chunk_size=chunk)`` is compiled
and XLA's memory analysis printed (temporary buffers; arguments and outputs are P floats
each); then the gradient is run once in a fresh subprocess and its peak resident memory
(``ru_maxrss``) printed. Before expectax recomputed each chunk in the backward pass
(``jax.checkpoint`` on the chunk), the temporary memory grew with N: at P = 10⁵ and chunks of
100 it was 114 MiB at N = 100, 801 MiB at N = 1000 and 7.5 GiB at N = 10⁴ (Pathwise).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def build(name: str, p: int, n: int, chunk: int):
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    import expectax as ex
    from expectax import baselines

    est = {
        "Pathwise": ex.Pathwise(),
        "ScoreFunction": ex.ScoreFunction(),
        "ScoreFunction+LeaveOneOut": ex.ScoreFunction(baseline=baselines.LeaveOneOut()),
        "MeasureValued": ex.MeasureValued(),
    }[name]

    def f(params, x):
        return jnp.sum(jnp.tanh(params["w"] * x))

    def dist_fn(params):
        return dist.Normal(params["mu"], 1.0)

    params = {"w": jnp.ones(p), "mu": jnp.zeros(())}
    E = ex.expectation(f, dist_fn, estimator=est, num_samples=n, chunk_size=chunk)
    return jax.jit(jax.grad(E)), params


def child(name: str, p: int, n: int, chunk: int) -> None:
    import resource

    import jax

    fn, params = build(name, p, n, chunk)
    jax.block_until_ready(fn(params, jax.random.key(0)))
    print(json.dumps({"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--params", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000, 10_000])
    ap.add_argument(
        "--estimators",
        nargs="+",
        default=["Pathwise", "ScoreFunction", "ScoreFunction+LeaveOneOut"],
    )
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        name, p, n, chunk = args.child
        child(name, int(p), int(n), int(chunk))
        return
    import jax

    print(f"P = {args.params} parameters, chunks of {args.chunk} samples, jax {jax.__version__}")
    print(f"{'estimator':28s} {'N':>7s} {'XLA temp MiB':>13s} {'peak RSS MiB':>13s}")
    for name in args.estimators:
        for n in args.n:
            fn, params = build(name, args.params, n, args.chunk)
            mem = fn.lower(params, jax.random.key(0)).compile().memory_analysis()
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    name,
                    str(args.params),
                    str(n),
                    str(args.chunk),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rss = json.loads(out.stdout.strip().splitlines()[-1])["rss_mib"]
            print(f"{name:28s} {n:7d} {mem.temp_size_in_bytes / 2**20:13.1f} {rss:13.0f}")


if __name__ == "__main__":
    main()
