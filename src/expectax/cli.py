"""The ``expectax`` command line: ``compare`` (the main job) and the applications.

Thin by design: argument parsing and printing only; the work happens in the library.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    "rl-seq": (
        "expectax.rl.seq_cli",
        "train a small transformer with RLOO, GRPO, Dr. GRPO, ... on a verifiable-reward task",
    ),
    "svi": (
        "expectax.vi.svi",
        "train a sigmoid belief network with numpyro SVI: numpyro's vs expectax's TraceGraph_ELBO",
    ),
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


#: The packages of the ``apps`` extra the command line needs (import name -> pip name).
APPS_PACKAGES = {
    "rich": "rich",
    "matplotlib": "matplotlib",
    "optax": "optax",
    "gymnasium": "gymnasium",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
}


def _missing_apps() -> list[str]:
    """The pip names of the ``apps`` extra's packages that are not installed."""
    return [pip for name, pip in APPS_PACKAGES.items() if importlib.util.find_spec(name) is None]


def install_hint(extra: str) -> str:
    """How to install ``extra``: from PyPI and from a checkout."""
    return f'pip install "expectax[{extra}]" (from a checkout: pip install ".[{extra}]")'


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``expectax`` console script; returns the exit status.

    Every usage error, of every command, is one line on stderr and exit status 2
    (:mod:`expectax.cliutil`).
    """
    from expectax import cliutil

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["compare", *argv]  # `expectax --num-samples 8` means `expectax compare ...`
    missing = _missing_apps()
    if missing:
        return cliutil.fail(
            "expectax",
            f"the command line needs the 'apps' extra ({', '.join(missing)} missing): "
            f"{install_hint('apps')}",
        )
    commands = ["compare", *_application_modules()]
    if argv[0] not in commands:
        try:
            _build_parser().parse_args(argv[:1])  # -h, or an unknown command: one line, exit 2
        except SystemExit as exit_:
            return int(exit_.code or 0)
    command = argv[0]
    try:
        parser, run = _command_parser(command)
        args = parser.parse_args(argv[1:])
    except SystemExit as exit_:  # --help (0) or a usage error (2, one line printed)
        return int(exit_.code or 0)
    args.command = command
    return cliutil.run_command(f"expectax {command}", run, args)


def _build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of commands (``expectax -h``); each command's own parser is
    :func:`_command_parser`'s, so that an application's module is imported only when used."""
    from expectax import cliutil

    parser = cliutil.ArgumentParser(
        prog="expectax",
        description="Monte Carlo gradients of expectations in JAX: which estimator suits "
        "your problem?",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "compare", help="bias, variance, SNR and cost of gradient estimators on a problem"
    )
    for name, (_, help_text) in _application_modules().items():
        sub.add_parser(name, help=help_text)
    return parser


def _command_parser(command: str) -> tuple[argparse.ArgumentParser, Callable[[Any], int]]:
    """The parser of one command and the function that runs it."""
    from expectax import cliutil

    if command == "compare":
        parser = cliutil.ArgumentParser(
            prog="expectax compare",
            description="Compare gradient estimators on a built-in problem or your own. With no "
            f"arguments: the default problem ({DEFAULT_PROBLEM}).",
            epilog="Exit status: 0 with a recommendation; 1 when no estimator qualifies or none "
            "could run; 2 for a mistake in the arguments or the problem (one line on stderr).",
        )
        _configure_compare(parser)
        return parser, _run_compare
    module, help_text = _application_modules()[command]
    parser = cliutil.ArgumentParser(prog=f"expectax {command}", description=help_text)
    mod = importlib.import_module(module)
    mod.configure_parser(parser)
    return parser, mod.run


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
        choices=list(ESTIMATOR_CHOICES),
        help=f"an estimator to compare (repeatable; default: the problem's own list). "
        f"Choices: {', '.join(ESTIMATOR_CHOICES)}",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=16,
        help="samples per gradient estimate (for a program: particles per estimate)",
    )
    p.add_argument("--repeats", type=int, default=500, help="independent estimates each")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed (a 64-bit integer)")
    p.add_argument(
        "--json",
        action="store_true",
        help='print machine-readable JSON only (strict JSON: an infinite SNR is the string "inf")',
    )
    p.add_argument("--plot", metavar="FILE.png", help="histogram of the estimates per estimator")
    p.add_argument(
        "--figure",
        choices=["paper"],
        help="instead of a comparison, redraw Figs. 2–3 of Mohamed et al. (2020) into --out",
    )
    p.add_argument(
        "--out",
        default="runs/compare-paper",
        metavar="DIR",
        help="output folder for --figure (default runs/compare-paper)",
    )


