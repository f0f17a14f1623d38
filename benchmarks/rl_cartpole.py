"""How often `expectax rl` solves CartPole-v1 within its budget, over many seeds at once.

Solved means what ``expectax rl`` means (``expectax.rl.train``): after a training batch whose
mean return reaches 475, a *fresh* evaluation of 100 episodes of the sampled policy, with keys
used for nothing else, must reach 475 too, by a margin of ``k`` standard errors of its mean
(``mean − k·SE ≥ 475``, ``--confirm-margin k``; default 1.5); the training episodes up to that
batch are the episodes to solve, and the evaluation episodes are counted apart. The seeds run
with the JAX backend, vmapped over seeds (the same ``make_jax_trainer`` functions and the same
keys as ``expectax rl``, so each seed's result is the command's: check with ``--cli-seeds``).
``--margins 0 1 2`` compares margins in one pass (a seed's training does not depend on ``k``).
Each confirmed policy then gets a *fresh check*: a third evaluation of 100 more episodes, with
keys used nowhere else; the script prints, per ``k``, the seeds solved within the budget, the
median training episodes, how many confirmed policies pass the fresh check, and its lowest mean.

Seeds 0–299 were used for tuning (the margin: 100–299 only); the held-out seeds, never used to
choose anything, are 1000–1099, 2000–2099, 3000–3099 and 4000–4099.

    python benchmarks/rl_cartpole.py --seeds 1000-1099 [--margins 0 1.5]
        [--set lr=0.02 normalize_advantages=1] [--cli-seeds 1000 1001]
        [--plot docs/img/rl_cartpole.png] [--json out.json]
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

from expectax.rl.train import (
    _CONFIRM,
    _TRAIN,
    Config,
    _batch_key,
    confirmed,
    make_jax_trainer,
    train,
)

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


def run_seeds(config: Config, seeds: list[int], margins: list[float] | None = None) -> dict:
    """Train all seeds at once with the confirmation rule of ``expectax rl``, for each
    confirmation margin ``k`` of ``margins`` (default: ``config.confirm_margin``) at once.

    A seed's training does not depend on the margin (a confirmation only decides when to stop,
    and its keys are used for nothing else), so one pass serves every ``k``: a seed trains until
    a confirmation holds with the largest ``k`` (or the budget ends), and for each ``k`` it is
    solved at its first confirmation with ``mean − k·SE ≥ 475``, exactly where ``expectax rl
    --confirm-margin k`` stops. Each policy a ``k`` calls solved gets a third, independent
    evaluation of ``confirm_episodes`` more episodes (keys used nowhere else): the fresh check.
    """
    margins = sorted(set(margins if margins is not None else [config.confirm_margin]))
    trainers = [make_jax_trainer(dataclasses.replace(config, seed=s)) for s in seeds]
    tr = trainers[0]  # the functions depend on the seed only through the initial state
    t0 = time.perf_counter()
    states = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[t.init() for t in trainers])
    step = jax.jit(jax.vmap(tr.step))
    confirm = jax.jit(jax.vmap(tr.confirm))
    n, m = len(seeds), len(margins)
    solved: list[list[int | None]] = [[None] * n for _ in margins]
    confirmations = np.zeros((m, n), int)  # confirmations each k's run makes (counted × 100)
    recheck = np.full((m, n), np.nan)
    train_curves = np.full((n, config.num_batches), np.nan)
    confirm_curves = np.full((n, config.num_batches), np.nan)
    confirm_se = np.full((n, config.num_batches), np.nan)

    def vmapped_confirm(idx: list[int], params_of, key_of) -> tuple[np.ndarray, np.ndarray]:
        means, ses = [], []
        for c in range(0, len(idx), CHUNK):
            part = idx[c : c + CHUNK]
            pad = np.asarray(part + [part[0]] * (CHUNK - len(part)))
            params = jax.tree_util.tree_map(lambda x, pad=pad: x[pad], params_of)
            mean, se = confirm(params, jnp.stack([key_of(i) for i in pad]))
            means.extend(np.asarray(mean)[: len(part)])
            ses.extend(np.asarray(se)[: len(part)])
        return np.asarray(means, float), np.asarray(ses, float)

    for b in range(config.num_batches):
        keys = jnp.stack([_batch_key(s, b, _TRAIN) for s in seeds])
        new_states, metrics = step(states, keys)
        active = np.array([solved[-1][i] is None for i in range(n)])  # unsolved with max k
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
        if not todo:
            continue
        means, ses = vmapped_confirm(
            todo, states.params, lambda i, b=b: _batch_key(seeds[i], b, _CONFIRM)
        )
        newly = []  # (margin index, seed index) solved by this batch's confirmation
        for i, v, se in zip(todo, means, ses, strict=True):
            confirm_curves[i, b], confirm_se[i, b] = v, se
            for j, k in enumerate(margins):
                if solved[j][i] is None:
                    confirmations[j, i] += 1
                    if confirmed(float(v), float(se), k, 475.0):
                        solved[j][i] = (b + 1) * config.batch_episodes
                        newly.append((j, i))
        # the fresh check of each newly confirmed policy (one per seed, whatever its k's)
        idx = sorted({i for _, i in newly})
        if idx:
            fresh, _ = vmapped_confirm(
                idx,
                states.params,
                lambda i: _batch_key(seeds[i], config.num_batches + 2, _CONFIRM),
            )
            by_seed = dict(zip(idx, fresh, strict=True))
            for j, i in newly:
                recheck[j, i] = by_seed[i]
        if all(s is not None for s in solved[-1]):
            break
    wall = time.perf_counter() - t0
    per_margin = []
    for j, k in enumerate(margins):
        ok = [s for s in solved[j] if s is not None]
        rc = recheck[j][np.isfinite(recheck[j])]
        per_margin.append(
            {
                "confirm_margin": k,
                "episodes_to_solve": solved[j],
                "solved": len(ok),
                "fraction": len(ok) / n,
                "median": statistics.median([s if s is not None else math.inf for s in solved[j]]),
                "eval_episodes": (confirmations[j] * config.confirm_episodes).tolist(),
                "recheck": recheck[j].tolist(),
                "recheck_pass": int(np.sum(rc >= 475.0)),
                "recheck_fraction": float(np.mean(rc >= 475.0)) if rc.size else math.nan,
                "recheck_min": float(rc.min()) if rc.size else math.nan,
            }
        )
    return {
        "seeds": seeds,
        "margins": per_margin,
        **{k: v for k, v in per_margin[0].items() if k != "confirm_margin"},
        "wall_s": wall,
        "train_curves": train_curves,
        "confirm_curves": confirm_curves,
        "confirm_se": confirm_se,
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
    parser.add_argument(
        "--margins",
        type=float,
        nargs="+",
        default=None,
        help="confirmation margins k (standard errors) to compare in one pass (default: the "
        "config's confirm_margin); --cli-seeds/--gym-seeds use the config's",
    )
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
        f"{config.episodes} episodes; confirmation: {config.confirm_episodes} episodes, margin "
        f"{config.confirm_margin:g} SE; seeds {seeds[0]}..{seeds[-1]} ({len(seeds)})"
    )
    res = run_seeds(config, seeds, args.margins)
    print(
        f"JAX backend, vmapped, {len(seeds)} seeds, wall {res['wall_s']:.1f}s (one pass for "
        f"every margin); fresh check: a third evaluation of each confirmed policy on "
        f"{config.confirm_episodes} more episodes"
    )
    print(
        "| k (--confirm-margin) | solved within budget | median training episodes (unsolved = ∞) "
        "| quartiles of the solved | evaluation episodes per seed (mean) | fresh check ≥ 475 "
        "| lowest fresh mean |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in res["margins"]:
        ok = sorted(s for s in r["episodes_to_solve"] if s is not None)
        q = (
            " / ".join(f"{v:g}" for v in np.percentile(ok, [25, 50, 75], method="lower"))
            if ok
            else "-"
        )
        frac = r["recheck_fraction"]
        print(
            f"| {r['confirm_margin']:g} | {r['solved']} / {len(seeds)} | {r['median']} | {q} "
            f"| {np.mean(r['eval_episodes']):.0f} | {r['recheck_pass']} / {r['solved']} "
            f"({100 * frac:.1f} %) | {r['recheck_min']:.1f} |"
        )
    for r in res["margins"]:
        unsolved = [s for s, e in zip(seeds, r["episodes_to_solve"], strict=True) if e is None]
        failed = [
            s for s, v in zip(seeds, r["recheck"], strict=True) if np.isfinite(v) and v < 475.0
        ]
        print(
            f"k = {r['confirm_margin']:g}: unsolved seeds {unsolved}; confirmed but under 475 "
            f"on the fresh check: {failed}"
        )
    result = {
        "config": dataclasses.asdict(config),
        **{k: v for k, v in res.items() if not k.endswith("curves") and k != "confirm_se"},
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
