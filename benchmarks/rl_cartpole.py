"""How often `expectax rl` solves CartPole-v1 within its budget, over many seeds at once.

Solved means what ``expectax rl`` means (``expectax.rl.train``): after a training batch whose
mean return reaches 475, a *fresh* evaluation of 100 episodes of the sampled policy, with keys
used for nothing else, must reach 475 too; the training episodes up to that batch are the
episodes to solve, and the evaluation episodes are counted apart. The seeds run with the JAX
backend, vmapped over seeds (the same ``make_jax_trainer`` functions and the same keys as
``expectax rl``, so each seed's result is the command's: check with ``--cli-seeds``).

Seeds 0–299 were used for tuning; the held-out seeds, never used to choose anything, are
1000–1099, 2000–2099 and 3000–3099.

    python benchmarks/rl_cartpole.py --seeds 1000-1099 [--set lr=0.02 normalize_advantages=1]
        [--cli-seeds 1000 1001] [--plot docs/img/rl_cartpole.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from expectax.rl.train import _CONFIRM, _TRAIN, Config, _batch_key, make_jax_trainer, train

CHUNK = 16  # confirmations run vmapped over this many seeds at a time (one compilation)


def parse_seeds(items: list[str]) -> list[int]:
    seeds: list[int] = []
    for it in items:
        if "-" in it:
            lo, hi = it.split("-")
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(it))
    return seeds


def run_seeds(config: Config, seeds: list[int]) -> dict:
    """Train all seeds at once with the confirmation rule of ``expectax rl``."""
    trainers = [make_jax_trainer(dataclasses.replace(config, seed=s)) for s in seeds]
    tr = trainers[0]  # the functions depend on the seed only through the initial state
    t0 = time.perf_counter()
    states = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[t.init() for t in trainers])
    step = jax.jit(jax.vmap(tr.step))
    confirm = jax.jit(jax.vmap(tr.confirm))
    n = len(seeds)
    solved: list[int | None] = [None] * n
    confirmations = np.zeros(n, int)
    train_curves = np.full((n, config.num_batches), np.nan)
    confirm_curves = np.full((n, config.num_batches), np.nan)
    for b in range(config.num_batches):
        keys = jnp.stack([_batch_key(s, b, _TRAIN) for s in seeds])
        new_states, metrics = step(states, keys)
        active = np.array([s is None for s in solved])
        # finished seeds keep their state (as `expectax rl` stops when solved)
        keep = jnp.asarray(active)
        states = jax.tree_util.tree_map(
            lambda new, old, keep=keep: jnp.where(
                keep.reshape((-1,) + (1,) * (new.ndim - 1)), new, old
            ),
            new_states,
            states,
        )
        tr_ret = np.asarray(metrics["train_return"])
        train_curves[active, b] = tr_ret[active]
        todo = [i for i in range(n) if active[i] and tr_ret[i] >= 475.0]
        for c in range(0, len(todo), CHUNK):
            idx = todo[c : c + CHUNK]
            pad = idx + [idx[0]] * (CHUNK - len(idx))
            sel = np.asarray(pad)
            params = jax.tree_util.tree_map(lambda x, sel=sel: x[sel], states.params)
            ks = jnp.stack([_batch_key(seeds[i], b, _CONFIRM) for i in pad])
            ev = np.asarray(confirm(params, ks))[: len(idx)]
            for i, v in zip(idx, ev, strict=True):
                confirmations[i] += 1
                confirm_curves[i, b] = v
                if v >= 475.0:
                    solved[i] = (b + 1) * config.batch_episodes
        if all(s is not None for s in solved):
            break
    wall = time.perf_counter() - t0
    # A third, independent evaluation of every confirmed policy (keys used nowhere else):
    # how much of "confirmed" is the luck of the confirming evaluation?
    recheck = [math.nan] * n
    done = [i for i in range(n) if solved[i] is not None]
    for c in range(0, len(done), CHUNK):
        idx = done[c : c + CHUNK]
        pad = np.asarray(idx + [idx[0]] * (CHUNK - len(idx)))
        params = jax.tree_util.tree_map(lambda x, pad=pad: x[pad], states.params)
        ks = jnp.stack([_batch_key(seeds[i], config.num_batches + 2, _CONFIRM) for i in pad])
        for i, v in zip(idx, np.asarray(confirm(params, ks))[: len(idx)], strict=True):
            recheck[i] = float(v)
    ok = [s for s in solved if s is not None]
    return {
        "seeds": seeds,
        "episodes_to_solve": solved,
        "solved": len(ok),
        "fraction": len(ok) / n,
        "median": statistics.median([s if s is not None else math.inf for s in solved]),
        "eval_episodes": (confirmations * config.confirm_episodes).tolist(),
        "wall_s": wall,
        "recheck": recheck,
        "train_curves": train_curves,
        "confirm_curves": confirm_curves,
    }


def _parse_set(items: list[str]) -> dict:
    out = {}
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for it in items:
        k, v = it.split("=")
        k = {"lr": "learning_rate"}.get(k, k)
        default = getattr(Config(), k)
        t = float if default is None else type(default)
        if k == "hidden":
            out[k] = tuple(int(x) for x in v.split(","))
        elif t is bool:
            out[k] = bool(int(v))
        else:
            out[k] = t(v)
        assert k in fields
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", nargs="+", default=["1000-1099"])
    parser.add_argument("--set", nargs="*", default=[], help="Config overrides, e.g. lr=0.02")
    parser.add_argument("--cli-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--gym-seeds", type=int, nargs="*", default=[])
    parser.add_argument("--plot", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    config = Config(backend="jax", **_parse_set(args.set))
    print(
        f"config: hidden {config.hidden}, gain {config.input_gain}, batch "
        f"{config.batch_episodes}, Adam {config.learning_rate} (b1 {config.adam_b1}, b2 "
        f"{config.adam_b2}, clip {config.max_grad_norm}), gamma {config.gamma}, baseline "
        f"{config.baseline}, normalised advantages {config.normalize_advantages}; budget "
        f"{config.episodes} episodes; seeds {seeds[0]}..{seeds[-1]} ({len(seeds)})"
    )
    res = run_seeds(config, seeds)
    ok = [s for s in res["episodes_to_solve"] if s is not None]
    print(
        f"JAX backend, vmapped: solved (confirmed) {res['solved']}/{len(seeds)} "
        f"({100 * res['fraction']:.0f}%), median {res['median']} training episodes"
        + (f" (range {min(ok)}-{max(ok)})" if ok else "")
        + f"; evaluation episodes per seed: mean {np.mean(res['eval_episodes']):.0f}; "
        f"wall {res['wall_s']:.1f}s"
    )
    rc = [v for v in res["recheck"] if np.isfinite(v)]
    if rc:
        print(
            f"re-evaluation of the {len(rc)} confirmed policies on 100 new episodes each: "
            f"{sum(v >= 475.0 for v in rc)} reach 475 again, mean {np.mean(rc):.1f}, "
            f"min {min(rc):.1f}"
        )
    unsolved = [s for s, e in zip(seeds, res["episodes_to_solve"], strict=True) if e is None]
    print(f"unsolved seeds: {unsolved}")
    result = {
        "config": dataclasses.asdict(config),
        **{k: v for k, v in res.items() if not k.endswith("curves")},
    }
    for name, backend, ss in (
        ("cli", "auto", args.cli_seeds),
        ("gym", "gymnasium", args.gym_seeds),
    ):
        rows = []
        for s in ss:
            t0 = time.perf_counter()
            r = train(dataclasses.replace(config, backend=backend, seed=s), None, progress=False)
            rows.append(
                {
                    "seed": s,
                    "episodes_to_solve": r["episodes_to_solve"],
                    "eval_episodes": r["eval_episodes"],
                    "wall_s": time.perf_counter() - t0,
                }
            )
            print(f"{name} seed {s}: {rows[-1]}")
        result[name] = rows
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.6))
        x = (np.arange(config.num_batches) + 1) * config.batch_episodes
        for i, c in enumerate(res["train_curves"][:10]):
            ax.plot(x, c, "-", lw=1, alpha=0.7, color=f"C{i}")
            cc = res["confirm_curves"][i]
            ax.plot(x, cc, "s", ms=3, color=f"C{i}")
        ax.axhline(475, color="k", ls="--", lw=0.8, label="solved (475)")
        ax.set_xlabel("training episodes")
        ax.set_ylabel("return (lines: training batch; squares: confirmation)")
        ax.set_title(f"REINFORCE on CartPole-v1, seeds {seeds[0]}–{seeds[min(9, len(seeds) - 1)]}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
