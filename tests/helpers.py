r"""Shared statistical assertions for expectax's tests.

Every statistical test in the suite compares the mean of many independent Monte Carlo estimates
with an *exact* answer (closed form, quadrature or enumeration) and asserts

.. math::

    |\bar g - g^\star| < k \cdot \mathrm{SE}, \qquad
    \mathrm{SE} = \frac{s}{\sqrt{R}},

coordinate by coordinate, where ``s`` is the sample standard deviation of the ``R`` estimates.
Tolerances therefore come from the estimates themselves, never from a hand-picked ``atol``.

Typical use::

    from helpers import assert_unbiased, estimates

    E = ex.expectation(f, dist_fn, estimator=ex.ScoreFunction(), num_samples=16)
    grads = estimates(jax.grad(E), params, jax.random.key(0), repeats=2000)
    assert_unbiased(grads, exact_grad, k=5)

``assert_unbiased`` accepts any pytree (dicts, tuples, nested), arrays of any shape, and a
``bonferroni=True`` option that widens ``k`` to keep the family-wise false-alarm rate of a
``k``-SE test on one coordinate when many coordinates are checked at once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from scipy import stats

__all__ = [
    "GAMMA_BETA_CASES",
    "as_numpy",
    "assert_unbiased",
    "bonferroni_k",
    "estimates",
    "once_per_session",
    "tree_allclose",
    "zscores",
]


def estimates(
    fn: Callable[[Any, jax.Array], Any], params: Any, key: jax.Array, repeats: int
) -> Any:
    """``R`` independent evaluations of ``fn(params, key_r)`` with split keys, jitted and vmapped.

    Args:
      fn: e.g. ``E`` or ``jax.grad(E)``.
      params: the parameters (shared by all repeats).
      key: a PRNG key; split into ``repeats`` keys.
      repeats: ``R``.

    Returns:
      The outputs of ``fn`` stacked along a new leading axis of size ``R``.
    """
    keys = jax.random.split(key, repeats)
    return jax.jit(jax.vmap(fn, in_axes=(None, 0)))(params, keys)


def bonferroni_k(k: float, m: int) -> float:
    """The threshold that keeps the two-sided false-alarm rate of a ``k``-SE test over ``m`` tests.

    ``P(|Z| > k)`` for one standard normal coordinate is split over ``m`` coordinates.
    """
    alpha = 2.0 * stats.norm.sf(k)
    return float(stats.norm.isf(alpha / (2.0 * max(m, 1))))


def zscores(estimates: Any, exact: Any) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Per-leaf ``(path, mean, exact, z)`` with ``z = (mean − exact) / SE``.

    Args:
      estimates: a pytree whose leaves have a leading axis of ``R`` estimates.
      exact: a pytree with the same structure, leaves without the leading axis (broadcastable
        against ``estimates[0]``).

    Where the standard error is zero (all estimates equal), ``z`` is 0 if the mean equals the
    exact value to floating-point accuracy and ``inf`` otherwise.
    """
    est_leaves, treedef = jax.tree_util.tree_flatten_with_path(estimates)
    exact_leaves = jax.tree_util.tree_leaves(exact)
    if len(exact_leaves) != len(est_leaves):
        raise ValueError(
            f"estimates and exact have different pytree structures: {treedef} vs "
            f"{jax.tree_util.tree_structure(exact)}"
        )
    out = []
    for (path, est), ex_leaf in zip(est_leaves, exact_leaves, strict=True):
        est = np.asarray(est, dtype=np.float64)
        if est.ndim == 0:
            raise ValueError("each estimates leaf needs a leading axis of repeats")
        reps = est.shape[0]
        if reps < 2:
            raise ValueError(f"need at least 2 estimates for a standard error, got {reps}")
        mean = est.mean(axis=0)
        target = np.broadcast_to(np.asarray(ex_leaf, dtype=np.float64), mean.shape)
        se = est.std(axis=0, ddof=1) / math.sqrt(reps)
        diff = mean - target
        scale = np.maximum(np.abs(target), 1.0)
        tiny = 1e-5 * scale
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, diff / np.where(se > 0, se, 1.0), 0.0)
            z = np.where((se == 0) & (np.abs(diff) > tiny), np.inf, z)
        out.append((jax.tree_util.keystr(path) or "<root>", mean, target, z))
    return out


