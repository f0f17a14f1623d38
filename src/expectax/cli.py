"""The ``expectax`` command line: ``compare`` (the main job) and the applications.

Thin by design: argument parsing and printing only; the work happens in the library.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

#: Subcommands that live in application modules: name -> (module, help). Each module exposes
#: ``configure_parser(parser)`` and ``run(args) -> int``; imported only when used.
APPLICATIONS: dict[str, tuple[str, str]] = {
    "blr": (
        "expectax.vi.blr",
        "Bayesian logistic regression on breast cancer: estimators and control variates",
    ),
    "rl": ("expectax.rl.cli", "train REINFORCE (policy gradients) on a Gymnasium environment"),
    "vae": (
        "expectax.vi.vae",
        "train a discrete VAE (Bernoulli latents) with each gradient estimator and compare them",
    ),
}

DEFAULT_PROBLEM = "gaussian-quadratic"

#: Estimators selectable with ``--estimator``: name -> (module, expression building it).
ESTIMATOR_CHOICES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "score": ("expectax", lambda m: m.ScoreFunction()),
    "pathwise": ("expectax", lambda m: m.Pathwise()),
    "measure-valued": ("expectax", lambda m: m.MeasureValued()),
    "measure-valued-uncoupled": ("expectax", lambda m: m.MeasureValued(coupling=False)),
    "score-optimal": ("expectax", lambda m: m.ScoreFunction(baseline=m.baselines.Optimal())),
    "score-delta": (
        "expectax",
        lambda m: m.ScoreFunction(control_variate=m.control_variates.DeltaMethod()),
    ),
    "rloo": ("expectax", lambda m: m.ScoreFunction(baseline=m.baselines.LeaveOneOut())),
    "arm": ("expectax", lambda m: m.ARM()),
    "disarm": ("expectax", lambda m: m.DisARM()),
    "rebar": ("expectax", lambda m: m.REBAR()),
    "relax": ("expectax", lambda m: m.RELAX()),
    "gumbel-softmax": ("expectax", lambda m: m.GumbelSoftmax()),
    "st": ("expectax", lambda m: m.StraightThrough()),
    "pathwise-antithetic": ("expectax", lambda m: m.Pathwise(antithetic=True)),
    "pathwise-qmc": ("expectax", lambda m: m.Pathwise(qmc=True)),
}


def _application_modules() -> dict[str, tuple[str, str]]:
    return dict(APPLICATIONS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``expectax`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["compare", *argv]  # `expectax --num-samples 8` means `expectax compare ...`
    parser = _build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["compare", *argv])
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; an application's module is imported only when its command is run."""
    parser = argparse.ArgumentParser(
        prog="expectax",
        description="Monte Carlo gradients of expectations in JAX: which estimator suits "
        "your problem?",
    )
    sub = parser.add_subparsers(dest="command")
    cmp = sub.add_parser(
        "compare",
        help="bias, variance, SNR and cost of gradient estimators on a problem",
        description="Compare gradient estimators on a built-in problem or your own. With no "
        f"arguments: the default problem ({DEFAULT_PROBLEM}).",
    )
    _configure_compare(cmp)
    cmp.set_defaults(run=_run_compare)
    for name, (module, help_text) in _application_modules().items():
        app = sub.add_parser(name, help=help_text, description=help_text)
        if name != command:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as err:  # an optional dependency is missing
            app.set_defaults(run=lambda args, err=err, name=name: _missing(name, err))
            continue
        mod.configure_parser(app)
        app.set_defaults(run=mod.run)
    return parser


def _missing(name: str, err: ImportError) -> int:
    print(f"expectax {name} is unavailable: {err}", file=sys.stderr)
    return 2


