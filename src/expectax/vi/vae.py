r"""``expectax vae``: train a discrete VAE with any Bernoulli gradient estimator (the command line).

The benchmark of the discrete-gradient literature (REBAR, RELAX, ARM, DisARM, VIMCO): a VAE with
``L`` Bernoulli latents on binarised images, trained with the estimator(s) named by
``--estimator`` at an equal budget of decoder evaluations. The parts, one file each:

- :mod:`expectax.vi.vae_model`: the model, the ELBO and IW bound, the estimators, and
  :func:`~expectax.vi.vae_model.make_loss` (each image's ELBO an ``expectax.expectation``);
- :mod:`expectax.vi.vae_train`: :func:`~expectax.vi.vae_train.train`, the training loop and
  its evaluations;
- this module: the flags, the output files (through :mod:`expectax.runio`) and the table.

Example::

    expectax vae --estimator rloo disarm --seed 0 1 2 --steps 3000 --out runs/vae

References:
  Dong, Mnih & Tucker (2020), "DisARM: an antithetic gradient estimator for binary latent
  variables", NeurIPS (code: google-research/google-research/disarm). Yin & Zhou (2019), "ARM".
  Tucker et al. (2017), "REBAR". Grathwohl et al. (2018), "RELAX". Mnih & Rezende (2016),
  "VIMCO". Kool, van Hoof & Welling (2019, 2020) (RLOO, unordered set). Jang, Gu & Poole
  (2017) and Maddison, Mnih & Teh (2017) (Gumbel-softmax / Concrete). Burda, Grosse &
  Salakhutdinov (2016), "Importance weighted autoencoders".
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from expectax import cliutil, runio
from expectax.vi.digits import load_digits, load_npz
from expectax.vi.vae_model import (  # re-exported: the names users of expectax.vi.vae know
    ESTIMATORS,
    MAX_JOINT_LATENTS,
    TRAINED_CONTROL_VARIATE,
    VAEConfig,
    _available,
    _bernoulli_log_pmf,
    _load,
    _log_weight,
    available_estimators,
    elbo,
    encode,
    importance_weighted_bound,
    init_params,
    log_joint,
    make_estimator,
    make_loss,
    needs_joint,
    num_samples_for,
)
from expectax.vi.vae_train import Curve, train

__all__ = [
    "ESTIMATORS",
    "MAX_JOINT_LATENTS",
    "TRAINED_CONTROL_VARIATE",
    "Curve",
    "VAEConfig",
    "available_estimators",
    "configure_parser",
    "elbo",
    "encode",
    "importance_weighted_bound",
    "init_params",
    "log_joint",
    "main",
    "make_estimator",
    "make_loss",
    "needs_joint",
    "num_samples_for",
    "run",
    "summary_markdown",
    "train",
]

_PRIVATE = (_available, _bernoulli_log_pmf, _load, _log_weight)  # used by tests and the CLI


# --------------------------------------------------------------------------- summaries


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in dict.fromkeys(r["estimator"] for r in rows):
        mine = [r for r in rows if r["estimator"] == name]
        entry: dict[str, Any] = {
            "estimator": name,
            "seeds": len(mine),
            "diverged": sum(r["status"] != "ok" for r in mine),
            "num_samples": mine[0]["num_samples"],
            "evaluations": mine[0]["evaluations"],
            "steps": mine[0]["steps"],
        }
        for col in ("train_elbo", "test_iw"):
            entry[col], entry[col + "_se"] = runio.mean_se([r[col] for r in mine])
        entry["log10_grad_var"], entry["log10_grad_var_se"] = runio.mean_se(
            [np.log10(r["grad_var"]) for r in mine]
        )
        entry["seconds"] = float(np.mean([r["seconds"] for r in mine]))
        out.append(entry)
    return out


def summary_markdown(rows: list[dict[str, Any]], iw_samples: int = 100) -> str:
    """The summary as a Markdown table (the one in docs/vae.md), mean ± s.e. over seeds."""

    def fmt(mean: float, se: float) -> str:
        return f"{mean:.2f} ± {se:.2f}" if np.isfinite(se) else f"{mean:.2f}"

    lines = [
        f"| estimator | f evals / image / step | seeds | train ELBO | held-out IW bound "
        f"(k = {iw_samples}) | log10 encoder grad. variance | s / run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['estimator']} | {r['evaluations']} | {r['seeds']} | "
            f"{fmt(float(r['train_elbo']), float(r['train_elbo_se']))} | "
            f"{fmt(float(r['test_iw']), float(r['test_iw_se']))} | "
            f"{fmt(float(r['log10_grad_var']), float(r['log10_grad_var_se']))} | "
            f"{float(r['seconds']):.0f} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI

CURVE_COLUMNS = ("step", *Curve._fields[1:])


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``expectax vae`` flags to ``parser``."""
    parser.description = (
        "Train a VAE with Bernoulli latents (the DisARM paper's linear or nonlinear model) on "
        "binarised images with one or more gradient estimators; write learning curves (CSV), "
        "a summary with mean ± s.e. over seeds (CSV, JSON, Markdown), and comparison plots."
    )
    parser.add_argument(
        "--estimator",
        nargs="+",
        default=["rloo"],
        metavar="NAME",
        choices=[*ESTIMATORS, "all"],
        help=f"one or more of {', '.join(ESTIMATORS)}, or 'all' (default: rloo)",
    )
    parser.add_argument(
        "--model",
        choices=["linear", "nonlinear"],
        default="linear",
        help="linear: affine encoder/decoder; nonlinear: 2×200 LeakyReLU(0.3)",
    )
    pos_int, pos_float = runio.positive_int, runio.positive_float
    parser.add_argument("--latents", type=pos_int, default=32, help="Bernoulli latents (32)")
    runio.add_common_flags(parser, lr=1e-3, steps=3000, seeds=(0,), out="runs/vae")
    parser.add_argument(
        "--data",
        default=None,
        metavar="FILE",
        help="local .npz with x_train and x_test (e.g. Keras' mnist.npz); "
        "default: scikit-learn's 8×8 digits",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="binarisation threshold on the [0, 1] grey scale (the reference's: 0.5)",
    )
    parser.add_argument(
        "--train-size",
        type=pos_int,
        default=None,
        help="--data only: train on the first N images of x_train (the DisARM reference: "
        "50000 of MNIST's 60000; default: all)",
    )
    parser.add_argument(
        "--test-size",
        type=pos_int,
        default=297,
        help="digits only: images held out by the fixed permutation (default 297 of 1797)",
    )
    parser.add_argument("--batch-size", type=pos_int, default=50, help="minibatch (default 50)")
    parser.add_argument(
        "--evaluations",
        type=pos_int,
        default=2,
        help="evaluations of f per image per step; ARM/DisARM get pairs "
        "(default 2: one pair, or 2 samples for RLOO)",
    )
    parser.add_argument(
        "--log-q-grad",
        action="store_true",
        help="keep the zero-mean −∇φ log q term in the encoder's gradient (default: dropped, "
        "as in the DisARM reference; VIMCO always keeps it)",
    )
    parser.add_argument(
        "--temperature",
        type=pos_float,
        default=0.5,
        help="temperature of gumbel-softmax and st-gumbel-softmax (default 0.5)",
    )
    parser.add_argument(
        "--cv-lr",
        type=pos_float,
        default=1e-2,
        help="Adam step size of REBAR/RELAX's control-variate parameters (default 0.01)",
    )
    parser.add_argument("--eval-every", type=pos_int, default=250, help="steps between evaluations")
    parser.add_argument(
        "--var-repeats",
        type=pos_int,
        default=16,
        help="gradient estimates on a fixed batch for the variance (default 16)",
    )
    parser.add_argument("--iw-samples", type=pos_int, default=100, help="k of the IW bound (100)")
    parser.add_argument(
        "--eval-points",
        type=pos_int,
        default=None,
        help="evaluate on the first N images of each set only (default: the whole sets)",
    )
    return parser