def assert_unbiased(
    estimates: Any, exact: Any, k: float = 5.0, *, bonferroni: bool = False, name: str = ""
) -> None:
    """Assert that the mean of ``R`` estimates matches ``exact`` within ``k`` standard errors.

    Args:
      estimates: a pytree whose leaves have a leading axis of ``R`` independent estimates
        (``R ≥ 2``), e.g. the output of :func:`estimates` on ``jax.grad(E)``.
      exact: the exact answer, a pytree of the same structure without the leading axis.
      k: the threshold in standard errors (per coordinate).
      bonferroni: if true, use :func:`bonferroni_k` over the total number of coordinates.
      name: a label for the failure message.

    Raises:
      AssertionError: listing every coordinate with ``|z| ≥ k``, with its mean, exact value and
        z-score, and the largest ``|z|`` overall.
    """
    rows = zscores(estimates, exact)
    m = sum(int(np.size(z)) for *_, z in rows)
    thr = bonferroni_k(k, m) if bonferroni else k
    bad = []
    worst = 0.0
    for path, mean, target, z in rows:
        absz = np.abs(np.atleast_1d(z))
        worst = max(worst, float(absz.max()) if absz.size else 0.0)
        for idx in zip(*np.nonzero(absz >= thr), strict=False):
            i = tuple(int(j) for j in idx) if np.ndim(z) else ()
            bad.append(
                f"  {path}{list(i) if i else ''}: mean={np.asarray(mean)[i]:.6g} "
                f"exact={np.asarray(target)[i]:.6g} z={np.asarray(z)[i]:+.2f}"
            )
    if bad:
        label = f" [{name}]" if name else ""
        raise AssertionError(
            f"estimates biased{label}: {len(bad)} of {m} coordinates with |z| >= {thr:.2f} "
            f"(max |z| = {worst:.2f}):\n" + "\n".join(bad)
        )


def as_numpy(tree: Any) -> Any:
    """Convert every leaf of a pytree to a float64 numpy array (for comparisons)."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=np.float64), tree)


def tree_allclose(a: Any, b: Any, **kwargs: Any) -> bool:
    """``np.allclose`` on every pair of leaves of two pytrees with the same structure."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if jax.tree_util.tree_structure(a) != jax.tree_util.tree_structure(b):
        return False
    return all(
        np.allclose(np.asarray(x), np.asarray(y), **kwargs) for x, y in zip(la, lb, strict=True)
    )


#: Shared unbiasedness cases ``(name, f, dist_fn, params, exact E[f] as a function of params)``
#: for distributions both the score-function and the pathwise estimator serve.
GAMMA_BETA_CASES = (
    (
        "gamma",
        lambda p, x: x**2,
        lambda p: dist.Gamma(p["a"], p["b"]),
        {"a": jnp.array(2.5), "b": jnp.array(1.5)},
        lambda p: p["a"] * (p["a"] + 1) / p["b"] ** 2,
    ),
    (
        "beta",
        lambda p, x: x**2,
        lambda p: dist.Beta(p["a"], p["b"]),
        {"a": jnp.array(2.0), "b": jnp.array(3.0)},
        lambda p: p["a"] * (p["a"] + 1) / ((p["a"] + p["b"]) * (p["a"] + p["b"] + 1)),
    ),
)


def once_per_session(tmp_path_factory: Any, name: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once for the whole test session, its JSON result shared by every worker.

    Under pytest-xdist (``-n 2``) each worker runs a module-scoped fixture of its own as soon as
    it gets one of the module's tests: a fixture that runs a long subprocess would run it once
    per worker. Here the first worker to ask computes the result and writes it as JSON next to
    the workers' temporary folders; the others wait on a file lock and read it (pytest-xdist's
    recipe for session fixtures). Without xdist it is ``compute()``. ``compute`` returns
    something JSON round-trips unchanged (string keys, lists, numbers).
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return compute()
    import fcntl  # POSIX; xdist runs only where the suite does

    root = Path(tmp_path_factory.getbasetemp()).parent  # shared by this session's workers
    path = root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return json.loads(path.read_text())
        result = compute()
        path.write_text(json.dumps(result))
        return result