def _configure_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--problem",
        default=DEFAULT_PROBLEM,
        help="a built-in problem name (see --list-problems) or path/to/file.py:name for your "
        "own (see the README for the file's format)",
    )
    p.add_argument("--list-problems", action="store_true", help="list built-in problems, exit")
    p.add_argument(
        "--estimator",
        action="append",
        metavar="NAME",
        help=f"an estimator to compare (repeatable; default: the problem's own list). "
        f"Choices: {', '.join(ESTIMATOR_CHOICES)}",
    )
    p.add_argument("--num-samples", type=int, default=16, help="samples per gradient estimate")
    p.add_argument("--repeats", type=int, default=500, help="independent estimates each")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    p.add_argument("--plot", metavar="FILE.png", help="histogram of the estimates per estimator")
    p.add_argument(
        "--figure",
        choices=["paper"],
        help="instead of a comparison, redraw Figs. 2–3 of Mohamed et al. (2020) into --out",
    )
    p.add_argument("--out", default="expectax-figures", help="output folder for --figure")


def _load_problem(spec: str) -> Any:
    """A built-in problem by name, or ``path/to/file.py:name`` from a user's file."""
    from expectax import problems

    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        path_str, attr = spec.rsplit(":", 1)
        path = Path(path_str)
        if not path.is_file():
            raise SystemExit(f"--problem: no such file {path_str!r}")
        module_spec = importlib.util.spec_from_file_location(f"expectax_user_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, attr):
            found = [n for n in vars(module) if not n.startswith("_")]
            raise SystemExit(f"--problem: {path_str} defines no {attr!r}; it defines {found}")
        obj = getattr(module, attr)
        if callable(obj) and not isinstance(obj, problems.Problem):
            obj = obj()
        if isinstance(obj, dict):
            missing = {"f", "dist_fn", "params"} - set(obj)
            if missing:
                raise SystemExit(f"--problem: the dict {attr!r} lacks keys {sorted(missing)}")
            obj = problems.Problem(
                name=obj.get("name", attr),
                description=obj.get("description", f"{path.name}:{attr}"),
                f=obj["f"],
                dist_fn=obj["dist_fn"],
                params=obj["params"],
                exact_value=obj.get("exact_value"),
                exact_grad=obj.get("exact_grad"),
                estimators=tuple(obj.get("estimators", ())),
            )
        if not isinstance(obj, problems.Problem):
            raise SystemExit(
                f"--problem: {attr!r} must be an expectax.problems.Problem, a dict with f, "
                f"dist_fn and params, or a function returning one; got {type(obj).__name__}"
            )
        return obj
    try:
        return problems.get_problem(spec)
    except ValueError as err:
        raise SystemExit(f"--problem: {err}") from err


def _estimators_from_args(names: list[str] | None, problem: Any) -> list[Any]:
    if not names:
        if problem.estimators:
            return list(problem.estimators)
        import expectax

        return [expectax.ScoreFunction(), expectax.Pathwise()]
    out = []
    for name in names:
        if name not in ESTIMATOR_CHOICES:
            raise SystemExit(
                f"--estimator: unknown {name!r}; choose from {', '.join(ESTIMATOR_CHOICES)}"
            )
        module, build = ESTIMATOR_CHOICES[name]
        out.append(build(importlib.import_module(module)))
    return out


def _run_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.list_problems:
        from expectax import problems

        console = Console()
        for name in problems.list_problems():
            console.print(f"[bold]{name}[/]: {problems.get_problem(name).description}")
        return 0
    if args.figure == "paper":
        paper = importlib.import_module("expectax.paper")
        with Console(stderr=True).status("redrawing Figs. 2–3 of Mohamed et al. (2020)…"):
            result = paper.reproduce_figures(args.out, seed=args.seed)
        Console().print(f"wrote {result['csv']} and {', '.join(map(str, result['figures']))}")
        return 0
    if args.num_samples < 1:
        raise SystemExit("--num-samples must be at least 1")
    if args.repeats < 2:
        raise SystemExit("--repeats must be at least 2 (variances need two estimates)")
    from expectax.compare import compare

    problem = _load_problem(args.problem)
    estimators = _estimators_from_args(args.estimator, problem)
    err_console = Console(stderr=True)
    with err_console.status("comparing estimators…") as status:
        result = compare(
            problem.f,
            problem.dist_fn,
            problem.params,
            estimators,
            num_samples=args.num_samples,
            repeats=args.repeats,
            exact_grad=problem.exact_grad,
            seed=args.seed,
            progress=lambda line: status.update(line),
        )
    if args.plot:
        from expectax.plots import plot_comparison

        plot_comparison(result, args.plot, title=f"{problem.name}: {problem.description}")
    if args.json:
        payload = {"problem": problem.name, "description": problem.description}
        payload.update(result.to_dict())
        print(json.dumps(payload, indent=2))
        return 0
    _print_comparison(result, problem, Console(width=_width()))
    if args.plot:
        Console().print(f"plot written to {args.plot}")
    return 0


def _width() -> int:
    """Wide enough for the tables when output is not a terminal (piped, CI logs)."""
    import shutil

    if sys.stdout.isatty():
        return shutil.get_terminal_size((160, 24)).columns
    return 170


def _fmt(x: float | None, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _print_comparison(result: Any, problem: Any, console: Any) -> None:
    from rich.table import Table

    console.print(f"[bold]{problem.name}[/]: {problem.description}")
    console.print(
        f"{result.repeats} independent estimates per estimator, {result.num_samples} samples "
        "each; variances are of one estimate."
    )
    summary = Table(title="estimators (Σ var: summed over coordinates; |z|: bias in SE)")
    summary.add_column("estimator", no_wrap=True)
    for col in ("evals", "time", "Σ var", "var × time", "var × evals", "max |z|", "min SNR"):
        summary.add_column(col, justify="right", no_wrap=True)
    summary.add_column("flag", no_wrap=True)
    details: list[str] = []
    for r in result.reports:
        if r.error is not None:
            summary.add_row(r.name, *["–"] * 7, "[red]n/a[/]")
            details.append(f"[red]{r.name} is not applicable[/]: {r.error}")
            continue
        z = r.max_abs_z()
        flags, notes = [], []
        if not r.unbiased_by_design:
            notes.append("biased by design")
        if z is not None and z > result.bias_threshold:
            notes.append(f"[red]significant bias (|z| > {result.bias_threshold:.1f} SE)[/]")
        if notes:
            flags.append("[yellow]biased[/]")
        if r.nonfinite or r.nonfinite_values:
            flags.append("[red]NaN[/]")
            notes.append(
                f"[red]{r.nonfinite} non-finite gradient and {r.nonfinite_values} non-finite "
                "value estimates[/]"
            )
        if r.name == result.recommended:
            flags.append("[green]best[/]")
        if notes:
            details.append(f"{r.name}: " + "; ".join(notes))
        summary.add_row(
            r.name,
            str(r.evaluations),
            _fmt_seconds(r.seconds),
            _fmt(r.total_variance),
            _fmt(r.work_variance),
            _fmt(r.evaluation_variance),
            _fmt(z, ".2f") if z is not None else "no exact",
            _fmt(float(r.snr.min()) if r.snr is not None else None),
            " ".join(flags),
        )
    console.print(summary)
    for line in details:
        console.print(f"  {line}")
    coords = Table(title="per coordinate: mean ± s.e. [variance]")
    coords.add_column("∂E/∂")
    if result.exact is not None:
        coords.add_column("exact", justify="right")
    ran = [r for r in result.reports if r.mean is not None]
    for r in ran:
        coords.add_column(r.name, justify="right")
    for j, name in enumerate(result.coordinates[:20]):
        row = [name]
        if result.exact is not None:
            row.append(_fmt(float(result.exact[j]), ".4g"))
        for r in ran:
            row.append(f"{r.mean[j]:.4g} ± {r.standard_error[j]:.2g} [{r.variance[j]:.3g}]")
        coords.add_row(*row)
    console.print(coords)
    if len(result.coordinates) > 20:
        console.print(f"({len(result.coordinates) - 20} more coordinates in --json)")
    if result.recommended is None:
        console.print(f"[bold red]No recommendation[/]: {result.reason}.")
    else:
        console.print(f"[bold green]Recommendation: {result.recommended}[/] — {result.reason}.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
