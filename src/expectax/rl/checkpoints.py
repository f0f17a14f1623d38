"""Checkpoints of a run: the state (a pytree of arrays), the history and the config in one
``.npz`` (no pickle, written atomically); reading one back refuses, in one line that says what
to do, a missing, truncated, corrupt or pickled file, other settings, or NaN/inf."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from expectax import runio
from expectax.rl.config import Config
from expectax.rl.learner import TrainState
from expectax.rl.outputs import HISTORY_COLUMNS

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(
    path: str | os.PathLike, state: TrainState, history: dict, config: Config
) -> None:
    """Write ``state``, the history and the config to ``path`` (.npz, no pickle) atomically.

    The file is written next to ``path`` under a temporary name, flushed to disk, then renamed
    over ``path`` (:func:`expectax.runio.atomic_write`), so a crash leaves either the old or the
    new checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves(state)
    arrays = {f"state_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    for col in HISTORY_COLUMNS:
        arrays[f"history_{col}"] = np.asarray(history[col], np.float64)
    arrays["config"] = np.array(json.dumps(dataclasses.asdict(config), sort_keys=True))
    with runio.atomic_write(path, "wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)


def _unreadable(path, why: str) -> ValueError:
    return ValueError(
        f"checkpoint {str(path)!r} cannot be read ({why}): it is truncated, corrupt or not an "
        "expectax rl checkpoint. Delete it (or pass --overwrite) to start afresh, or point "
        "--out/--checkpoint at the directory of a complete run."
    )


def _read_npz(path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, never unpickling; every failure is one ``ValueError``."""
    try:
        with open(path, "rb") as fh:
            data = np.load(fh, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise _unreadable(path, "not an .npz archive")
            with data:
                return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ValueError(
            f"no checkpoint at {str(path)!r}: train first (expectax rl --out DIR) and pass that "
            "DIR."
        ) from None
    except ValueError as err:
        if str(err).startswith("checkpoint "):
            raise
        raise _unreadable(path, "not a plain-array .npz; pickled data is never loaded") from None
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise _unreadable(path, type(err).__name__) from None


#: Settings added after checkpoints were first written, with the value that reproduces what
#: a checkpoint without them did (``confirm_margin`` 0: the confirming mean alone decided).
ADDED_SETTINGS = {"confirm_margin": 0.0}
#: History columns added later, and their value in the rows of a checkpoint without them.
ADDED_COLUMNS = {"confirm_se": float("nan")}


def _saved_config(path, data: dict[str, np.ndarray]) -> dict:
    try:
        saved = json.loads(str(data["config"]))
    except (KeyError, json.JSONDecodeError):
        raise _unreadable(path, "no valid config inside") from None
    if not isinstance(saved, dict):
        raise _unreadable(path, "no valid config inside")
    for k, v in ADDED_SETTINGS.items():
        saved.setdefault(k, v)
    return saved


def load_checkpoint(path: str | os.PathLike, template: TrainState, config: Config):
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``template``.

    Raises ``ValueError`` (one line that says what to do) for a missing, truncated, corrupt or
    pickled file, one written with other settings, or one holding NaN or inf.
    """
    data = _read_npz(path)
    saved = _saved_config(path, data)
    mine = json.loads(json.dumps(dataclasses.asdict(config), sort_keys=True))
    missing = sorted(k for k in mine if k not in saved)
    if missing:
        raise ValueError(
            f"checkpoint {str(path)!r} was written by an older version of expectax rl (it has "
            f"no {', '.join(missing)}): it cannot be resumed or evaluated; train again into a "
            "new --out (or pass --overwrite)."
        )
    differ = sorted(k for k in mine if k not in ("episodes",) and saved.get(k) != mine[k])
    if differ:
        raise ValueError(
            f"checkpoint {str(path)!r} was written with different settings ({', '.join(differ)}"
            f": {[saved.get(k) for k in differ]} vs now {[mine[k] for k in differ]}); resume "
            "with the same flags or start a new run in another --out directory."
        )
    leaves, treedef = jax.tree_util.tree_flatten(template)
    try:
        loaded = [data[f"state_{i:04d}"] for i in range(len(leaves))]
        rows = len(data["history_batch"])
        history = {
            c: list(
                data[f"history_{c}"]
                if c not in ADDED_COLUMNS or f"history_{c}" in data
                else np.full(rows, ADDED_COLUMNS[c])
            )
            for c in HISTORY_COLUMNS
        }
    except KeyError as err:
        raise _unreadable(path, f"{err.args[0]} missing") from None
    for a, b in zip(leaves, loaded, strict=True):
        if np.shape(a) != b.shape or np.asarray(a).dtype != b.dtype:
            raise _unreadable(path, "its arrays do not match this model's shapes")
        if np.issubdtype(b.dtype, np.floating) and not np.all(np.isfinite(b)):
            raise ValueError(
                f"checkpoint {str(path)!r} holds NaN or inf parameters: it cannot be resumed "
                "or evaluated. Start afresh (--overwrite) with a smaller --lr."
            )
    state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in loaded])
    return state, history
