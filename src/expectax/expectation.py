"""The user's entry points: :func:`expectation` and :func:`per_sample_grads`."""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions.distribution as numpyro_dist

from expectax.estimators.base import Context, Estimator, _check_finite

__all__ = ["expectation", "per_sample_grads"]

PyTree = Any


def expectation(
    f: Callable[[PyTree, Any], Any],
    dist_fn: Callable[[PyTree], Any] | None,
    *,
    estimator: Estimator,
    num_samples: int,
    chunk_size: int | None = None,
    debug: bool = False,
) -> Callable[[PyTree, jax.Array], jax.Array]:
    r"""Turn ``J(θ) = E_{x~p_θ}[f_θ(x)]`` into a differentiable Monte Carlo estimate.

    .. math::

        E(\theta, \text{key}) = \frac1N \sum_{i=1}^N f_\theta(x_i), \quad x_i \sim p_\theta,
        \qquad \nabla_\theta E(\theta, \text{key}) = \text{the estimator's gradient estimate}.

    Args:
      f: ``f(params, x) -> scalar`` for one sample ``x`` (vectorised with ``jax.vmap``). It may
        depend on ``params``; the gradient then includes the ``∇θ f`` term.
      dist_fn: ``dist_fn(params) -> distribution`` ``p_θ``: a numpyro distribution or any object
        with ``sample(key, sample_shape)``, ``log_prob(x)`` and, for :class:`Pathwise`,
        ``rsample(key, sample_shape)`` and ``has_rsample``. ``None`` only for estimators that
        bring their own sampler (``Pathwise.from_transform``).
      estimator: the gradient estimator, e.g. ``ScoreFunction()`` or ``Pathwise()``.
      num_samples: ``N``, the number of samples per estimate (an int ≥ 1; some estimators need
        more, e.g. leave-one-out baselines need 2).
      chunk_size: if given, samples are processed ``chunk_size`` at a time with ``lax.map`` (chunk
        ``j`` drawn with ``jax.random.fold_in(key, j)``), bounding memory for large N. Must divide
        ``num_samples``. Pass the same value to :func:`per_sample_grads` to get the same samples.
      debug: if true, NaN or inf in the values of f or in the gradient with respect to params
        raise ``FloatingPointError`` at run time (off by default: the fast path has no checks).
        Debug mode wraps params in a ``custom_vjp`` to check the gradient, so use it with
        reverse mode (``jax.grad``); forward mode and ``jax.hessian`` need ``debug=False``.

    Returns:
      ``E(params, key) -> scalar``: its value is the Monte Carlo estimate of ``J(θ)``, and
      ``jax.grad(E)(params, key)`` (a pytree like params) the estimator's estimate of ``∇J``.
      ``E`` works under ``jax.jit``, ``jax.vmap`` (over keys or params) and ``jax.grad``.

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> f = lambda p, x: (x - 3.0) ** 2
      >>> dist_fn = lambda p: dist.Normal(p["mu"], jax.nn.softplus(p["rho"]))
      >>> E = ex.expectation(f, dist_fn, estimator=ex.Pathwise(), num_samples=64)
      >>> params = {"mu": jnp.array(0.0), "rho": jnp.array(0.0)}
      >>> grads = jax.jit(jax.grad(E))(params, jax.random.key(0))
    """
    _check_estimator(estimator)
    _check_callable(f, "f", "f(params, x) -> scalar")
    if dist_fn is None:
        if estimator.needs_dist:
            raise TypeError(
                f"dist_fn is None, but {estimator.name} samples from dist_fn(params). Pass "
                "dist_fn=lambda params: <a numpyro distribution>, or use "
                "Pathwise.from_transform(base, g) to supply the sampling path yourself."
            )
    else:
        _check_callable(dist_fn, "dist_fn", "dist_fn(params) -> distribution")
    num_samples = _check_num_samples(num_samples, estimator)
    num_chunks, chunk = _check_chunks(num_samples, chunk_size, estimator)

    def chunk_mean(params: PyTree, key: jax.Array) -> jax.Array:
        with _validation(params, debug):
            ctx = Context(f, _build(dist_fn, params), params, stacked=False, debug=debug)
            return jnp.mean(_terms(estimator, ctx, key, chunk))

    def E(params: PyTree, key: jax.Array) -> jax.Array:
        _check_key(key)
        if debug:
            params = _checked_grad(params)
        if num_chunks == 1:
            return chunk_mean(params, key)
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(num_chunks))
        return jnp.mean(jax.lax.map(lambda k: chunk_mean(params, k), keys))

    E.__doc__ = f"Monte Carlo estimate of E[f] with {estimator.name}, {num_samples} samples."
    return E


