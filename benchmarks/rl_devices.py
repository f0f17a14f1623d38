"""CartPole training steps with the episodes split over devices: env-steps/s and overhead.

For each number of devices (a fresh process each, with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` set before JAX starts), one jitted
training step of the pure-JAX trainer (``make_jax_trainer``: rollout of a batch of episodes,
REINFORCE gradient, Adam step) is timed without a mesh and with ``mesh=`` over the D devices,
in interleaved repeats (unsharded, sharded, unsharded, ...) from the same state and keys, so
both do the same work. Printed: the median env-steps/s of each (env-steps = the steps the
batch's episodes really took, the ``mask``), the median of the per-repeat time ratios
sharded / unsharded, and the sharded state's largest difference from the unsharded one
(relative to each leaf's largest entry).

On CPU host devices all "devices" share the same cores, so the rows show correctness and
overhead, not a speed-up; a speed-up needs real accelerators.

    python benchmarks/rl_devices.py [--devices 1 8] [--batch 256] [--repeats 21] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def worker(devices: int, batch: int, repeats: int, seed: int) -> dict:
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from expectax.rl.train import Config, make_jax_trainer

    assert jax.device_count() == devices, jax.devices()
    config = Config(
        backend="jax", episodes=batch, batch_episodes=batch, confirm_episodes=max(104, batch)
    )
    mesh = Mesh(np.array(jax.devices()), ("episodes",))
    plain = jax.jit(make_jax_trainer(config).step)
    sharded = jax.jit(make_jax_trainer(config, mesh=mesh).step)
    state = make_jax_trainer(config).init()
    keys = [jax.random.key(seed * 1000 + r) for r in range(repeats)]

    def run(step, key):
        t0 = time.perf_counter()
        new, metrics = step(state, key)
        jax.block_until_ready((new, metrics))
        return time.perf_counter() - t0, new, metrics

    steps_per_key = []
    times = {"no mesh": [], "mesh": []}
    run(plain, keys[0])  # compile both
    run(sharded, keys[0])
    diffs = []
    for r, key in enumerate(keys):
        order = (("no mesh", plain), ("mesh", sharded))
        if r % 2:
            order = order[::-1]
        out = {}
        for name, step in order:
            t, new, metrics = run(step, key)
            times[name].append(t)
            out[name] = new
        a = jax.tree_util.tree_leaves(out["mesh"])
        b = jax.tree_util.tree_leaves(out["no mesh"])
        for x, y in zip(a, b, strict=True):
            x, y = np.asarray(x, float), np.asarray(y, float)
            diffs.append(float(np.max(np.abs(x - y)) / max(float(np.max(np.abs(y))), 1e-30)))
        # env steps of this key's batch: the episodes' lengths (train_return, 1 reward a step)
        steps_per_key.append(float(metrics["train_return"]) * batch)
    ratios = [m / u for m, u in zip(times["mesh"], times["no mesh"], strict=True)]
    env_steps = statistics.median(steps_per_key)
    return {
        "devices": devices,
        "device_kind": jax.devices()[0].device_kind,
        "batch": batch,
        "repeats": repeats,
        "env_steps_per_batch": env_steps,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "steps_per_s": {
            k: statistics.median(s / t for s, t in zip(steps_per_key, v, strict=True))
            for k, v in times.items()
        },
        "ratio_median": statistics.median(ratios),
        "max_rel_diff": max(diffs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch", type=int, nargs="+", default=[256])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        res = worker(args.worker, args.batch[0], args.repeats, args.seed)
        print("RESULT " + json.dumps(res))
        return
    rows = []
    for batch in args.batch:
        for d in args.devices:
            env = {
                **os.environ,
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={d}",
                "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
            }
            cmd = [sys.executable, __file__, "--worker", str(d), "--batch", str(batch)]
            cmd += ["--repeats", str(args.repeats), "--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(proc.stderr[-3000:])
            rows.append(json.loads(lines[-1][len("RESULT ") :]))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"CartPole training step (rollout + gradient + Adam), seed {args.seed}, "
        f"{args.repeats} interleaved repeats, medians; {rows[0]['device_kind']}, "
        f"{os.cpu_count()} cores, load average {load:.1f}, {platform.processor() or ''}"
    )
    print(
        f"{'devices':>7} {'batch':>6} {'env steps':>9} {'steps/s (no mesh)':>18} "
        f"{'steps/s (mesh)':>15} {'mesh/no mesh time':>18} {'max rel diff':>13}"
    )
    for r in rows:
        print(
            f"{r['devices']:>7} {r['batch']:>6} {r['env_steps_per_batch']:>9.0f} "
            f"{r['steps_per_s']['no mesh']:>18.3g} {r['steps_per_s']['mesh']:>15.3g} "
            f"{r['ratio_median']:>18.3f} {r['max_rel_diff']:>13.1e}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