def _check_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Validate the flags before any training; return the estimators to run and notes."""
    if args.var_repeats < 2:
        raise ValueError(f"--var-repeats must be at least 2, got {args.var_repeats}.")
    if len(set(args.seed)) != len(args.seed):
        raise ValueError("--seed lists a seed twice; give each once.")
    if args.train_size is not None and args.data is None:
        raise ValueError("--train-size applies to --data FILE; for the digits use --test-size.")
    notes = []
    if "all" in args.estimator:
        names = available_estimators()
        missing = [n for n in ESTIMATORS if n not in names]
        if missing:
            notes.append(f"not available in this install, skipped: {', '.join(missing)}")
        if "unordered-set" in names and args.latents > MAX_JOINT_LATENTS:
            names.remove("unordered-set")
            notes.append(
                f"unordered-set skipped: it enumerates all 2^L configurations and needs "
                f"--latents ≤ {MAX_JOINT_LATENTS}"
            )
        return names, notes
    names = list(dict.fromkeys(args.estimator))
    for name in names:
        _load(name)  # clear errors before any training
    if "unordered-set" in names and args.latents > MAX_JOINT_LATENTS:
        raise ValueError(
            f"--estimator unordered-set samples without replacement from the joint of all "
            f"2^L latent configurations, so --latents must be at most {MAX_JOINT_LATENTS}; "
            f"got {args.latents}. Use e.g. --latents 10, or drop unordered-set."
        )
    return names, notes


#: What ``expectax vae`` writes into ``--out`` (the scheme of every command): the per-step log
#: of every run, one row per run, the summary (with the groups, also as Markdown), the curves.
FILES = ("log.csv", "summary.csv", "summary.json", "summary.md", "curve.png")
LOG_KEYS = ("estimator", "seed")


def run(args: argparse.Namespace) -> int:
    """Run ``expectax vae`` with parsed arguments; returns the exit code.

    Bad flags, data or ``--out`` raise ``SystemExit`` with a one-line message naming the flag
    and the fix, before any training.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(stderr=True, quiet=args.quiet)
    try:  # bad flags, data or --out: a one-line message and exit status 2, no traceback
        names, notes = _check_args(args)
        if args.data is None:
            data = load_digits(args.threshold, test_size=args.test_size)
        else:
            data = load_npz(args.data, args.threshold, train_size=args.train_size)
        out = runio.prepare_out(args.out, FILES, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as err:
        raise cliutil.UsageError("expectax vae", err) from err
    console.print(
        escape(
            f"expectax vae: {data.name} ({data.train.shape[0]} train / {data.test.shape[0]} "
            f"held out, {data.train.shape[1]} pixels), {args.model} model, {args.latents} "
            f"latents, {args.steps} steps, seeds {args.seed}"
        )
    )
    for note in notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    curves: dict[str, list[Curve]] = {}
    rows: list[dict[str, Any]] = []
    log: list[dict[str, Any]] = []
    with runio.progress(quiet=args.quiet, console=console) as bar:
        for name in names:
            for seed in args.seed:
                task = bar.add_task(f"{name:>17} seed {seed}", total=args.steps)
                curve, summary = train(
                    name,
                    data,
                    seed=seed,
                    steps=args.steps,
                    latents=args.latents,
                    model=args.model,
                    batch_size=args.batch_size,
                    learning_rate=args.lr,
                    evaluations=args.evaluations,
                    temperature=args.temperature,
                    cv_learning_rate=args.cv_lr,
                    eval_every=args.eval_every,
                    var_repeats=args.var_repeats,
                    iw_samples=args.iw_samples,
                    eval_points=args.eval_points,
                    log_q_grad=args.log_q_grad,
                    progress=lambda n, task=task: bar.advance(task, n),
                )
                keys = {"estimator": name, "seed": seed}
                log += [
                    keys | dict(zip(CURVE_COLUMNS, r, strict=True))
                    for r in zip(*curve, strict=True)
                ]
                runio.write_csv(out / "log.csv", log, (*LOG_KEYS, *CURVE_COLUMNS))  # each run
                curves.setdefault(name, []).append(curve)
                rows.append(summary)
    runio.write_csv(out / "summary.csv", rows)
    table_rows = _summarise(rows)
    runio.write_json(
        out / "summary.json",
        {
            "config": {k: v for k, v in vars(args).items() if k != "run"},
            "data": {"name": data.name, "train": len(data.train), "test": len(data.test)},
            "runs": rows,
            "groups": table_rows,
        },
    )
    with runio.atomic_write(out / "summary.md") as fh:
        fh.write(summary_markdown(table_rows, iw_samples=args.iw_samples))
    title = f"VAE on {data.name}: {args.model}, {args.latents} latents, {args.evaluations} evals"
    _plot(out / "curve.png", curves, title, args.iw_samples)
    if args.json:
        print(json.dumps(runio.json_safe({"runs": rows, "groups": table_rows}), indent=2))
        return 0
    table = Table(title=f"final values after {args.steps} steps (mean ± s.e. over seeds)")
    for col in ("estimator", "evals", "train ELBO", "test IW", "log10 grad var", "s/run"):
        table.add_column(col, justify="left" if col == "estimator" else "right")
    for r in table_rows:
        table.add_row(
            escape(r["estimator"]),
            str(r["evaluations"]),
            _fmt(r["train_elbo"], r["train_elbo_se"]),
            _fmt(r["test_iw"], r["test_iw_se"]),
            _fmt(r["log10_grad_var"], r["log10_grad_var_se"]),
            f"{r['seconds']:.0f}",
        )
    Console(quiet=args.quiet, width=max(100, Console().width)).print(table)
    console.print(escape(f"wrote {', '.join(FILES)} to {out}"))
    return 0


def _fmt(m: float, s: float) -> str:
    if not math.isfinite(m):
        return "diverged"
    return f"{m:.2f} ± {s:.2f}" if math.isfinite(s) else f"{m:.2f}"


def _plot(path: Any, curves: dict[str, list[Curve]], title: str, k: int) -> None:
    panels = []
    for field, label, log in [
        ("train_elbo", "training ELBO (nats)", False),
        ("test_iw", f"held-out IW bound, k = {k} (nats)", False),
        ("grad_var", "log10 encoder gradient variance", True),
    ]:
        series = {}
        for name, runs in curves.items():
            n = min(len(c.step) for c in runs)
            ys = np.stack([np.asarray(getattr(c, field))[:n] for c in runs])
            ys = np.log10(ys) if log else ys
            series[name] = (runs[0].step[:n], ys.mean(axis=0))
        panels.append({"series": series, "ylabel": label, "zoom": 0.0 if log else 0.1})
    runio.plot_panels(path, panels, title=title)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m expectax.vi.vae``: the same as ``expectax vae``."""
    import sys

    from expectax.cli import main as expectax_main

    return expectax_main(["vae", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