def per_sample_grads(
    f: Callable[[PyTree, Any], Any],
    dist_fn: Callable[[PyTree], Any] | None,
    params: PyTree,
    key: jax.Array,
    *,
    estimator: Estimator,
    num_samples: int,
    chunk_size: int | None = None,
    debug: bool = False,
) -> PyTree:
    r"""The gradient of each sample's surrogate term: what ``jax.grad(E)`` averages.

    For estimators that average per-sample terms (all in expectax) the mean over the leading
    axis equals ``jax.grad(expectation(f, dist_fn, ...))(params, key)`` for the same key,
    ``num_samples`` and ``chunk_size``: the samples are the same. Use it for variances,
    signal-to-noise ratios and per-example diagnostics.

    It costs one backward pass for all samples (not one per sample or per parameter): θ is
    copied once per sample and ``dist_fn`` is vmapped over the copies, so sample i's gradient
    flows into copy i. That needs ``dist_fn`` to return a JAX pytree, which numpyro's
    distributions are.

    Args:
      f, dist_fn, estimator, num_samples, debug: as in :func:`expectation`.
      params: θ, any pytree of float arrays.
      key: a ``jax.random`` key.
      chunk_size: process this many samples at a time (``lax.map`` over chunks); peak working
        memory is that of ``chunk_size`` per-sample gradients plus the result. Must divide
        ``num_samples``. To avoid the ``N × |θ|`` result altogether, reduce per chunk (see
        :func:`expectax.diagnostics.gradient_moments`).

    Returns:
      A pytree like ``params`` whose leaves have a leading axis of ``num_samples``.
    """
    _check_estimator(estimator)
    _check_callable(f, "f", "f(params, x) -> scalar")
    num_samples = _check_num_samples(num_samples, estimator)
    num_chunks, chunk = _check_chunks(num_samples, chunk_size, estimator)
    _check_key(key)
    if dist_fn is None and estimator.needs_dist:
        raise TypeError(f"dist_fn is None, but {estimator.name} samples from dist_fn(params).")
    _build(dist_fn, params)  # a clear error for params that do not fit dist_fn

    def chunk_grads(key: jax.Array) -> PyTree:
        stacked = jax.tree_util.tree_map(
            lambda leaf: jnp.broadcast_to(leaf, (chunk, *jnp.shape(leaf))), params
        )

        def total(stacked: PyTree) -> jax.Array:
            if debug:
                stacked = _checked_grad(stacked)
            with _validation(stacked, debug):
                dist = None if dist_fn is None else _build_stacked(dist_fn, stacked)
                ctx = Context(f, dist, stacked, stacked=True, debug=debug)
                return jnp.sum(_terms(estimator, ctx, key, chunk))

        return jax.grad(total)(stacked)

    if num_chunks == 1:
        return chunk_grads(key)
    keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(num_chunks))
    grads = jax.lax.map(chunk_grads, keys)
    return jax.tree_util.tree_map(lambda g: g.reshape((num_samples, *g.shape[2:])), grads)


# --------------------------------------------------------------------------- checks


def _terms(estimator: Estimator, ctx: Context, key: jax.Array, n: int) -> jax.Array:
    terms = estimator.terms(ctx, key, n)
    if jnp.shape(terms) != (n,):
        raise RuntimeError(
            f"{estimator.name}.terms returned shape {jnp.shape(terms)}, expected ({n},): "
            "this is a bug in the estimator."
        )
    return terms


def _validation(params: PyTree, debug: bool) -> contextlib.AbstractContextManager[None]:
    """numpyro's argument and support checks: on in debug mode and for concrete params.

    The context must cover both building the distribution and using it: numpyro reads the
    default when ``log_prob`` runs, not only when the distribution is built.

    numpyro validates by default, and its support check in ``log_prob`` (a ``where`` over the
    samples) made small score-function estimates several times slower than a hand-written
    surrogate, for samples that are in the support by construction. So traced (jit, grad)
    calls build the distribution with validation off, while concrete calls (e.g. ``compare``'s
    first look, or ``E(params, key)`` run eagerly) and ``debug=True`` keep numpyro's clear
    errors for invalid parameters such as a negative scale.
    """
    concrete = not any(
        isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(params)
    )
    return numpyro_dist.validation_enabled(debug or concrete)


