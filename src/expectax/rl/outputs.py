"""What a training run writes in its ``--out`` directory: the files, the columns of its log,
the check of the directory before training, and the learning curve; all through
:mod:`expectax.runio`."""

from __future__ import annotations

import os

import numpy as np

from expectax import runio

__all__ = ["HISTORY_COLUMNS", "OUTPUT_FILES", "check_out_dir", "plot_curve", "write_log"]

#: The files of a run.
OUTPUT_FILES = ("checkpoint.npz", "log.csv", "summary.json", "curve.png")
#: The columns of ``log.csv``: one row per batch (the history in a checkpoint, one array each).
HISTORY_COLUMNS = (
    "batch",
    "episodes",
    "train_return",
    "eval_return",
    "confirm_return",
    "confirm_se",
    "eval_episodes",
    "loss",
    "grad_norm",
    "wall_time",
)
#: The columns that count things (a history read back from a checkpoint holds them as floats).
INT_COLUMNS = ("batch", "episodes", "eval_episodes")


def check_out_dir(out: str | os.PathLike, *, resume: bool, overwrite: bool) -> None:
    """Refuse an ``--out`` that cannot be written, or that holds a run and neither ``resume``
    nor ``overwrite`` was asked for; checked before any training. With ``overwrite`` (and not
    ``resume``) the earlier run's files are removed (:func:`expectax.runio.prepare_out`)."""
    runio.prepare_out(out, OUTPUT_FILES, overwrite=overwrite, resume=resume)


def write_log(path: str | os.PathLike, history: dict) -> None:
    """``log.csv``: the history (lists by column), one row per batch."""
    runio.write_csv_columns(path, history, ints=INT_COLUMNS)


def plot_curve(path: str | os.PathLike, history: dict, title: str, threshold: float | None) -> None:
    """Learning curve PNG: training-batch returns and evaluation returns against episodes."""
    ep = np.asarray(history["episodes"])
    series = {"training batch mean": (ep, history["train_return"], {"alpha": 0.7})}
    for col, label, style in (
        ("eval_return", "periodic evaluation (sampled policy)", {"marker": "o", "ms": 3}),
        ("confirm_return", "confirmation (fresh episodes)", {"marker": "s", "ls": "", "ms": 3}),
    ):
        ev = np.asarray(history[col])
        ok = np.isfinite(ev)
        if ok.any():
            series[label] = (ep[ok], ev[ok], style)
    panel: dict = {"series": series, "ylabel": "return"}
    if threshold is not None:
        panel["hline"] = (threshold, f"solved ({threshold:g})")
    runio.plot_panels(path, [panel], title=title, xlabel="training episodes")
