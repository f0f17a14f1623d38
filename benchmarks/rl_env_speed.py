"""CartPole steps per second: pure JAX vs Gymnasium's sync vector env vs its numpy CartPole.

Also the wall time of the same full REINFORCE training (``expectax rl`` defaults, 200 episodes,
evaluation after every batch, no early stop) driven by the JAX backend and by Gymnasium.

Every environment steps with uniformly random actions and resets finished episodes; for the
pure-JAX env all of a step's randomness (actions and reset states of every environment) is one
``jax.random.uniform`` call (``expectax.rl.cartpole.random_rollout``). The Gymnasium loops draw
a step's actions in one numpy call. Timings are best of ``--repeats`` after a warm-up.

    python benchmarks/rl_env_speed.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import gymnasium as gym
import jax
import numpy as np

from expectax.rl import cartpole
from expectax.rl.train import Config, train


def _best(fn, repeats):
    fn()  # warm-up (compilation for JAX)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def jax_steps_per_s(num_envs, num_steps, repeats):
    run = jax.jit(cartpole.random_rollout, static_argnums=(1, 2))
    key = jax.random.key(0)
    t = _best(lambda: run(key, num_envs, num_steps).block_until_ready(), repeats)
    return num_envs * num_steps / t


def gym_steps_per_s(mode, num_envs, num_steps, repeats):
    envs = gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode=mode)
    rng = np.random.default_rng(0)

    def run():
        envs.reset(seed=0)
        for _ in range(num_steps):
            envs.step(rng.integers(0, 2, num_envs))

    t = _best(run, repeats)
    envs.close()
    return num_envs * num_steps / t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    rows = []
    for n in (8, 256, 4096):
        total = int(2_000_000 * scale) if n > 8 else int(200_000 * scale)
        steps = max(total // n, 10)
        jx = jax_steps_per_s(n, max(steps * 10, 100), args.repeats)
        npv = gym_steps_per_s("vector_entry_point", n, steps, args.repeats)
        sync_steps = max(int(40_000 * scale) // n, 5)
        sy = gym_steps_per_s("sync", n, sync_steps, args.repeats) if n <= 256 else float("nan")
        rows.append({"num_envs": n, "jax": jx, "numpy_vector": npv, "sync": sy})
        print(
            f"num_envs={n:5d}  pure JAX {jx:14,.0f} steps/s | numpy vector {npv:12,.0f} "
            f"(JAX ×{jx / npv:7.1f}) | sync {sy:10,.0f} (JAX ×{jx / sy:9.1f})",
            flush=True,
        )
    sync_best = max(r["sync"] for r in rows if np.isfinite(r["sync"]))
    jax_best = max(r["jax"] for r in rows)
    np_best = max(r["numpy_vector"] for r in rows)
    print(
        f"best of each: pure JAX {jax_best:,.0f}, numpy vector {np_best:,.0f}, sync "
        f"{sync_best:,.0f} steps/s -> JAX/sync ×{jax_best / sync_best:.0f}, "
        f"JAX/numpy ×{jax_best / np_best:.1f}"
    )
    result = {
        "env_steps": rows,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if not args.skip_training:
        cfg = Config(stop_when_solved=False)
        times = {}
        # jax twice: the first run includes compilation, the second reuses JAX's cache
        for label, backend in (("jax", "jax"), ("jax_warm", "jax"), ("gymnasium", "gymnasium")):
            t0 = time.perf_counter()
            res = train(dataclasses.replace(cfg, backend=backend), None, progress=False)
            times[label] = time.perf_counter() - t0
            print(
                f"full training ({cfg.episodes} episodes + {cfg.num_batches} evaluations of "
                f"{cfg.eval_episodes}), {label}: {times[label]:.1f}s "
                f"(final eval {res['history']['eval_return'][-1]:.1f})",
                flush=True,
            )
        print(
            f"training wall time ratio gymnasium/jax: ×{times['gymnasium'] / times['jax']:.1f} "
            f"(incl. compilation), ×{times['gymnasium'] / times['jax_warm']:.1f} (compiled)"
        )
        result["training_wall_time"] = times
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
