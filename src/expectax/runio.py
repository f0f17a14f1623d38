"""The run/output helper shared by the applications (``expectax blr``, ``vae``, ``rl``).

One small place for the habits every experiment needs, so the applications do not each grow
their own:

- the common command-line flags (:func:`add_common_flags`): ``--lr``, ``--steps``,
  ``--seed N [N ...]``, ``--num-samples``, ``--out DIR``, ``--overwrite``, ``--json``,
  ``--quiet``; seeds checked to lie in ``0 <= seed < 2**32`` (:func:`check_seed`);
- the output directory (:func:`prepare_out`): an existing *file* given as ``--out`` is refused,
  the directory is created and checked to be writable *before* training starts, and files of
  an earlier run are never overwritten silently (pass ``overwrite=True``, i.e. ``--overwrite``,
  or, for a command that can continue one, ``resume=True``);
- atomic files (:func:`atomic_write`, :func:`write_csv`, :func:`write_csv_columns`,
  :func:`write_json`): written to a
  temporary file in the same directory, flushed and ``fsync``-ed, then renamed over the final
  name with ``os.replace``, so an interrupt leaves the old file or the new one, never a
  truncated one;
- progress bars (:func:`progress`): rich's, with rich's own ``disable=`` when ``quiet`` or when
  the output is not a terminal;
- statistics over seeds (:func:`mean_se`, :func:`format_mean_se`);
- plots (:func:`plot_panels`): matplotlib with the Agg backend, PNG, and y-limits from the
  finite runs only, so one diverged (NaN or huge) run does not squash the axis of the others.

Nothing here does JAX computation; importing it loads neither rich nor matplotlib.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "groups_json",
    "MAX_SEED",
    "OutputError",
    "add_common_flags",
    "atomic_write",
    "check_seed",
    "finite_float",
    "format_mean_se",
    "json_safe",
    "mean_se",
    "nonneg_float",
    "nonneg_int",
    "plot_panels",
    "positive_float",
    "positive_int",
    "prepare_out",
    "progress",
    "recording",
    "seed_arg",
    "write_csv",
    "write_csv_columns",
    "write_json",
]

#: Seeds lie in ``0 <= seed < MAX_SEED`` (what ``jax.random.key`` and numpy accept alike).
MAX_SEED = 2**32


class OutputError(ValueError):
    """The output directory cannot be used as asked (a file, not writable, or an earlier run)."""


# ---------------------------------------------------------------------------------------------
# Seeds and flags.


def check_seed(seed: Any, name: str = "--seed") -> int:
    """``seed`` as an int in ``[0, 2**32)``; a ``ValueError`` naming ``name`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        try:
            as_int = int(str(seed), 10)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {seed!r}.") from None
        seed = as_int
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"{name} must satisfy 0 <= seed < 2**32, got {seed}; use a smaller seed.")
    return seed


def seed_arg(text: str) -> int:
    """argparse ``type=`` for a seed: a one-line usage error for a bad one."""
    try:
        return check_seed(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace("--seed must", "must")) from None


def _number(kind: type, lower: str | None) -> Any:
    """argparse ``type=`` for a finite ``kind`` that is ``> 0`` (``lower="positive"``), ``≥ 0``
    (``"nonneg"``) or anything (``None``), with one-line usage errors."""
    article = "an integer" if kind is int else "a number"
    need = {"positive": "positive and finite", "nonneg": "≥ 0 and finite", None: "finite"}[lower]
    if kind is int and lower == "nonneg":
        need = "≥ 0"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {article}, got {text!r}") from None
        ok = math.isfinite(value) and (
            lower is None or (value > 0 if lower == "positive" else value >= 0)
        )
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}")
        return value

    parse.__name__ = f"{lower or 'finite'} {kind.__name__}"
    return parse


#: argparse ``type=`` for a positive int / a positive finite float, an int / a finite float
#: ≥ 0, and any finite float (one-line usage errors).
positive_int = _number(int, "positive")
positive_float = _number(float, "positive")
nonneg_int = _number(int, "nonneg")
nonneg_float = _number(float, "nonneg")
finite_float = _number(float, None)


def add_common_flags(
    parser: argparse.ArgumentParser,
    *,
    lr: float | None = None,
    steps: int | None = None,
    num_samples: int | None = None,
    seeds: Sequence[int] = (0,),
    out: str = "runs",
    steps_help: str = "training steps",
    num_samples_help: str = "Monte Carlo samples per gradient estimate",
) -> argparse.ArgumentParser:
    """Add the flags every application shares; ``None`` leaves that flag out.

    Adds ``--lr`` (positive float), ``--steps`` and ``--num-samples`` (positive ints) when a
    default is given, and always ``--seed N [N ...]`` (stored as ``args.seed``, a list),
    ``--out DIR``, ``--overwrite``, ``--json`` (print the summary as JSON on stdout) and
    ``--quiet`` (no progress bars).
    """
    if lr is not None:
        parser.add_argument(
            "--lr", type=positive_float, default=lr, help=f"learning rate (default {lr:g})"
        )
    if steps is not None:
        parser.add_argument(
            "--steps", type=positive_int, default=steps, help=f"{steps_help} (default {steps})"
        )
    if num_samples is not None:
        parser.add_argument(
            "--num-samples",
            type=positive_int,
            default=num_samples,
            help=f"{num_samples_help} (default {num_samples})",
        )
    parser.add_argument(
        "--seed",
        type=seed_arg,
        nargs="+",
        default=list(seeds),
        metavar="N",
        help="one or more seeds, 0 <= N < 2**32; one run per seed "
        f"(default {' '.join(map(str, seeds))})",
    )
    parser.add_argument("--out", default=out, metavar="DIR", help=f"output directory ({out})")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier run in --out (otherwise refused)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


# ---------------------------------------------------------------------------------------------
# The output directory.


def prepare_out(
    out: str | os.PathLike,
    names: Iterable[str] = (),
    *,
    overwrite: bool = False,
    resume: bool | None = None,
) -> Path:
    """Create (if needed) and check the output directory, before any training starts.

    Args:
      out: the directory (``--out``).
      names: the file names (relative to ``out``) the run will write.
      overwrite: allow replacing files of an earlier run.
      resume: for a command that can continue an earlier run (``--resume``; ``None``, the
        default: it cannot). ``True`` accepts the earlier run's files and keeps them;
        ``False`` refuses them naming ``--resume`` as well as ``--overwrite``, and with
        ``overwrite`` removes them now, so that none of them (a checkpoint that a later
        ``--resume`` would continue) is left beside the new run's.

    Returns:
      ``out`` as a :class:`~pathlib.Path`.

    Raises:
      OutputError: ``out`` is an existing file, cannot be created or written, or (without
        ``overwrite`` or ``resume``) already holds one of ``names``.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {str(path)!r} is an existing file; give a directory.")
    _note_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".expectax-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputError(
            f"--out {str(path)!r} is not a writable directory ({reason}); choose another --out."
        ) from None
    names = tuple(names)
    if not (overwrite or resume):
        existing = sorted(n for n in names if (path / n).exists())
        if existing:
            shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
            flags = "--resume to continue it, --overwrite" if resume is False else "--overwrite"
            raise OutputError(
                f"--out {str(path)!r} already holds an earlier run ({shown}); pass {flags} "
                "to replace it or choose another --out."
            )
    if overwrite and resume is False:
        for n in names:
            (path / n).unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# What a run wrote (for the one line after Ctrl-C, and no empty folder left behind).


class RunRecord:
    """The output folders a command created and the files it wrote (see :func:`recording`)."""

    def __init__(self) -> None:
        self.folders: dict[Path, None] = {}  # created by this run (absent before)
        self.files: dict[Path, None] = {}

    def remove_empty(self) -> None:
        """Remove the folders this run created that are still empty (innermost first)."""
        for folder in sorted(self.folders, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()

    def describe(self) -> str:
        """What the run kept, in words: the files written, or that nothing was written."""
        kept = [p for p in self.files if p.exists()]
        if not kept:
            return "nothing was written"
        folders = sorted({str(p.parent) for p in kept})
        names = ", ".join(p.name for p in kept[:6]) + (", ..." if len(kept) > 6 else "")
        return f"kept {len(kept)} file(s) in {', '.join(folders)} ({names})"


_RECORDS: list[RunRecord] = []


@contextlib.contextmanager
def recording() -> Iterator[RunRecord]:
    """Record the folders :func:`prepare_out` creates and the files :func:`atomic_write`
    writes while the block runs (the commands use it through
    :func:`expectax.cliutil.run_command`)."""
    record = RunRecord()
    _RECORDS.append(record)
    try:
        yield record
    finally:
        _RECORDS.remove(record)


def _note_folder(path: Path) -> None:
    """Note ``path`` and the parents it will create, if absent, in the active records."""
    if not _RECORDS:
        return
    missing = []
    for p in (path, *path.parents):
        if p.exists() or str(p) in ("", "."):
            break
        missing.append(p)
    for record in _RECORDS:
        for p in missing:
            record.folders.setdefault(p, None)


# ---------------------------------------------------------------------------------------------
# Atomic files.


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``.

    If the body raises (including ``KeyboardInterrupt``), the temporary file is removed and
    ``path`` keeps its old content (or stays absent): the final name never holds a truncated
    file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        for record in _RECORDS:
            record.files.setdefault(path, None)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cell(value: Any) -> Any:
    if isinstance(value, float) or type(value).__name__.startswith(("float", "bfloat")):
        value = float(value)
        return f"{value:.7g}" if math.isfinite(value) else str(value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _cell(value.item())
    return value


def write_csv(
    path: str | os.PathLike,
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
) -> Path:
    """Write ``rows`` (mappings) as CSV atomically; floats with 7 significant digits."""
    rows = list(rows)
    if columns is None:
        columns = list(rows[0]) if rows else []
    with atomic_write(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for row in rows:
            w.writerow([_cell(row.get(c, "")) for c in columns])
    return Path(path)


def write_csv_columns(
    path: str | os.PathLike, table: Mapping[str, Sequence[Any]], *, ints: Iterable[str] = ()
) -> Path:
    """Write a table held as columns (``{name: values}``, all of one length, e.g. a run's
    history) with :func:`write_csv`; the ``ints`` columns as integers (a history read back
    from float arrays holds ``3.0`` for ``3``)."""
    columns = list(table)
    ints = set(ints)
    rows = [
        {c: int(v) if c in ints else v for c, v in zip(columns, row, strict=True)}
        for row in zip(*table.values(), strict=True)
    ]
    return write_csv(path, rows, columns)


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python values and non-finite floats as ``None``.

    Strict JSON has no NaN or Infinity; ``None`` (``null``) stands for "no value".
    """
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / jax arrays and scalars
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``json_safe(obj)`` as strict JSON atomically."""
    with atomic_write(path, "w") as fh:
        json.dump(json_safe(obj), fh, indent=2, allow_nan=False)
        fh.write("\n")
    return Path(path)


# ---------------------------------------------------------------------------------------------
# Progress and statistics.


def progress(*columns: Any, quiet: bool = False, console: Any = None, **kwargs: Any) -> Any:
    """A rich ``Progress`` (default columns: description, bar, M/N, elapsed, remaining).

    Disabled with rich's own ``disable=`` when ``quiet`` is true or the console is not a
    terminal (piped output gets no bar and no control codes).
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = console if console is not None else Console(file=sys.stderr)
    if not columns:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
    disable = bool(quiet) or not console.is_terminal
    lines = not quiet and not console.is_terminal

    class _Progress(Progress):
        """rich's Progress that says "compiling …" when a task starts (the first steps of a
        run compile), and, where the bar is off because the output is not a terminal, prints
        a plain line per task at most every ``LINE_SECONDS`` and when it ends."""

        def add_task(self, description: str, *args: Any, **kw: Any) -> Any:
            task = super().add_task(description, *args, **kw)
            if not quiet:
                total = kw.get("total", args[1] if len(args) > 1 else None)
                steps = f", then {int(total)} steps" if total else ""
                console.print(
                    f"{description.strip()}: compiling{steps} …", highlight=False, markup=False
                )
            self._printed = getattr(self, "_printed", {})
            self._printed[task] = time.monotonic()
            return task

        def update(self, task: Any, *args: Any, **kw: Any) -> None:
            super().update(task, *args, **kw)
            if lines:
                self._line(task)

        def advance(self, task: Any, advance: float = 1) -> None:
            super().advance(task, advance)
            if lines:
                self._line(task)

        def _line(self, task: Any) -> None:
            t = self._tasks.get(task)
            if t is None:
                return
            now = time.monotonic()
            done = t.total is not None and t.completed >= t.total
            if done or now - self._printed.get(task, 0.0) >= LINE_SECONDS:
                if done and self._printed.get(task) == math.inf:
                    return
                total = f"/{int(t.total)}" if t.total is not None else ""
                console.print(
                    f"{t.description.strip()}: {int(t.completed)}{total} steps, "
                    f"{t.elapsed or 0.0:.0f} s",
                    highlight=False,
                    markup=False,
                )
                self._printed[task] = math.inf if done else now

    return _Progress(*columns, console=console, disable=disable, **kwargs)


#: Seconds between the plain progress lines printed where the output is not a terminal.
LINE_SECONDS = 30.0


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error (``std(ddof=1)/sqrt(n)``) of the finite values.

    The SE is NaN with fewer than two finite values; both are NaN with none.
    """
    xs = [float(v) for v in values]
    xs = [v for v in xs if math.isfinite(v)]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan
    var = sum((v - m) ** 2 for v in xs) / (len(xs) - 1)
    return m, math.sqrt(var / len(xs))


def groups_json(groups: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Summary groups for JSON: each ``(mean, se)`` tuple from :func:`mean_se` as a dict."""
    return [
        {
            k: (dict(zip(("mean", "se"), v, strict=True)) if isinstance(v, tuple) else v)
            for k, v in g.items()
        }
        for g in groups
    ]


def format_mean_se(values: Iterable[float], fmt: str = ".4f") -> str:
    """``"m ± se"`` over the finite values (``"m"`` for one value, ``"-"`` for none)."""
    m, se = mean_se(values)
    if not math.isfinite(m):
        return "-"
    return f"{m:{fmt}}" if not math.isfinite(se) else f"{m:{fmt}} ± {se:.2g}"


# ---------------------------------------------------------------------------------------------
# Plots.


def _finite(y: Sequence[float]) -> list[float]:
    return [float(v) for v in y if math.isfinite(float(v))]


def _diverged(y: Sequence[float]) -> bool:
    return any(not math.isfinite(float(v)) for v in y)


def _limits(series: Mapping[str, tuple[Any, ...]], log: bool, zoom: float) -> Any:
    """y-limits from the runs that stayed finite (all runs' finite values if none did)."""
    kept = [_finite(y) for _, y, *_ in series.values() if not _diverged(y)]
    kept = [v for v in kept if v]
    if not kept:
        kept = [v for v in (_finite(y) for _, y, *_ in series.values()) if v]
    if log:
        kept = [[v for v in vs if v > 0] for vs in kept]
        kept = [v for v in kept if v]
    if not kept:
        return None
    allv = sorted(v for vs in kept for v in vs)
    lo = allv[int(zoom * (len(allv) - 1))] if zoom > 0 else allv[0]
    hi = allv[-1]
    if log:
        return lo / 1.5, hi * 1.5
    pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 1.0
    return lo - pad, hi + pad


def plot_panels(
    path: str | os.PathLike,
    panels: Sequence[Mapping[str, Any]],
    *,
    title: str | None = None,
    xlabel: str = "step",
) -> Path:
    """Draw one row of line plots into a PNG (matplotlib, Agg), written atomically.

    Each panel is a mapping with ``"series"`` (``{label: (x, y)}``, or ``(x, y, style)`` with
    ``style`` a mapping of matplotlib ``plot`` keywords, e.g. ``{"marker": "o", "ls": ""}`` for
    points) and optional ``"ylabel"``,
    ``"log"`` (log y-axis), ``"zoom"`` (a quantile in [0, 1): the lower y-limit skips that
    fraction of the smallest values, to show the converged part) and ``"hline"``
    (``(y, label)``). A series with a non-finite value is drawn up to that point, labelled
    "(diverged)", and does not set the y-limits.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        series = panel["series"]
        log = bool(panel.get("log", False))
        if len(series) > 10:  # the default cycle has 10 colours
            ax.set_prop_cycle(color=plt.cm.tab20.colors)
        for label, (x, y, *style) in series.items():
            x = [float(v) for v in x]
            y = [float(v) for v in y]
            bad = [i for i, v in enumerate(y) if not math.isfinite(v)]
            end = bad[0] if bad else len(y)
            kw = dict(style[0]) if style else {}
            ax.plot(x[:end], y[:end], label=f"{label} (diverged)" if bad else label, **kw)
        if "hline" in panel:
            yv, hl = panel["hline"]
            ax.axhline(yv, color="k", ls="--", lw=0.8, label=hl)
        if log:
            ax.set_yscale("log")
        lim = _limits(series, log, float(panel.get("zoom", 0.0)))
        if lim is not None and "hline" in panel and not log:
            lim = (min(lim[0], panel["hline"][0]), max(lim[1], panel["hline"][0]))
        if lim is not None and lim[0] < lim[1]:
            ax.set_ylim(*lim)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return path