class _UsageError(Exception):
    """A mistake in the command line or the problem file: printed as one line, exit status 2."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(message: str) -> int:
    from expectax import cliutil

    return cliutil.fail("expectax compare", message)


def _load_problem(spec: str) -> Any:
    """A built-in problem by name, or ``path/to/file.py:name`` from a user's file."""
    from expectax import problems

    if spec.endswith(".py") and ":" not in spec:
        raise _UsageError(
            f"--problem: say which object of {spec} to load, as {spec}:name (e.g. {spec}:problem)"
        )
    if ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        path_str, attr = spec.rsplit(":", 1)
        path = Path(path_str)
        if not path.is_file():
            raise _UsageError(f"--problem: no such file {path_str!r}")
        module_spec = importlib.util.spec_from_file_location(f"expectax_user_{path.stem}", path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # dataclasses and pickling look modules up here
        try:
            module_spec.loader.exec_module(module)
        except SyntaxError as err:
            raise _UsageError(
                f"--problem: {path_str} has a syntax error at line {err.lineno}: {err.msg}"
            ) from None
        except Exception as err:  # noqa: BLE001 - the user's file: report in one line
            raise _UsageError(
                f"--problem: running {path_str} failed with {type(err).__name__}: {err}"
            ) from None
        if not hasattr(module, attr):
            found = [n for n in vars(module) if not n.startswith("_")]
            raise _UsageError(f"--problem: {path_str} defines no {attr!r}; it defines {found}")
        obj = getattr(module, attr)
        if callable(obj) and not isinstance(obj, problems.Problem):
            try:
                obj = obj()
            except Exception as err:  # noqa: BLE001 - the user's function: one line
                raise _UsageError(
                    f"--problem: {path_str}:{attr}() failed with {type(err).__name__}: {err}"
                ) from None
        if isinstance(obj, dict) and "program" in obj:
            return _program_problem(obj, attr, path)
        if isinstance(obj, dict):
            missing = {"f", "dist_fn", "params"} - set(obj)
            if missing:
                raise _UsageError(f"--problem: the dict {attr!r} lacks keys {sorted(missing)}")
            obj = problems.Problem(
                name=obj.get("name", attr),
                description=obj.get("description", f"{path.name}:{attr}"),
                f=obj["f"],
                dist_fn=obj["dist_fn"],
                params=obj["params"],
                exact_value=obj.get("exact_value"),
                exact_grad=obj.get("exact_grad"),
                estimators=tuple(
                    _estimator_named(e, f"estimators[{i}]") if isinstance(e, str) else e
                    for i, e in enumerate(_listed(obj.get("estimators", ())))
                ),
            )
        if not isinstance(obj, problems.Problem):
            raise _UsageError(
                f"--problem: {attr!r} must be an expectax.problems.Problem, a dict with f, "
                f"dist_fn and params, or a function returning one; got {type(obj).__name__}"
            )
        return obj
    try:
        return problems.get_problem(spec)
    except ValueError as err:
        raise _UsageError(f"--problem: {err}") from None


@dataclasses.dataclass
class _ProgramProblem:
    """A stochastic program to compare configurations of site estimators on (a problem file's
    dict with ``program``, ``params`` and optionally ``configurations``, ``exact_grad``,
    ``args``, ``name`` and ``description``)."""

    name: str
    description: str
    program: Any
    params: Any
    configurations: Any = None
    exact_grad: Any = None
    args: tuple = ()


def _program_problem(obj: dict, attr: str, path: Path) -> _ProgramProblem:
    missing = {"program", "params"} - set(obj)
    if missing:
        raise _UsageError(f"--problem: the dict {attr!r} lacks keys {sorted(missing)}")
    known = {"program", "params", "configurations", "exact_grad", "args", "name", "description"}
    unknown = set(obj) - known
    if unknown:
        raise _UsageError(
            f"--problem: the program dict {attr!r} has unknown keys {sorted(unknown)}; "
            f"it takes {sorted(known)}"
        )
    return _ProgramProblem(
        name=obj.get("name", attr),
        description=obj.get("description", f"{path.name}:{attr} (a stochastic program)"),
        program=obj["program"],
        params=obj["params"],
        configurations=_named_configurations(obj.get("configurations")),
        exact_grad=obj.get("exact_grad"),
        args=tuple(obj.get("args", ())),
    )


def _estimator_named(name: str, where: str) -> Any:
    """The estimator a problem file names as a string (``"disarm"``, ``"rloo"``: the
    ``--estimator`` names), or a usage error with a suggestion."""
    from expectax import cliutil

    key = name.strip().lower()
    if key not in ESTIMATOR_CHOICES:
        raise _UsageError(
            f"--problem: {where} names an unknown estimator {name!r}"
            f"{cliutil.did_you_mean(key, ESTIMATOR_CHOICES) or ''}; the names are "
            f"{', '.join(ESTIMATOR_CHOICES)} (or write an estimator, e.g. ex.DisARM())"
        )
    module, build = ESTIMATOR_CHOICES[key]
    return build(importlib.import_module(module))


def _listed(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _named_configurations(configurations: Any) -> Any:
    """A problem file's configurations with estimator names (strings) made estimators."""

    def one(config: Any, where: str) -> Any:
        if not isinstance(config, dict):
            return config  # compare_programs says what is wrong with it
        return {
            site: _estimator_named(est, f"{where}[{site!r}]") if isinstance(est, str) else est
            for site, est in config.items()
        }

    if isinstance(configurations, dict):
        return {k: one(c, f"configurations[{k!r}]") for k, c in configurations.items()}
    if isinstance(configurations, (list, tuple)):
        return [one(c, f"configurations[{i}]") for i, c in enumerate(configurations)]
    return configurations


def _estimators_from_args(names: list[str] | None, problem: Any) -> list[Any]:
    if not names:
        if problem.estimators:
            return list(problem.estimators)
        import expectax

        return [expectax.ScoreFunction(), expectax.Pathwise()]
    out = []
    for name in names:
        if name not in ESTIMATOR_CHOICES:
            raise _UsageError(
                f"--estimator: unknown {name!r}; choose from {', '.join(ESTIMATOR_CHOICES)}"
            )
        module, build = ESTIMATOR_CHOICES[name]
        out.append(build(importlib.import_module(module)))
    return out


def _run_compare(args: argparse.Namespace) -> int:
    """``expectax compare``: exit 0 with a recommendation, 1 without one, 2 for a mistake."""
    try:
        return _compare_command(args)
    except _UsageError as err:
        return _fail(str(err))
    except (ValueError, TypeError) as err:  # compare()'s checks of f, dist_fn, params, ...
        return _fail(f"{type(err).__name__}: {err}")


def _check_out_dir(out: str) -> None:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise _UsageError(f"--out: {out} exists and is not a folder; give a folder for --figure")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _UsageError(f"--out: cannot create the folder {out}: {err.strerror}") from None


def _compare_command(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.text import Text

    from expectax.compare import _check_seed

    if args.list_problems:
        from expectax import problems

        console = Console(width=_width())
        for name in problems.list_problems():
            console.print(
                Text.assemble((name, "bold"), ": ", problems.get_problem(name).description)
            )
        return 0
    try:
        _check_seed(args.seed)
    except ValueError as err:
        raise _UsageError(f"--seed: {err}") from None
    if args.figure == "paper":
        _check_out_dir(args.out)
        paper = importlib.import_module("expectax.paper")
        with Console(stderr=True).status("redrawing Figs. 2–3 of Mohamed et al. (2020)…"):
            result = paper.reproduce_figures(args.out, seed=args.seed)
        Console(width=_width()).print(
            Text(f"wrote {result['csv']} and {', '.join(map(str, result['figures']))}")
        )
        return 0
    if args.num_samples < 1:
        raise _UsageError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.repeats < 2:
        raise _UsageError("--repeats must be at least 2 (variances need two estimates)")
    from expectax.compare import _json_safe, compare

    problem = _load_problem(args.problem)
    err_console = Console(stderr=True)
    if isinstance(problem, _ProgramProblem):
        if args.estimator:
            raise _UsageError(
                "--estimator: a program's candidates are the 'configurations' of its problem "
                "file (a dict {label: {site: estimator}}), not --estimator"
            )
        from expectax.compare import compare_programs

        with err_console.status("comparing site-estimator configurations…") as status:
            result = compare_programs(
                problem.program,
                problem.params,
                problem.configurations,
                num_particles=args.num_samples,
                repeats=args.repeats,
                exact_grad=problem.exact_grad,
                seed=args.seed,
                progress=lambda line: status.update(escape(line)),
                args=problem.args,
            )
    else:
        estimators = _estimators_from_args(args.estimator, problem)
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
                progress=lambda line: status.update(escape(line)),
            )
    if args.plot:
        from expectax.plots import plot_comparison

        plot_comparison(result, args.plot, title=f"{problem.name}: {problem.description}")
    if args.json:
        payload = {"problem": problem.name, "description": problem.description}
        payload.update(result.to_dict())
        print(json.dumps(_json_safe(payload), indent=2, allow_nan=False))
    else:
        _print_comparison(result, problem)
        if args.plot:
            Console(width=_width()).print(Text(f"plot written to {args.plot}"))
    if all(r.error is not None for r in result.reports):
        errors = "; ".join(f"{r.name}: {r.error}" for r in result.reports)
        print(
            f"expectax compare: no estimator could run on this problem ({_one_line(errors)})",
            file=sys.stderr,
        )
        return 1
    return 0 if result.recommended is not None else 1


def _width(natural: int = 0) -> int:
    """The console width: the terminal's, or when output is not a terminal (piped, CI logs) a
    width at which nothing is cut: at least 120 and at least ``natural``, the tables' width."""
    import shutil

    if sys.stdout.isatty():
        return shutil.get_terminal_size((160, 24)).columns
    return max(120, natural)


def _fmt(x: float | None, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return format(x, spec)


def _fmt_seconds(seconds: float | None, se: float | None = None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1e-3:
        scale, unit, spec = 1e6, "µs", ".0f"
    elif seconds < 1:
        scale, unit, spec = 1e3, "ms", ".1f"
    else:
        scale, unit, spec = 1.0, "s", ".2f"
    text = format(seconds * scale, spec)
    if se is not None:
        text += " ± " + format(se * scale, ".2g" if se * scale < 1 else spec)
    return f"{text} {unit}"


def _print_comparison(result: Any, problem: Any, console: Any = None) -> None:
    """The tables and the recommendation. All text is rich ``Text`` (never markup), so square
    brackets in names and descriptions print as written."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    header = [
        Text.assemble((problem.name, "bold"), ": ", problem.description),
        Text(
            f"{result.repeats} independent estimates per estimator, {result.num_samples} "
            "samples each; variances are of one estimate."
        ),
    ]
    summary = Table(
        title=Text("estimators (Σ var: summed over coordinates; |z|: bias in SE; ± one SE)")
    )
    summary.add_column("estimator", no_wrap=True)
    for col in ("evals", "time", "Σ var", "var × time", "var × evals", "max |z|", "min SNR"):
        summary.add_column(col, justify="right", no_wrap=True)
    summary.add_column("flag", no_wrap=True)
    details: list[Text] = []
    for r in result.reports:
        if r.error is not None:
            summary.add_row(Text(r.name), *["–"] * 7, Text("n/a", "red"))
            details.append(Text.assemble((f"{r.name} is not applicable", "red"), ": ", r.error))
            continue
        z = r.max_abs_z()
        flags: list[Text] = []
        notes: list[Text] = []
        if not r.unbiased_by_design:
            notes.append(Text("biased by design"))
        if z is not None and z > result.bias_threshold:
            notes.append(Text(f"significant bias (|z| > {result.bias_threshold:.1f} SE)", "red"))
        if notes:
            flags.append(Text("biased", "yellow"))
        if r.nonfinite or r.nonfinite_values:
            flags.append(Text("NaN", "red"))
            notes.append(
                Text(
                    f"{r.nonfinite} non-finite gradient and {r.nonfinite_values} non-finite "
                    "value estimates",
                    "red",
                )
            )
        if r.name == result.recommended:
            flags.append(Text("best", "green"))
        elif r.name in result.tied:
            flags.append(Text("tied"))
        if notes:
            details.append(Text(f"{r.name}: ") + Text("; ").join(notes))
        rel = r.work_variance_rel_se
        work = _fmt(r.work_variance)
        if rel is not None and r.work_variance is not None:
            work += f" ± {rel * r.work_variance:.2g}"
        var = _fmt(r.total_variance)
        if r.total_variance_se is not None:
            var += f" ± {r.total_variance_se:.2g}"
        summary.add_row(
            Text(r.name),
            str(r.evaluations),
            _fmt_seconds(r.seconds, r.seconds_se),
            var,
            work,
            _fmt(r.evaluation_variance),
            _fmt(z, ".2f") if z is not None else "no exact",
            _fmt(float(r.snr.min()) if r.snr is not None else None),
            Text(" ").join(flags),
        )
    coords = Table(title=Text("per coordinate: mean ± s.e. [variance]"))
    coords.add_column("∂E/∂")
    if result.exact is not None:
        coords.add_column("exact", justify="right")
    ran = [r for r in result.reports if r.mean is not None]
    for r in ran:
        coords.add_column(Text(r.name), justify="right")
    for j, name in enumerate(result.coordinates[:20]):
        row: list[Any] = [Text(name)]
        if result.exact is not None:
            row.append(_fmt(float(result.exact[j]), ".4g"))
        for r in ran:
            row.append(Text(f"{r.mean[j]:.4g} ± {r.standard_error[j]:.2g} [{r.variance[j]:.3g}]"))
        coords.add_row(*row)
    if console is None:
        wide = Console(width=100_000)
        natural = max(wide.measure(t).maximum for t in (summary, coords))
        console = Console(width=_width(natural))
    for line in header:
        console.print(line)
    console.print(summary)
    for line in details:
        console.print(Text("  ") + line)
    console.print(coords)
    if len(result.coordinates) > 20:
        console.print(Text(f"({len(result.coordinates) - 20} more coordinates in --json)"))
    if result.recommended is None:
        console.print(Text.assemble(("No recommendation", "bold red"), f": {result.reason}."))
    else:
        console.print(
            Text.assemble(
                (f"Recommendation: {result.recommended}", "bold green"), f" — {result.reason}."
            )
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
