"""Time and XLA memory of ``jax.grad(E)`` with the samples split over devices (``mesh=``).

    python benchmarks/devices.py [--devices 1 2 8] [--n 800 8000] [--params 10000]
                                 [--chunk 100] [--repeats 20] [--estimator Pathwise]

For each device count D a fresh subprocess starts JAX with D devices (on CPU: D host devices,
``--xla_force_host_platform_device_count=D``; on a GPU machine the first D GPUs, if there are
that many). For each N it compiles ``jax.jit(jax.grad(E))`` for
``expectation(..., chunk_size=chunk)`` without a mesh and with ``mesh=`` over D devices, and
prints the fastest of ``--repeats`` runs of each (after one warm-up; the two programs'
runs interleaved, so that load from other jobs hits both alike), XLA's temporary memory
per device (``memory_analysis().temp_size_in_bytes``) and the largest relative difference of
the sharded gradient from the unsharded one (same key, seed 0).

On CPU host devices all D "devices" share the same cores, so this shows correctness and the
sharding overhead, not a speed-up; a speed-up needs real accelerators.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def child(devices: int, ns: list[int], p: int, chunk: int, repeats: int, name: str) -> None:
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    import numpyro.distributions as dist
    from jax.sharding import Mesh

    import expectax as ex
    from expectax import baselines

    est = {
        "Pathwise": ex.Pathwise(),
        "ScoreFunction": ex.ScoreFunction(),
        "ScoreFunction+LeaveOneOut": ex.ScoreFunction(baseline=baselines.LeaveOneOut()),
    }[name]

    def f(params, x):
        return jnp.sum(jnp.tanh(params["w"] * x))

    def dist_fn(params):
        return dist.Normal(params["mu"], 1.0)

    if jax.device_count() < devices:
        sys.exit(f"{devices} devices asked, this machine has {jax.device_count()}")
    params = {"w": jnp.linspace(-1.0, 1.0, p), "mu": jnp.zeros(())}
    key = jax.random.key(0)
    mesh = Mesh(np.array(jax.devices()[:devices]), ("samples",))
    rows = []
    for n in ns:
        out, fns = {}, {}
        for label, kw in [("none", {}), ("mesh", {"mesh": mesh})]:
            E = ex.expectation(f, dist_fn, estimator=est, num_samples=n, chunk_size=chunk, **kw)
            fns[label] = fn = jax.jit(jax.grad(E))
            mem = fn.lower(params, key).compile().memory_analysis()
            out[label] = [[], mem.temp_size_in_bytes, jax.block_until_ready(fn(params, key))]
        for _ in range(repeats):  # interleaved, so that load from other jobs hits both alike
            for label, fn in fns.items():
                start = time.perf_counter()
                jax.block_until_ready(fn(params, key))
                out[label][0].append(time.perf_counter() - start)
        for label in out:
            out[label][0] = float(np.min(out[label][0]))
        diff = max(
            float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
            for a, b in zip(
                jax.tree_util.tree_leaves(out["mesh"][2]),
                jax.tree_util.tree_leaves(out["none"][2]),
                strict=True,
            )
        )
        rows.append(
            {
                "n": n,
                "t_none": out["none"][0],
                "t_mesh": out["mesh"][0],
                "mem_none": out["none"][1],
                "mem_mesh": out["mesh"][1],
                "diff": diff,
                "platform": jax.devices()[0].device_kind,
            }
        )
    print("RESULT " + json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 8])
    ap.add_argument("--n", type=int, nargs="+", default=[800, 8000])
    ap.add_argument("--params", type=int, default=10_000)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--estimator", default="Pathwise")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.n, args.params, args.chunk, args.repeats, args.estimator)
        return
    print(f"jax.grad(E), {args.estimator}, P = {args.params}, chunks of {args.chunk}, seed 0")
    head = (
        f"{'devices':>7s} {'N':>7s} {'min ms (no mesh)':>17s} {'min ms (mesh)':>14s} {'ratio':>6s} "
        f"{'XLA temp MiB (no mesh)':>23s} {'(mesh, per device)':>19s} {'max rel diff':>12s}"
    )
    printed = False
    for d in args.devices:
        env = dict(os.environ)
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={d}".strip()
        cmd = [sys.executable, __file__, "--child", str(d), "--n", *map(str, args.n)]
        cmd += ["--params", str(args.params), "--chunk", str(args.chunk)]
        cmd += ["--repeats", str(args.repeats), "--estimator", args.estimator]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{d:7d} devices: failed: {last}")
            continue
        for row in json.loads(lines[-1][len("RESULT ") :]):
            if not printed:
                print(f"device kind: {row['platform']}")
                print(head)
                printed = True
            print(
                f"{d:7d} {row['n']:7d} {1e3 * row['t_none']:17.1f} {1e3 * row['t_mesh']:14.1f} "
                f"{row['t_mesh'] / row['t_none']:6.2f} {row['mem_none'] / 2**20:23.2f} "
                f"{row['mem_mesh'] / 2**20:19.2f} {row['diff']:12.1e}"
            )


if __name__ == "__main__":
    main()
