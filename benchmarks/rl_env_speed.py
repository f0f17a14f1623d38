"""CartPole speed: environment steps per second, and the wall time of whole training runs.

1. Environment steps per second with random actions and automatic resets, best of
   ``--repeats`` after a warm-up. The pure-JAX environment draws its random numbers the way the
   trainer's rollout does (``expectax.rl.train.sample_actions``: each step splits one key into
   one key per environment and samples each action from the policy's distribution, here a
   uniform two-way softmax; a reset state is drawn from its own split key). The column "one
   word" is the cheaper path of ``cartpole.random_rollout`` (one uint32 per environment and
   step), which the trainer does *not* use. Gymnasium's vector envs draw a step's actions with
   one numpy call.
2. Whole training runs of ``expectax rl`` (``train()``, each in a fresh process, timed from the
   call to its return, compilation included): the defaults (stop when a fresh evaluation
   confirms 475), and the full budget without early stop, on both backends; and, on the JAX
   backend, the full budget with an evaluation of 100 episodes after every batch (the old
   default, which dominated the run time).

    python benchmarks/rl_env_speed.py [--quick] [--seeds 0 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from expectax.rl import cartpole
from expectax.rl.policies import Policy
from expectax.rl.train import sample_actions

UNIFORM = Policy(init=lambda key: None, apply=lambda p, o: dist.CategoricalLogits(jnp.zeros(2)))


def trainer_path_rollout(key: jax.Array, num_envs: int, num_steps: int) -> jax.Array:
    """Random-action CartPole with autoreset, random numbers drawn as the trainer draws them."""
    key_reset, key_run = jax.random.split(key)
    states = jax.vmap(cartpole.reset)(jax.random.split(key_reset, num_envs))[0]
    vstep = jax.vmap(cartpole.step_autoreset)

    def body(carry, k):
        states, ended = carry
        obs = states.physics
        k_act, k_reset = jax.random.split(k)
        actions = sample_actions(UNIFORM, None, obs, k_act).astype(jnp.int32)
        u = jax.vmap(lambda kk: jax.random.uniform(kk, (cartpole.OBS_DIM,)))(
            jax.random.split(k_reset, num_envs)
        )
        states, ts = vstep(states, actions, u)
        return (states, ended + jnp.sum(ts.terminated | ts.truncated)), None

    (_, ended), _ = jax.lax.scan(
        body, (states, jnp.zeros((), jnp.int32)), jax.random.split(key_run, num_steps)
    )
    return ended


def _best(fn, repeats):
    fn()  # warm-up (compilation for JAX)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def jax_steps_per_s(rollout, num_envs, num_steps, repeats):
    run = jax.jit(rollout, static_argnums=(1, 2))
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


_TRAIN_ONE = """
import json, sys, time
from expectax.rl.train import Config, train
kw = json.loads(sys.argv[1])
t0 = time.perf_counter()
r = train(Config(**kw), None, progress=False)
print(json.dumps({"wall_s": time.perf_counter() - t0, "training_episodes": r["training_episodes"],
                  "eval_episodes": r["eval_episodes"], "solved": r["solved"]}))
"""


def train_time(**kw) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _TRAIN_ONE, json.dumps(kw)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke test)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-env", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    result: dict = {"machine": platform.platform(), "cpu_count": os.cpu_count()}
    if not args.skip_env:
        rows = []
        for n in (8, 256, 4096):
            total = int(2_000_000 * scale) if n > 8 else int(200_000 * scale)
            steps = max(total // n, 10)
            jx = jax_steps_per_s(trainer_path_rollout, n, max(steps * 4, 100), args.repeats)
            word = jax_steps_per_s(cartpole.random_rollout, n, max(steps * 4, 100), args.repeats)
            npv = gym_steps_per_s("vector_entry_point", n, steps, args.repeats)
            sync_steps = max(int(40_000 * scale) // n, 5)
            sy = gym_steps_per_s("sync", n, sync_steps, args.repeats) if n <= 256 else float("nan")
            rows.append({"num_envs": n, "jax_trainer_rng": jx, "jax_one_word": word,
                         "numpy_vector": npv, "sync": sy})  # fmt: skip
            print(
                f"num_envs={n:5d}  pure JAX (trainer's RNG) {jx:12,.0f} steps/s | one word "
                f"{word:12,.0f} | numpy vector {npv:12,.0f} (JAX ×{jx / npv:6.1f}) | sync "
                f"{sy:10,.0f} (JAX ×{jx / sy:7.1f})",
                flush=True,
            )
        result["env_steps"] = rows
    if not args.skip_training:
        runs = []
        for seed in args.seeds:
            for label, kw, backends in (
                ("defaults", {}, ("jax", "gymnasium")),
                ("full budget, no early stop", {"stop_when_solved": False}, ("jax", "gymnasium")),
                (
                    "full budget, evaluation of 100 episodes after every batch",
                    {"stop_when_solved": False, "eval_every": 1},
                    ("jax",),
                ),
            ):
                for backend in backends:
                    r = train_time(seed=seed, backend=backend, **kw)
                    r.update(seed=seed, backend=backend, variant=label)
                    runs.append(r)
                    print(
                        f"training seed {seed}, {label}, {backend}: {r['wall_s']:.1f}s "
                        f"({r['training_episodes']} training + {r['eval_episodes']} evaluation "
                        f"episodes, solved {r['solved']})",
                        flush=True,
                    )
        result["training"] = runs
        for label in sorted({r["variant"] for r in runs}):
            j = [r["wall_s"] for r in runs if r["variant"] == label and r["backend"] == "jax"]
            g = [r["wall_s"] for r in runs if r["variant"] == label and r["backend"] == "gymnasium"]
            if not g:
                print(f"{label}: jax median {np.median(j):.1f}s")
                continue
            print(
                f"{label}: jax median {np.median(j):.1f}s, gymnasium median {np.median(g):.1f}s, "
                f"ratio ×{np.median(g) / np.median(j):.1f} (compilation included)"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
