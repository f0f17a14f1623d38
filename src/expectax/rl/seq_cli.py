"""``expectax rl-seq``: train a small transformer with each sequence policy-gradient variant.

Argument parsing and output only; the model and the training are in
:mod:`expectax.rl.seq_demo` (which needs equinox: ``pip install "expectax[seq]"``, from a
checkout ``pip install ".[seq]"``); the flags come from :mod:`expectax.rl.seq_config`, so
``--help`` lists them without equinox. Writes ``log.csv`` (per step and seed), ``evals.csv``
(exact evaluations), ``summary.json`` and a figure (``--plot``, default ``OUT/curve.png``) into
``--out``, and prints the results table. Exit status 0 after training, 2 for a usage error
(one line on stderr), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expectax import cliutil, runio
from expectax.rl import seq_config

__all__ = ["configure_parser", "main", "run", "summary_markdown"]

#: What ``expectax rl-seq`` writes into ``--out`` (the scheme of every command).
FILES = ("log.csv", "evals.csv", "summary.json", "curve.png")

INSTALL = 'pip install "expectax[seq]" (from a checkout: pip install ".[seq]")'


def default_warmup(steps: int, warmup: int = seq_config.SeqConfig.warmup) -> int:
    """The learning-rate warm-up when ``--warmup`` is not given: ``min(50, steps // 10)``."""
    return min(warmup, steps // 10)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``expectax rl-seq`` flags to ``parser``."""
    seq_demo = seq_config  # the names the flags need, without equinox
    d = seq_demo.SeqConfig()
    pos = runio.positive_int
    parser.description = (
        "Train a small causal transformer (equinox) from scratch with each sequence "
        "policy-gradient variant on a verifiable-reward task: the prompt is a target sum, the "
        "completion digits whose sum must equal it. All seeds of a variant train at once "
        "(vmap, one compilation); the evaluation is exact (every completion enumerated). "
        f"Needs the 'seq' extra (equinox): {INSTALL}."
    )
    parser.add_argument(
        "--variant",
        nargs="+",
        default=list(seq_demo.DEFAULT_VARIANTS),
        metavar="NAME",
        choices=list(seq_demo.VARIANTS),
        help=f"one or more of {', '.join(seq_demo.VARIANTS)} "
        f"(default: {' '.join(seq_demo.DEFAULT_VARIANTS)})",
    )
    runio.add_common_flags(
        parser, lr=d.learning_rate, steps=d.steps, seeds=(0, 1, 2, 3, 4), out="runs/rl-seq"
    )
    parser.add_argument("--groups", type=pos, default=d.groups, help="prompts per step (G)")
    parser.add_argument(
        "--group-size", type=pos, default=d.group_size, help="completions per prompt (K)"
    )
    parser.add_argument("--digits", type=pos, default=d.digits, help="digits 0..D-1 (D)")
    parser.add_argument(
        "--max-len", type=pos, default=d.max_len, help="tokens per completion, EOS included (L)"
    )
    parser.add_argument(
        "--min-target",
        type=runio.nonneg_int,
        default=d.min_target,
        help=f"smallest target sum of a prompt (default {d.min_target})",
    )
    parser.add_argument(
        "--max-target",
        type=runio.nonneg_int,
        default=d.max_target,
        help=f"largest target sum, at most (D-1)·L (default {d.max_target})",
    )
    parser.add_argument(
        "--reward",
        choices=seq_demo.REWARDS,
        default=d.reward,
        help=f"exact: 1 when the sum is the target; partial: credit by distance (default "
        f"{d.reward})",
    )
    parser.add_argument(
        "--kl",
        choices=seq_demo.KL_MODES,
        default=d.kl,
        help="KL to the reference (the initial policy): kN-reward folds estimator kN into the "
        f"reward, kN-loss adds it to the loss (default {d.kl})",
    )
    parser.add_argument(
        "--beta", type=runio.nonneg_float, default=d.beta, help=f"KL coefficient (default {d.beta})"
    )
    parser.add_argument(
        "--entropy",
        type=runio.nonneg_float,
        default=d.entropy,
        help=f"entropy-bonus coefficient (exact per-token entropy; default {d.entropy})",
    )
    parser.add_argument(
        "--warmup",
        type=runio.nonneg_int,
        default=None,
        help=f"linear learning-rate warm-up steps (default min({d.warmup}, steps // 10), so "
        "that it fits any --steps)",
    )
    parser.add_argument(
        "--schedule",
        choices=seq_demo.SCHEDULES,
        default=d.schedule,
        help=f"learning rate after the warm-up: constant or cosine decay to 0 (default "
        f"{d.schedule})",
    )
    parser.add_argument(
        "--loss-agg-mode",
        choices=seq_demo.LOSS_AGG_MODES,
        default=None,
        help="override every variant's own aggregation",
    )
    parser.add_argument(
        "--baseline-decay",
        type=runio.nonneg_float,
        default=d.baseline_decay,
        help=f"decay of reinforce's moving-average baseline (default {d.baseline_decay})",
    )
    parser.add_argument(
        "--d-model", type=pos, default=d.d_model, help=f"transformer width (default {d.d_model})"
    )
    parser.add_argument(
        "--heads", type=pos, default=d.heads, help=f"attention heads (default {d.heads})"
    )
    parser.add_argument(
        "--layers", type=pos, default=d.layers, help=f"transformer blocks (default {d.layers})"
    )
    parser.add_argument(
        "--eval-every", type=pos, default=d.eval_every, help="steps between exact evaluations"
    )
    parser.add_argument(
        "--threshold",
        type=runio.nonneg_float,
        default=d.threshold,
        help="exact success probability that counts as reaching the top reward",
    )
    parser.add_argument(
        "--loss",
        nargs="+",
        default=[d.loss],
        metavar="NAME",
        choices=list(seq_demo.POLICY_LOSSES),
        help="policy loss(es) of expectax.rl.sequence: ppo (sequence_policy_loss; PPO's clip "
        "from the second --epochs update), gspo, cispo, sapo, gmpo, vespo; each with its own "
        "clip range, temperatures or kernel but aggregated as the variant (rloo: "
        "seq-mean-token-sum) or --loss-agg-mode, not by the loss's default (gspo, sapo: "
        "seq-mean-token-mean; cispo, vespo: token-mean), so that the first update is the "
        "variant's REINFORCE gradient; gmpo has its own per-sequence geometric mean. Every "
        f"variant is trained with each (default {d.loss})",
    )
    parser.add_argument(
        "--epochs",
        type=pos,
        default=d.epochs,
        help="optimiser updates on each batch (PPO epochs, TRL's num_iterations); the first is "
        "on-policy for the trainer, the later ones use the loss's ratio and clip against the "
        f"log-probs at sampling time (default {d.epochs})",
    )
    parser.add_argument(
        "--rollout-mismatch",
        nargs="+",
        type=runio.nonneg_float,
        default=[d.rollout_mismatch],
        metavar="DELTA",
        help="simulate a rollout engine that is not the trainer: completions are sampled from "
        "logits + DELTA·u (u a fixed standard-normal table per seed, prompt × position × "
        "token) and the engine reports its own log-probs; several values train one run each; "
        f"0: the trainer samples (default {d.rollout_mismatch:g})",
    )
    parser.add_argument(
        "--correction",
        nargs="+",
        default=[d.correction],
        metavar="NAME",
        choices=list(seq_demo.CORRECTIONS),
        help="off-policy correction(s) for --rollout-mismatch (rollout_correction_weights): "
        "LEVEL-MODE with LEVEL token or sequence and MODE truncate (TIS), mask (MIS), reject, "
        "or is (plain ratios); none: no correction; no effect with mismatch 0 or --loss vespo "
        "(its own kernel of the rollout ratio) "
        f"(default {d.correction})",
    )
    parser.add_argument(
        "--correction-threshold",
        type=runio.nonneg_float,
        default=d.correction_threshold,
        help=f"the correction's threshold C (default {d.correction_threshold:g})",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        default=None,
        help="the figure (default OUT/curve.png)",
    )
    return parser


def _error(message: str) -> int:
    return cliutil.fail("expectax rl-seq", message)


def _configs(args: argparse.Namespace) -> list[Any]:
    import itertools

    seq_demo = seq_config
    out: dict[str, Any] = {}
    runs = itertools.product(
        dict.fromkeys(args.variant),
        dict.fromkeys(args.loss),
        dict.fromkeys(args.rollout_mismatch),
        dict.fromkeys(args.correction),
    )
    for v, loss, mismatch, correction in runs:
        if v not in seq_demo.VARIANTS:
            raise ValueError(
                f"--variant: unknown {v!r}; choose from {', '.join(seq_demo.VARIANTS)}."
            )
        config = seq_demo.SeqConfig(
            variant=v,
            loss=loss,
            epochs=args.epochs,
            rollout_mismatch=mismatch,
            # no mismatch: every correction weight is 1, the run is the uncorrected one; VESPO
            # weighs by its own kernel of the rollout ratio instead
            correction=correction if mismatch and loss != "vespo" else "none",
            correction_threshold=args.correction_threshold,
            digits=args.digits,
            max_len=args.max_len,
            min_target=args.min_target,
            max_target=args.max_target,
            reward=args.reward,
            groups=args.groups,
            group_size=args.group_size,
            steps=args.steps,
            learning_rate=args.lr,
            kl=args.kl,
            beta=args.beta,
            entropy=args.entropy,
            warmup=args.warmup if args.warmup is not None else default_warmup(args.steps),
            schedule=args.schedule,
            loss_agg_mode=args.loss_agg_mode,
            baseline_decay=args.baseline_decay,
            d_model=args.d_model,
            heads=args.heads,
            layers=args.layers,
            eval_every=args.eval_every,
            threshold=args.threshold,
        )
        try:
            config.validate()
        except ValueError as err:  # name the flag, not the dataclass field
            raise ValueError(_flag_names(str(err))) from None
        out.setdefault(config.label, config)
    return list(out.values())


def _flag_names(message: str) -> str:
    """``"group_size must …"`` → ``"--group-size must …"`` (the field that starts a message)."""
    head, _, rest = message.partition(" ")
    field = head.rstrip(":")
    if field == "learning_rate":
        return f"--lr{head[len(field) :]} {rest}"
    if field in {"targets", *_FIELDS}:
        flag = "--min-target/--max-target" if field == "targets" else "--" + field.replace("_", "-")
        return f"{flag}{head[len(field) :]} {rest}"
    return message


_FIELDS = (
    "variant digits max_len groups group_size steps kl beta entropy warmup schedule "
    "loss_agg_mode baseline_decay "
    "d_model heads layers eval_every threshold reward "
    "loss epochs rollout_mismatch correction correction_threshold"
).split()


def _group(result: dict[str, Any]) -> dict[str, Any]:
    c = result["config"]
    final = result["final"]
    firsts = [s for s in result["first_step_reached"] if s is not None]
    return {
        "variant": result["label"],
        "advantage": seq_config.VARIANTS[c["variant"]][0],
        "loss_agg_mode": c["loss_agg_mode"],
        "loss": c["loss"],
        "epochs": c["epochs"],
        "rollout_mismatch": c["rollout_mismatch"],
        "correction": c["correction"],
        "seeds": result["seeds"],
        "reached": int(sum(result["reached"])),
        "success": runio.mean_se(final["success"]),
        "worst_success": runio.mean_se(final["worst_success"]),
        "greedy": runio.mean_se(final["greedy"]),
        "kl": runio.mean_se(final["kl"]),
        "median_first_step": float(sorted(firsts)[len(firsts) // 2]) if firsts else math.nan,
        "tokens_per_s": result["tokens_per_s"],
        "compile_s": result["compile_s"],
        "train_s": result["train_s"],
    }


def summary_markdown(groups: Sequence[dict[str, Any]], threshold: float) -> str:
    """The results table (mean ± s.e. over seeds of the final exact evaluation)."""

    def fmt(ms: tuple[float, float], spec: str = ".3f") -> str:
        m, se = ms
        if not math.isfinite(m):
            return "-"
        return f"{m:{spec}}" if not math.isfinite(se) else f"{m:{spec}} ± {se:.2g}"

    lines = [
        f"| variant | aggregation | seeds ≥ {threshold:g} | success (sampled, exact) | worst "
        "target | greedy success | KL(π‖π_ref) (exact) | median first step ≥ thr. | "
        "tokens/s | compile s | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in groups:
        first = g["median_first_step"]
        lines.append(
            f"| {g['variant']} | {g['loss_agg_mode']} | {g['reached']}/{len(g['seeds'])} | "
            f"{fmt(g['success'])} | {fmt(g['worst_success'])} | {fmt(g['greedy'])} | "
            f"{fmt(g['kl'], '.2f')} | {'-' if not math.isfinite(first) else f'{first:.0f}'} | "
            f"{g['tokens_per_s']:,.0f} | {g['compile_s']:.1f} | {g['train_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _smooth(y, window: int):
    import numpy as np

    y = np.asarray(y, float)
    if window <= 1 or y.shape[-1] < window:
        return y
    kernel = np.ones(window) / window
    return np.stack([np.convolve(row, kernel, mode="valid") for row in y])


def plot_curves(path: str | Path, results: Sequence[dict[str, Any]], title: str = "") -> Path:
    """Three panels (mean ± s.e. over seeds): batch success rate (10-step moving average),
    exact success probability at the evaluations, and the k1 estimate of KL(π‖π_ref)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for res in results:
        label = res["label"]
        n = len(res["seeds"])
        curves = [
            (axes[0], _smooth(res["curves"]["success"], 10), 10),
            (axes[2], _smooth(res["curves"]["kl_k1"], 10), 10),
        ]
        for ax, y, w in curves:
            x = np.arange(y.shape[1]) + w
            m = y.mean(0)
            se = y.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(m)
            (line,) = ax.plot(x, m, label=label)
            ax.fill_between(x, m - se, m + se, color=line.get_color(), alpha=0.25)
        steps = np.array([e["step"] for e in res["evals"]])
        y = np.stack([np.asarray(e["success"]) for e in res["evals"]], axis=1)
        m = y.mean(0)
        se = y.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(m)
        (line,) = axes[1].plot(steps, m, marker="o", ms=3, label=label)
        axes[1].fill_between(steps, m - se, m + se, color=line.get_color(), alpha=0.25)
    thr = results[0]["config"]["threshold"]
    axes[1].axhline(thr, color="k", ls="--", lw=0.8, label=f"threshold {thr:g}")
    labels = (
        "batch success rate (10-step mean)",
        "success probability (exact, sampled policy)",
        "KL(π‖π_ref), k1 estimate on the batch",
    )
    for ax, ylabel in zip(axes, labels, strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with runio.atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    """Run ``expectax rl-seq`` with parsed ``args``; returns the exit status."""
    from rich.console import Console

    try:
        from expectax.rl import seq_demo
    except ImportError:
        return _error(f"the 'seq' extra is not installed (equinox): {INSTALL}")
    seeds = list(args.seed)
    if len(set(seeds)) != len(seeds):
        return _error("--seed lists a seed twice; give each once.")
    if args.warmup is None:
        args.warmup = default_warmup(args.steps)
    try:
        configs = _configs(args)
    except ValueError as err:
        return _error(str(err))
    names = list(FILES) if args.plot is None else list(FILES[:-1])
    try:
        out = runio.prepare_out(args.out, names, overwrite=args.overwrite)
        if args.plot is not None:
            Path(args.plot).resolve().parent.mkdir(parents=True, exist_ok=True)
    except runio.OutputError as err:
        return _error(str(err))
    except OSError as err:
        return _error(f"--plot: cannot create the folder of {args.plot}: {err.strerror}")
    command = "expectax " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["rl-seq"] else ""
    results, curve_rows, eval_rows = [], [], []
    with runio.progress(quiet=args.quiet, console=Console(stderr=True)) as bar:
        for config in configs:
            task = bar.add_task(f"{config.label} ({len(seeds)} seeds)", total=config.steps)
            res = seq_demo.train(
                config, seeds, progress=lambda done, t=task: bar.update(t, completed=done)
            )
            res["label"] = config.label
            results.append(res)
            for j, seed in enumerate(seeds):
                for i in range(config.steps):
                    row = {"variant": config.label, "seed": seed, "step": i + 1}
                    row.update({k: v[j, i] for k, v in res["curves"].items()})
                    curve_rows.append(row)
                for e in res["evals"]:
                    row = {"variant": config.label, "seed": seed, "step": e["step"]}
                    for k in ("success", "worst_success", "greedy", "kl"):
                        row[k] = e[k][j]
                    eval_rows.append(row)
    runio.write_csv(out / "log.csv", curve_rows)
    runio.write_csv(out / "evals.csv", eval_rows)
    groups = [_group(r) for r in results]
    plot = Path(args.plot) if args.plot is not None else out / "curve.png"
    plot_curves(plot, results, title=command)
    summary = {
        "command": command,
        "config": {k: v for k, v in vars(args).items() if k not in ("run", "func")},
        "groups": runio.groups_json(groups),
        "runs": [
            {
                "variant": r["label"],
                "seed": seed,
                "reached": r["reached"][j],
                "first_step_reached": r["first_step_reached"][j],
                **{
                    k: (v[j] if k.endswith("_per_target") else float(v[j]))
                    for k, v in r["final"].items()
                },
            }
            for r in results
            for j, seed in enumerate(seeds)
        ],
        "plot": plot,
    }
    runio.write_json(out / "summary.json", summary)
    if args.json:
        print(json.dumps(runio.json_safe(summary), indent=2, allow_nan=False))
        return 0
    print(summary_markdown(groups, configs[0].threshold), end="")
    print(f"wrote log.csv, evals.csv, summary.json to {out}; {plot}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m expectax.rl.seq_cli``: the same as ``expectax rl-seq``."""
    import sys

    from expectax.cli import main as expectax_main

    return expectax_main(["rl-seq", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
