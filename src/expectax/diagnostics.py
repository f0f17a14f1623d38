"""Diagnostics for gradient estimators: variance, signal-to-noise, bias tests, exact gradients.

The functions on arrays take a stack of gradient estimates with a leading axis of repeats
(``(R, ...)``, or a pytree of such leaves) and are jit-compiled. :func:`gradient_moments`
streams the mean and variance of per-sample gradients over chunks, so ``N × |θ|`` per-sample
gradients never sit in memory at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from expectax.estimators.base import Estimator
from expectax.expectation import expectation, per_sample_grads

__all__ = [
    "GradientMoments",
    "bias_zscore",
    "estimate_grads",
    "estimate_value_and_grads",
    "flatten_names",
    "gradient_moments",
    "snr",
    "standard_error",
    "variance",
    "work_normalised_variance",
]

PyTree = Any


def _tree_stat(fn: Callable[[jax.Array], jax.Array], estimates: PyTree) -> PyTree:
    return jax.tree_util.tree_map(fn, estimates)


@jax.jit
def variance(estimates: PyTree) -> PyTree:
    """Per-coordinate sample variance (ddof = 1) over the leading axis of repeats.

    Args:
      estimates: a pytree whose leaves have shape ``(R, ...)``: R independent estimates.

    Returns:
      A pytree of leaves of shape ``(...)``: the variance of one estimate.
    """
    return _tree_stat(lambda g: jnp.var(g, axis=0, ddof=1), estimates)


@jax.jit
def standard_error(estimates: PyTree) -> PyTree:
    """Standard error of the mean of the R estimates: ``sqrt(variance / R)`` per coordinate."""
    return _tree_stat(lambda g: jnp.sqrt(jnp.var(g, axis=0, ddof=1) / g.shape[0]), estimates)


@jax.jit
def snr(estimates: PyTree) -> PyTree:
    r"""Signal-to-noise ratio per coordinate, :math:`|\mathbb{E}[\hat g]| / \mathrm{sd}(\hat g)`.

    Estimated from the R estimates (Rainforth et al., 2018, "Tighter variational bounds are not
    necessarily better", use the same definition). A coordinate with zero variance has SNR ∞.
    """

    def ratio(g: jax.Array) -> jax.Array:
        sd = jnp.std(g, axis=0, ddof=1)
        return jnp.where(sd > 0, jnp.abs(jnp.mean(g, axis=0)) / jnp.where(sd > 0, sd, 1.0), jnp.inf)

    return _tree_stat(ratio, estimates)


@jax.jit
def bias_zscore(estimates: PyTree, exact: PyTree, rounding: float = 0.0) -> PyTree:
    r"""The bias of the estimates in standard errors: ``(mean − exact) / SE`` per coordinate.

    For an unbiased estimator each z-score is approximately standard normal, so
    :math:`|z| > 4` or 5 is strong evidence of bias (correct for the number of coordinates).
    A coordinate with zero variance and the exact mean has z = 0; with a wrong mean, ±inf.

    ``rounding`` adds a floating-point floor to the standard error,
    ``SE² + (rounding · max(|mean|, |exact|))²``: an estimator with (nearly) zero variance,
    such as DisARM on one Bernoulli unit, is otherwise flagged for its float32 rounding.
    """

    def z(g: jax.Array, e: jax.Array) -> jax.Array:
        mean = jnp.mean(g, axis=0)
        diff = mean - e
        floor = rounding * jnp.maximum(jnp.abs(mean), jnp.abs(e))
        se = jnp.sqrt(jnp.var(g, axis=0, ddof=1) / g.shape[0] + floor**2)
        return jnp.where(diff == 0, 0.0, diff / se)

    return jax.tree_util.tree_map(z, estimates, exact)


def work_normalised_variance(var: PyTree, seconds: float) -> PyTree:
    """Variance × time per estimate: lower is better at equal compute (Glynn & Whitt, 1992)."""
    return jax.tree_util.tree_map(lambda v: v * seconds, var)


def estimate_grads(
    f: Callable[[PyTree, Any], Any],
    dist_fn: Callable[[PyTree], Any] | None,
    params: PyTree,
    key: jax.Array,
    *,
    estimator: Estimator,
    num_samples: int,
    repeats: int,
) -> PyTree:
    """``repeats`` independent gradient estimates, stacked on a leading axis (one jit, vmapped).

    Returns:
      A pytree like ``params`` whose leaves have a leading axis of ``repeats``.
    """
    E = expectation(f, dist_fn, estimator=estimator, num_samples=num_samples)
    return estimate_value_and_grads(E, params, key, repeats)[1]


def estimate_value_and_grads(
    E: Callable[[PyTree, jax.Array], jax.Array], params: PyTree, key: jax.Array, repeats: int
) -> tuple[jax.Array, PyTree]:
    """``repeats`` independent estimates of E's value and gradient (one jit, vmapped over keys).

    Args:
      E: an estimate ``E(params, key)`` from :func:`expectax.expectation`.

    Returns:
      ``(values, grads)``: values of shape ``(repeats,)`` and a pytree like ``params`` whose
      leaves have a leading axis of ``repeats``.
    """
    keys = jax.random.split(key, repeats)
    return jax.jit(jax.vmap(jax.value_and_grad(E), in_axes=(None, 0)))(params, keys)


class GradientMoments(NamedTuple):
    """Mean and variance of the per-sample gradient, leaves shaped like params."""

    mean: PyTree
    variance: PyTree
    num_samples: int


def gradient_moments(
    f: Callable[[PyTree, Any], Any],
    dist_fn: Callable[[PyTree], Any] | None,
    params: PyTree,
    key: jax.Array,
    *,
    estimator: Estimator,
    num_samples: int,
    chunk_size: int,
) -> GradientMoments:
    """Mean and variance of per-sample gradients, streamed ``chunk_size`` samples at a time.

    Per-sample gradients of one chunk at a time are reduced to running sums (centred on the first
    chunk's mean for numerical stability), so memory is ``O(chunk_size × |θ|)`` whatever
    ``num_samples`` is. The variance is that of a single-sample estimate; divide by N for the
    variance of the N-sample average (for estimators whose per-sample terms are independent).
    """
    if num_samples % chunk_size:
        raise ValueError(
            f"chunk_size={chunk_size} must divide num_samples={num_samples}; pick a divisor."
        )
    num_chunks = num_samples // chunk_size
    keys = jax.random.split(key, num_chunks)

    @jax.jit
    def run(params: PyTree, keys: jax.Array) -> GradientMoments:
        def grads(k: jax.Array) -> PyTree:
            return per_sample_grads(
                f, dist_fn, params, k, estimator=estimator, num_samples=chunk_size
            )

        shift = jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads(keys[0]))

        def body(carry: tuple[PyTree, PyTree], k: jax.Array) -> tuple[tuple[PyTree, PyTree], None]:
            s1, s2 = carry
            g = grads(k)
            d = jax.tree_util.tree_map(lambda a, c: a - c, g, shift)
            s1 = jax.tree_util.tree_map(lambda s, x: s + jnp.sum(x, axis=0), s1, d)
            s2 = jax.tree_util.tree_map(lambda s, x: s + jnp.sum(x * x, axis=0), s2, d)
            return (s1, s2), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, shift)
        (s1, s2), _ = jax.lax.scan(body, (zeros, zeros), keys)
        n = num_samples
        mean = jax.tree_util.tree_map(lambda c, s: c + s / n, shift, s1)
        var = jax.tree_util.tree_map(lambda a, b: (b - a * a / n) / (n - 1), s1, s2)
        return GradientMoments(mean, var, n)

    return run(params, keys)


def flatten_names(tree: PyTree) -> tuple[list[str], Callable[[PyTree], jax.Array]]:
    """Readable coordinate names for a pytree (``mu``, ``w[3]``) and a flattening function.

    Returns:
      ``(names, flat)`` where ``flat(tree_with_leading_axes)`` ravels each leaf's trailing
      (parameter) axes and concatenates: ``(..., P)``.
    """
    leaves_with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
    names: list[str] = []
    shapes = []
    for path, leaf in leaves_with_path:
        base = jax.tree_util.keystr(path, simple=True, separator=".") or "θ"
        shape = jnp.shape(leaf)
        shapes.append(shape)
        size = int(jnp.size(leaf))
        if shape == ():
            names.append(base)
        else:
            for idx in zip(*np.unravel_index(np.arange(size), shape), strict=True):
                names.append(f"{base}[{','.join(str(int(i)) for i in idx)}]")

    def flat(stacked: PyTree) -> jax.Array:
        leaves = jax.tree_util.tree_leaves(stacked)
        parts = []
        for leaf, shape in zip(leaves, shapes, strict=True):
            lead = leaf.shape[: leaf.ndim - len(shape)]
            parts.append(jnp.reshape(leaf, (*lead, -1)))
        return jnp.concatenate(parts, axis=-1)

    return names, flat