def _build(dist_fn: Callable[[PyTree], Any] | None, params: PyTree) -> Any:
    if dist_fn is None:
        return None
    try:
        dist = dist_fn(params)
    except ValueError as err:  # e.g. numpyro's check of a negative scale
        raise ValueError(
            f"dist_fn(params) rejected the parameter values: {err} Check the values in params "
            "(e.g. a scale must be positive: use jax.nn.softplus or exp of an unconstrained "
            "parameter)."
        ) from err
    except Exception as err:  # noqa: BLE001 - re-raised with context
        structure = jax.tree_util.tree_structure(params)
        raise TypeError(
            f"dist_fn(params) failed with {type(err).__name__}: {err}. Check that params has "
            f"the structure dist_fn expects; params here is {structure}."
        ) from err
    if not (hasattr(dist, "sample") and hasattr(dist, "log_prob")):
        raise TypeError(
            "dist_fn(params) must return a distribution with sample(key, sample_shape) and "
            f"log_prob(x) (e.g. numpyro.distributions.Normal); got {type(dist).__name__}."
        )
    return dist


def _build_stacked(dist_fn: Callable[[PyTree], Any], stacked: PyTree) -> Any:
    try:
        return jax.vmap(dist_fn)(stacked)
    except TypeError as err:
        raise TypeError(
            "per_sample_grads vmaps dist_fn over one copy of params per sample, so dist_fn "
            "must return a JAX pytree (numpyro distributions are). Register your "
            "distribution class with jax.tree_util.register_pytree_node_class, or use "
            f"jax.jacrev on the surrogate instead. The error was: {err}"
        ) from err


def _check_estimator(estimator: Any) -> None:
    if isinstance(estimator, type) and issubclass(estimator, Estimator):
        raise TypeError(
            f"estimator must be an estimator instance, got the class {estimator.__name__}: "
            f"write estimator=ex.{estimator.__name__}() with parentheses."
        )
    if not isinstance(estimator, Estimator):
        raise TypeError(
            "estimator must be an expectax estimator such as ex.ScoreFunction() or "
            f"ex.Pathwise(); got {type(estimator).__name__}."
        )


def _check_callable(fn: Any, name: str, signature: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a function {signature}; got {type(fn).__name__}.")


def _check_num_samples(num_samples: Any, estimator: Estimator) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise TypeError(
            f"num_samples must be a Python int (how many samples per estimate), got "
            f"{num_samples!r} of type {type(num_samples).__name__}. It fixes array shapes, so "
            "it cannot be a traced value; use e.g. num_samples=64."
        )
    num_samples = operator.index(num_samples)
    needed = estimator.min_samples()
    if num_samples < needed:
        why = "" if needed == 1 else f" ({estimator.name} needs at least {needed})"
        raise ValueError(f"num_samples must be at least {needed}{why}, got {num_samples}.")
    return num_samples


def _check_chunks(num_samples: int, chunk_size: Any, estimator: Estimator) -> tuple[int, int]:
    if chunk_size is None:
        return 1, num_samples
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size must be an int or None, got {chunk_size!r}.")
    chunk_size = operator.index(chunk_size)
    if chunk_size < estimator.min_samples() or num_samples % chunk_size:
        raise ValueError(
            f"chunk_size must divide num_samples={num_samples} and be at least "
            f"{estimator.min_samples()}; got chunk_size={chunk_size}. Pick a divisor of "
            "num_samples, or None for a single chunk."
        )
    return num_samples // chunk_size, chunk_size


def _check_key(key: Any) -> None:
    if isinstance(key, jax.Array):
        dtype = key.dtype
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            if key.shape == ():
                return
            raise TypeError(
                f"key must be a single PRNG key, got an array of keys with shape {key.shape}. "
                "To get one estimate per key, jax.vmap the estimate over the keys."
            )
        if dtype == jnp.uint32 and key.shape == (2,):
            return  # a legacy jax.random.PRNGKey
    raise TypeError(
        "key must be a jax.random key, e.g. jax.random.key(0) (or the legacy "
        f"jax.random.PRNGKey(0)); got {type(key).__name__} with "
        f"{getattr(key, 'dtype', '?')} and shape {getattr(key, 'shape', '?')}. "
        "Split it for each estimate: key, sub = jax.random.split(key)."
    )


@jax.custom_vjp
def _checked_grad(params: PyTree) -> PyTree:
    return params


def _checked_grad_fwd(params: PyTree) -> tuple[PyTree, None]:
    return params, None


def _checked_grad_bwd(_: None, cotangent: PyTree) -> tuple[PyTree]:
    for leaf in jax.tree_util.tree_leaves(cotangent):
        _check_finite(leaf, "the gradient with respect to params")
    return (cotangent,)


_checked_grad.defvjp(_checked_grad_fwd, _checked_grad_bwd)
