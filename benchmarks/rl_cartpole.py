"""Episodes to solve CartPole-v1 with the defaults of ``expectax rl``, for 5 seeds.

Solved: the mean return of 100 evaluation episodes of the *sampled* policy reaches 475 (the
env's reward threshold); evaluation runs after every batch of 8 training episodes, and the
count is every training episode consumed up to that evaluation.

The 5 seeds run with the JAX backend, vmapped over seeds in one jitted step (the same
``make_jax_trainer`` functions ``expectax rl --backend jax`` uses); then ``--gym-seeds`` seeds
run through the Gymnasium backend (``expectax.rl.train``, exactly what ``expectax rl`` does) to
show that it agrees. Writes the learning curves to ``--plot``.

    python benchmarks/rl_cartpole.py [--seeds 0 1 2 3 4] [--gym-seeds 0]
        [--plot docs/img/rl_cartpole.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from expectax.rl.train import Config, _batch_key, make_jax_trainer, train


def run_jax(config: Config, seeds: list[int]):
    """Train all seeds at once; returns (episodes-to-solve per seed, eval curves, timings)."""
    trainers = [make_jax_trainer(dataclasses.replace(config, seed=s)) for s in seeds]
    tr = trainers[0]  # the functions depend on the seed only through the initial state
    t0 = time.perf_counter()
    states = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[t.init() for t in trainers])
    step = jax.jit(jax.vmap(tr.step))
    evaluate = jax.jit(jax.vmap(tr.evaluate))
    solved: list[int | None] = [None] * len(seeds)
    curves = np.full((len(seeds), config.num_batches), np.nan)
    t_first = None
    for b in range(config.num_batches):
        keys = jnp.stack([_batch_key(s, b, 0) for s in seeds])
        states, _ = step(states, keys)
        ev = np.asarray(evaluate(states.params, jnp.stack([_batch_key(s, b, 1) for s in seeds])))
        if t_first is None:
            t_first = time.perf_counter() - t0
        for i in range(len(seeds)):
            if solved[i] is None:
                curves[i, b] = ev[i]
                if ev[i] >= 475.0:
                    solved[i] = (b + 1) * config.batch_episodes
        if all(s is not None for s in solved):
            break
    return solved, curves, time.perf_counter() - t0, t_first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--gym-seeds", type=int, nargs="*", default=[0])
    parser.add_argument(
        "--cli-seeds",
        type=int,
        nargs="*",
        default=[],
        help="also run these seeds one at a time exactly as `expectax rl` does (train() with "
        "the default Config, backend auto = jax), to check the vmapped numbers",
    )
    parser.add_argument("--plot", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    config = Config(backend="jax")
    print(
        f"defaults: hidden {config.hidden}, batch {config.batch_episodes} episodes, Adam "
        f"{config.learning_rate}, gamma {config.gamma}, baseline {config.baseline}, normalised "
        f"advantages {config.normalize_advantages}; budget {config.episodes} episodes"
    )
    solved, curves, wall, first = run_jax(config, args.seeds)
    ok = [s for s in solved if s is not None]
    median = statistics.median([s if s is not None else float("inf") for s in solved])
    print(f"JAX backend, seeds {args.seeds} vmapped: episodes to solve {solved}")
    print(
        f"  solved {len(ok)}/{len(solved)}, median {median}, wall {wall:.1f}s "
        f"(first batch incl. compilation {first:.1f}s)"
    )
    result = {"jax": {"seeds": args.seeds, "episodes_to_solve": solved, "median": median,
                      "wall_s": wall, "first_batch_s": first}}  # fmt: skip
    cli_results = []
    for s in args.cli_seeds:
        t0 = time.perf_counter()
        res = train(Config(seed=s), None, progress=False)
        dt = time.perf_counter() - t0
        cli_results.append({"seed": s, "episodes_to_solve": res["episodes_to_solve"], "wall_s": dt})
        print(f"expectax rl defaults, seed {s}: episodes to solve {res['episodes_to_solve']}, "
              f"wall {dt:.1f}s (incl. compilation)")  # fmt: skip
    result["cli"] = cli_results
    gym_results = []
    for s in args.gym_seeds:
        t0 = time.perf_counter()
        res = train(dataclasses.replace(config, backend="gymnasium", seed=s), None, progress=False)
        dt = time.perf_counter() - t0
        gym_results.append({"seed": s, "episodes_to_solve": res["episodes_to_solve"], "wall_s": dt})
        print(
            f"Gymnasium backend, seed {s}: episodes to solve {res['episodes_to_solve']}, "
            f"wall {dt:.1f}s"
        )
    result["gymnasium"] = gym_results
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        x = (np.arange(curves.shape[1]) + 1) * config.batch_episodes
        for s, c in zip(args.seeds, curves, strict=True):
            ax.plot(x, c, "o-", ms=3, label=f"seed {s}")
        ax.axhline(475, color="k", ls="--", lw=0.8, label="solved (475)")
        ax.set_xlabel("training episodes")
        ax.set_ylabel("evaluation mean return (100 episodes)")
        ax.set_title("REINFORCE on CartPole-v1, expectax rl defaults (JAX backend)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
