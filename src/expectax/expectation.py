"""The user's entry points: :func:`expectation` and :func:`per_sample_grads`."""

from __future__ import annotations

import contextlib
import inspect
import math
import operator
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import numpyro.distributions.distribution as numpyro_dist

from expectax import sharding as _sharding
from expectax.estimators import base as _base
from expectax.estimators.base import Context, Estimator, _check_finite, check_parameters

__all__ = ["debug_errors", "expectation", "per_sample_grads"]

PyTree = Any


def expectation(
    f: Callable[[PyTree, Any], Any],
    dist_fn: Callable[[PyTree], Any] | None,
    *,
    estimator: Estimator,
    num_samples: int,
    chunk_size: int | None = None,
    debug: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: Any = None,
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
        Estimators whose samples form one joint estimate (``VIMCO``'s K-sample bound,
        ``UnorderedSet`` and ``SumAndSample``'s draws without replacement) refuse it: chunks
        would compute a different quantity. A ``LeaveOneOut`` baseline is then the mean of the
        other samples of the same chunk (still unbiased, from fewer samples).
      debug: if true, run-time checks (off by default: the fast path has no checks): NaN or
        inf in the values of f, in the log-density of the samples or in the gradient with
        respect to params raise ``FloatingPointError``, and parameters outside their numpyro
        constraint (a negative scale, probs outside [0, 1]) raise ``ValueError``, also under
        ``jit`` where numpyro cannot check values. Called outside ``jit``, ``E`` raises these
        types itself; under a ``jax.jit`` of your own JAX reports any run-time exception as
        ``jax.errors.JaxRuntimeError`` (its message ends with the check's, which names the
        problem and says this), so wrap the call in :func:`debug_errors` to get the
        ``FloatingPointError``/``ValueError`` back. Nothing is printed to stderr besides.
        Debug mode wraps params in a ``custom_vjp`` to check the gradient, so use it with
        reverse mode (``jax.grad``); forward mode and ``jax.hessian`` need ``debug=False``.
        Without ``debug``, parameters outside their constraints make the value and the gradient
        NaN under ``jit`` or ``vmap`` (where nothing can raise), never finite, plausible
        numbers.
      mesh: a ``jax.sharding.Mesh`` to split the samples over its axis ``axis_name``
        (needs ``chunk_size``; the number of chunks must be a multiple of the axis size). Each
        device computes a contiguous block of chunks (chunk ``j`` still drawn with
        ``fold_in(key, j)``) and the mean is a collective, so the result for a key is the
        single-device chunked result, whatever the number of devices (the value bitwise, the
        gradient up to the order of the sum). Params enter replicated over ``axis_name``;
        params sharded over another mesh axis keep their sharding. Estimators whose samples
        form one joint estimate (VIMCO, UnorderedSet, SumAndSample) take ``chunk_size=None``
        with a mesh: every device draws all ``num_samples`` from ``key``, evaluates f on its
        own block, and their coupling statistics (VIMCO's log-sum-exp, the unordered set's
        baseline) come from the gathered values of f, so the estimate is the single-device
        one. See ``docs/scale.md``.
      axis_name: the mesh axis the samples are split over (may be omitted for a 1-D mesh).

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
    _check_callable(f, "f", "f(params, x) -> scalar", 2)
    if dist_fn is None:
        if estimator.needs_dist:
            raise TypeError(
                f"dist_fn is None, but {estimator.name} samples from dist_fn(params). Pass "
                "dist_fn=lambda params: <a numpyro distribution>, or use "
                "Pathwise.from_transform(base, g) to supply the sampling path yourself."
            )
    else:
        _check_dist_fn(dist_fn)
    num_samples = _check_num_samples(num_samples, estimator)
    num_chunks, chunk = _check_chunks(num_samples, chunk_size, estimator)
    if mesh is not None:
        mesh, axis_name, _ = _sharding.check_mesh(
            mesh, axis_name, num_samples, chunk_size, estimator, debug
        )
    elif axis_name is not None:
        raise ValueError(f"axis_name={axis_name!r} needs mesh=<a jax.sharding.Mesh>.")

    def chunk_mean(params: PyTree, key: jax.Array) -> jax.Array:
        guarded = _guarded(params, debug)  # the user's setting, read before _validation
        with _validation(params, debug, dist_fn):
            dist = _build(dist_fn, params)
            if dist is not None:
                _check_size(dist, chunk, num_samples, chunk_size is not None)
            if debug and dist is not None:
                check_parameters(dist)
            value_factor = None
            if guarded and dist is not None:
                dist, value_factor = _base.guard_parameters(dist)
            ctx = Context(
                f, dist, params, stacked=False, debug=debug, differentiates_f=_diff(estimator)
            )
            mean = jnp.mean(_terms(estimator, ctx, key, chunk))
            if value_factor is not None:
                mean = mean * value_factor
            return mean

    def E(params: PyTree, key: jax.Array) -> jax.Array:
        _check_key(key)
        if debug:
            params = _checked_grad(params)
        if mesh is not None:
            return _sharding.sharded_chunk_mean(
                chunk_mean, params, key, mesh=mesh, axis_name=axis_name, num_chunks=num_chunks
            )
        if num_chunks == 1:
            return chunk_mean(params, key)
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(num_chunks))
        # Reverse mode through lax.map would keep every chunk's residuals (memory N × work);
        # jax.checkpoint keeps only each chunk's inputs (its key) and recomputes the chunk in
        # the backward pass, so gradient memory is that of one chunk plus the parameters.
        # Forward mode and higher derivatives go through checkpoint unchanged.
        remat = jax.checkpoint(chunk_mean)
        return jnp.mean(jax.lax.map(lambda k: remat(params, k), keys))

    E.__doc__ = f"Monte Carlo estimate of E[f] with {estimator.name}, {num_samples} samples."
    if debug:
        return _translating(E)
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
    mesh: jax.sharding.Mesh | None = None,
    axis_name: Any = None,
) -> PyTree:
    r"""The gradient of each sample's surrogate term: what ``jax.grad(E)`` averages.

    For estimators that average per-sample terms (all in expectax) the mean over the leading
    axis equals ``jax.grad(expectation(f, dist_fn, ...))(params, key)`` for the same key,
    ``num_samples`` and ``chunk_size``: the samples are the same. Use it for variances,
    signal-to-noise ratios and per-example diagnostics.

    It costs one backward pass for all samples (not one per sample or per parameter):
    ``dist_fn(params)`` is built once, its leaves (and θ, for f) are copied once per sample so
    that sample i's gradient flows into copy i, and one linearisation of ``dist_fn``, shared by
    all samples, pulls the per-sample gradients back to θ (so a ``dist_fn`` with work of its
    own, a network or an ``exp``, runs once, not once per sample). That needs ``dist_fn`` to
    return a JAX pytree, which numpyro's distributions are.

    Args:
      f, dist_fn, estimator, num_samples, debug: as in :func:`expectation`.
      params: θ, any pytree of float arrays.
      key: a ``jax.random`` key.
      chunk_size: process this many samples at a time (``lax.map`` over chunks); peak working
        memory is that of ``chunk_size`` per-sample gradients plus the result. Must divide
        ``num_samples``. To avoid the ``N × |θ|`` result altogether, reduce per chunk (see
        :func:`expectax.diagnostics.gradient_moments`).
      mesh, axis_name: as in :func:`expectation`: the chunks are split over the mesh axis,
        and the result's leading axis is sharded over it (the samples in the same order as on
        one device).

    Returns:
      A pytree like ``params`` whose leaves have a leading axis of ``num_samples``.
    """
    _check_estimator(estimator)
    _check_callable(f, "f", "f(params, x) -> scalar", 2)
    if dist_fn is not None:
        _check_dist_fn(dist_fn)
    num_samples = _check_num_samples(num_samples, estimator)
    num_chunks, chunk = _check_chunks(num_samples, chunk_size, estimator)
    if mesh is not None:
        mesh, axis_name, _ = _sharding.check_mesh(
            mesh, axis_name, num_samples, chunk_size, estimator, debug
        )
    elif axis_name is not None:
        raise ValueError(f"axis_name={axis_name!r} needs mesh=<a jax.sharding.Mesh>.")
    _check_key(key)
    if dist_fn is None and estimator.needs_dist:
        raise TypeError(f"dist_fn is None, but {estimator.name} samples from dist_fn(params).")
    dist = _build(dist_fn, params)  # a clear error for params that do not fit dist_fn
    if dist is not None:
        _check_size(dist, chunk, num_samples, chunk_size is not None)

    _check_result_size(params, num_samples, chunk)

    def chunk_grads(key: jax.Array, params: PyTree = params) -> PyTree:
        # θ is copied once per sample for f (which may use it), but the distribution is built
        # once: its leaves are copied per sample instead, so each sample's gradient with respect
        # to the distribution's parameters lands in its own copy, and one linearisation of
        # dist_fn, shared by all samples, pulls those gradients back to θ (vmapped over the
        # samples). The chain rule of dist_fn (e.g. exp of a log-scale) runs once per chunk
        # instead of once per sample and parameter; the gradient is the same.
        stacked = _stack(params, chunk)
        with _traced_validation(debug):
            if dist_fn is None:
                floats, others, pullback, treedef = [], [], None, None
            else:
                floats, others, pullback, treedef = _linearized_dist(dist_fn, params)
            others = [_stack(leaf, chunk) for leaf in others]

            def total(stacked: PyTree, floats: list[jax.Array]) -> jax.Array:
                dist = None if treedef is None else _unflatten(treedef, floats, others)
                if debug and dist is not None:
                    check_parameters(dist)
                ctx = Context(
                    f, dist, stacked, stacked=True, debug=debug, differentiates_f=_diff(estimator)
                )
                return jnp.sum(_terms(estimator, ctx, key, chunk))

            floats = [_stack(leaf, chunk) for leaf in floats]
            grads, float_grads = jax.grad(total, argnums=(0, 1))(stacked, floats)
        if pullback is not None and float_grads:
            (through_dist,) = jax.vmap(pullback)(float_grads)
            grads = jax.tree_util.tree_map(operator.add, grads, through_dist)
        if debug:
            for leaf in jax.tree_util.tree_leaves(grads):
                _check_finite(leaf, "the gradient with respect to params")
        return grads

    def run() -> PyTree:
        if mesh is not None:
            return _sharding.sharded_per_sample(
                lambda p, k: chunk_grads(k, p),
                params,
                key,
                mesh=mesh,
                axis_name=axis_name,
                num_chunks=num_chunks,
                num_samples=num_samples,
            )
        if num_chunks == 1:
            return chunk_grads(key)
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(num_chunks))
        grads = jax.lax.map(chunk_grads, keys)
        return jax.tree_util.tree_map(lambda g: g.reshape((num_samples, *g.shape[2:])), grads)

    if debug and _concrete((params, key)):
        with debug_errors():
            return jax.block_until_ready(run())
    if _guarded(params, debug) and dist is not None:
        return _base.guarded(run(), dist)  # invalid parameters under jit: NaN, as for E
    return run()


# --------------------------------------------------------------------------- checks


def _diff(estimator: Estimator) -> str | None:
    return estimator.name if estimator.differentiates_f else None


def _terms(estimator: Estimator, ctx: Context, key: jax.Array, n: int) -> jax.Array:
    terms = estimator.terms(ctx, key, n)
    if jnp.shape(terms) != (n,):
        raise RuntimeError(
            f"{estimator.name}.terms returned shape {jnp.shape(terms)}, expected ({n},): "
            "this is a bug in the estimator."
        )
    return terms


@contextlib.contextmanager
def _validation(
    params: PyTree, debug: bool, dist_fn: Callable[[PyTree], Any] | None = None
) -> Iterator[None]:
    """numpyro's argument and support checks, as the user's numpyro setting asks.

    The context must cover both building the distribution and using it: numpyro reads the
    default when ``log_prob`` runs, not only when the distribution is built.

    - The user turned validation off (``numpyro.enable_validation(False)``): off.
    - ``debug=True``, or concrete params (an eager call, ``compare``'s first look): on, so
      invalid parameters such as a negative scale get numpyro's clear errors.
    - Traced params with validation on (numpyro's default): ``dist_fn(params)`` is built once
      with validation on, so numpyro checks the parameters wherever their values are known
      (an eager ``jax.grad``; under ``jit`` numpyro cannot check values, and the discarded
      build costs nothing once compiled), then the distribution the estimator uses is built
      with validation off. That skips only numpyro's support mask in ``log_prob`` (a ``where``
      over the samples, for samples that the estimator drew from the distribution itself and
      that are in its support by construction), which made small score-function estimates
      several times slower than a hand-written surrogate.
    """
    user = numpyro_dist._VALIDATION_ENABLED
    if not user and not debug:
        with numpyro_dist.validation_enabled(False):
            yield
        return
    if debug or _concrete(params):
        with numpyro_dist.validation_enabled(True):
            yield
        return
    if dist_fn is not None:
        with numpyro_dist.validation_enabled(True):
            _build(dist_fn, params)
    with numpyro_dist.validation_enabled(False):
        yield


def _guarded(params: PyTree, debug: bool) -> bool:
    """Whether a traced estimate must turn NaN for invalid parameters (see ``nan_unless_valid``).

    Not with ``debug=True`` (its checks raise instead), not for concrete params (numpyro has
    already raised), and not when the user turned numpyro's validation off.
    """
    return not debug and numpyro_dist._VALIDATION_ENABLED and not _concrete(params)


def _concrete(tree: PyTree) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


class debug_errors(contextlib.ContextDecorator):  # noqa: N801 - used like a function
    """Turn expectax's debug checks that failed under ``jit`` back into their own exceptions.

    JAX reports an exception raised at run time inside a compiled function (the host callback
    of a ``debug=True`` check) as ``jax.errors.JaxRuntimeError``, whatever its type. Inside
    this context (or in a function decorated with it) such an error is re-raised as the
    ``FloatingPointError`` or ``ValueError`` the check raised, with its message; other errors
    pass unchanged. Block on the result inside the context (JAX dispatches asynchronously)::

        E = ex.expectation(f, dist_fn, estimator=ex.ScoreFunction(), num_samples=64,
                           debug=True)
        step = jax.jit(jax.grad(E))
        with debug_errors():
            grads = jax.block_until_ready(step(params, key))

    ``E`` itself does this when it is called outside any transformation, and so does
    :func:`per_sample_grads` with ``debug=True``.
    """

    def __enter__(self) -> debug_errors:
        _base._last_debug_error[0] = None
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (FloatingPointError, ValueError)):
            return False
        if _base.DEBUG_MARK not in str(exc):
            return False
        original = _base._last_debug_error[0]
        _base._last_debug_error[0] = None
        if original is not None and str(original) in str(exc):
            raise type(original)(str(original)) from None
        message = str(exc)[str(exc).index(_base.DEBUG_MARK) :].split("\n")[0]
        message = message.split(_base.DEBUG_HINT[:16])[0]  # the hint is for where JAX reports
        raise FloatingPointError(message) from None


def _translating(E: Callable[[PyTree, jax.Array], jax.Array]) -> Callable:
    """``E`` for ``debug=True``: called concretely, blocks and re-raises checks' own errors."""

    def checked(params: PyTree, key: jax.Array) -> jax.Array:
        if not _concrete((params, key)):
            return E(params, key)
        with debug_errors():
            return jax.block_until_ready(E(params, key))

    checked.__doc__ = E.__doc__
    return checked


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


def _stack(tree: PyTree, n: int) -> PyTree:
    """Every leaf of ``tree`` broadcast to a leading axis of ``n`` copies."""
    return jax.tree_util.tree_map(lambda leaf: jnp.broadcast_to(leaf, (n, *jnp.shape(leaf))), tree)


@contextlib.contextmanager
def _traced_validation(debug: bool) -> Iterator[None]:
    """numpyro's validation for a distribution built from traced params, as :func:`_validation`
    sets it (on with ``debug``; otherwise off: the concrete values were checked by the caller's
    first build, and the support mask is skipped for samples the estimator drew itself)."""
    with numpyro_dist.validation_enabled(bool(debug)):
        yield


def _linearized_dist(
    dist_fn: Callable[[PyTree], Any], params: PyTree
) -> tuple[list[jax.Array], list[jax.Array], Callable, tuple[Any, list[bool]]]:
    """``dist_fn(params)`` once, as its leaves, with the pullback of its float leaves to params.

    Returns ``(floats, others, pullback, treedef)``: the float (differentiable) leaves, the
    others (integer counts, boolean masks), ``pullback(cotangents of floats) -> (cotangent of
    params,)``, linear with one set of residuals (so it can be vmapped over per-sample
    cotangents), and what :func:`_unflatten` needs to rebuild a distribution.
    """
    structure: list[Any] = []
    leaves = jax.tree_util.tree_leaves(_build(dist_fn, params))
    if not all(isinstance(leaf, _ARRAY_LIKE) for leaf in leaves):
        raise TypeError(_not_a_pytree(_build(dist_fn, params)))
    depends = _depends_on_input(lambda p: jax.tree_util.tree_leaves(_build(dist_fn, p)), params)

    def split(params: PyTree) -> tuple[list[jax.Array], list[jax.Array]]:
        leaves, treedef = jax.tree_util.tree_flatten(_build(dist_fn, params))
        if not all(isinstance(leaf, _ARRAY_LIKE) for leaf in leaves):
            raise TypeError(_not_a_pytree(_build(dist_fn, params)))
        # only leaves that depend on params are differentiated: a constant leaf (a fixed
        # support's bound, a constant scale) stays a constant, as it is in expectation()
        mask = [
            jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) and dep
            for leaf, dep in zip(leaves, depends, strict=True)
        ]
        structure.append((treedef, mask))
        floats = [jnp.asarray(x) for x, is_f in zip(leaves, mask, strict=True) if is_f]
        others = [jnp.asarray(x) for x, is_f in zip(leaves, mask, strict=True) if not is_f]
        return floats, others

    floats, pullback, others = jax.vjp(split, params, has_aux=True)
    return floats, others, pullback, structure[0]


def _depends_on_input(fn: Callable[[PyTree], list[Any]], params: PyTree) -> list[bool]:
    """For each output of ``fn(params)``, whether it depends on ``params`` (traced jaxpr).

    A forward pass over the equations of ``fn``'s jaxpr: an equation with a dependent input
    makes all its outputs dependent (conservative for nested calls).
    """
    closed = jax.make_jaxpr(fn)(params)
    jaxpr = closed.jaxpr
    dependent = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, jax.extend.core.Literal) and v in dependent for v in eqn.invars):
            dependent.update(eqn.outvars)
    return [not isinstance(v, jax.extend.core.Literal) and v in dependent for v in jaxpr.outvars]


def _unflatten(treedef: tuple[Any, list[bool]], floats: list[Any], others: list[Any]) -> Any:
    """The distribution from its float and other leaves (as split by :func:`_linearized_dist`)."""
    tree, mask = treedef
    floats, others = iter(floats), iter(others)
    return jax.tree_util.tree_unflatten(tree, [next(floats) if f else next(others) for f in mask])


_ARRAY_LIKE = (jax.Array, np.ndarray, np.generic, float, int, bool)


def _not_a_pytree(dist: Any) -> str:
    return (
        f"per_sample_grads copies the parameters of dist_fn(params) once per sample, so dist_fn "
        f"must return a JAX pytree of arrays (numpyro distributions are); it returned a "
        f"{type(dist).__name__}, which JAX sees as one opaque leaf. Register the class with "
        "jax.tree_util.register_pytree_node_class (its parameters as children), build it from "
        "numpyro.distributions, or use ex.expectation, which takes any object with sample and "
        "log_prob."
    )


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


def _check_dist_fn(dist_fn: Any) -> None:
    """``dist_fn`` must be a function of params; a distribution itself is refused by name."""
    if (
        hasattr(dist_fn, "sample")
        and hasattr(dist_fn, "log_prob")
        and not inspect.isroutine(dist_fn)
    ):
        raise TypeError(
            "dist_fn must be a function of params returning a distribution; got a "
            f"{type(dist_fn).__name__} (a distribution itself): write lambda params: "
            f"{_constructor(dist_fn)}, with the parameters to differentiate read from params."
        )
    _check_callable(dist_fn, "dist_fn", "dist_fn(params) -> distribution", 1)


def _constructor(d: Any) -> str:
    """``dist.Normal(0, 1)``-like text for a distribution, its arguments when they are scalars."""
    name = type(d).__name__
    for suffix in ("Logits", "Probs"):  # numpyro's BernoulliLogits is built as Bernoulli(...)
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    try:
        args = []
        for key in getattr(d, "arg_constraints", {}) or {}:
            if key not in vars(d):
                continue
            value = np.asarray(vars(d)[key])
            if value.shape != ():
                raise ValueError
            args.append(f"{key}={value.item():g}")
    except Exception:  # noqa: BLE001 - arrays or traced values: no arguments written out
        args = ["..."]
    return f"dist.{name}({', '.join(args) or '...'})"


def _check_callable(fn: Any, name: str, signature: str, arity: int) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a function {signature}; got {type(fn).__name__}.")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins, some C extensions: nothing to check
        return
    try:
        sig.bind(*range(arity))
    except TypeError:
        example = "lambda params, x: ..." if arity == 2 else "lambda params: ..."
        raise TypeError(
            f"{name} must be a function {signature} taking {arity} positional "
            f"argument{'s' if arity > 1 else ''}; got {getattr(fn, '__name__', name)}{sig}. "
            f"Write it as {example} (it may ignore params)."
        ) from None


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
    if chunk_size < num_samples and estimator.joint_samples:
        raise ValueError(
            f"chunk_size={chunk_size}: {estimator.name} combines all num_samples={num_samples} "
            "samples into one estimate (not a mean of independent parts), so chunks would "
            f"silently compute a different quantity (the mean of {num_samples // chunk_size} "
            f"estimates of {chunk_size} samples). Use chunk_size=None, or num_samples="
            f"{chunk_size} and average several calls if that is what you want."
        )
    return num_samples // chunk_size, chunk_size


# One estimate's batch of samples may take at most this fraction of the memory: the estimate
# keeps several arrays of that size (noise, samples, f values, log-densities, gradients).
_MEMORY_FRACTION = 1 / 8


def _memory_bytes() -> int:
    """The default device's memory (its bytes_limit), or the host's physical memory on CPU."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if stats.get("bytes_limit"):
            return int(stats["bytes_limit"])
    except Exception:  # noqa: BLE001 - backends without memory statistics
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _check_size(dist: Any, chunk: int, num_samples: int, chunked: bool) -> None:
    """Refuse a batch of samples that cannot fit, before XLA tries to allocate it."""
    try:
        shape = tuple(dist.batch_shape) + tuple(dist.event_shape)
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(dist) if hasattr(leaf, "dtype")]
        itemsize = max(
            [jax.dtypes.canonicalize_dtype(leaf.dtype).itemsize for leaf in leaves] + [4]
        )
    except Exception:  # noqa: BLE001 - not a numpyro distribution: nothing to estimate
        return
    per_sample = max(math.prod(shape), 1) * itemsize
    limit = _memory_bytes() * _MEMORY_FRACTION
    if chunk * per_sample <= limit:
        return
    fits = max(int(limit // per_sample), 1)
    small = [d for d in range(1, math.isqrt(num_samples) + 1) if num_samples % d == 0]
    divisors = [d for d in small + [num_samples // d for d in small] if d <= fits]
    hint = f"chunk_size={max(divisors)}" if divisors else "a smaller num_samples"
    what = f"chunk_size={chunk}" if chunked else f"num_samples={num_samples}"
    raise ValueError(
        f"{what} samples of {per_sample} bytes each (shape {shape}) take "
        f"{chunk * per_sample / 2**30:.1f} GiB for one batch, and an estimate keeps several "
        f"arrays of that size; this device has {_memory_bytes() / 2**30:.0f} GiB. Use "
        f"{hint} (at most {fits} samples per chunk fit in {limit / 2**30:.1f} GiB), or "
        "fewer samples."
    )


def _check_result_size(params: PyTree, num_samples: int, chunk: int) -> None:
    """Refuse a ``num_samples × |θ|`` result (or a chunk of ``chunk × |θ|`` per-sample
    gradients) that cannot fit in memory, with what to do instead."""
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(params) if hasattr(leaf, "dtype")]
    size = sum(math.prod(jnp.shape(leaf)) * jnp.dtype(leaf.dtype).itemsize for leaf in leaves)
    limit = _memory_bytes() * _MEMORY_FRACTION
    result, working = num_samples * size, chunk * size
    if result <= limit and working <= limit:
        return
    raise ValueError(
        f"per_sample_grads would return num_samples × |θ| = {num_samples} × {size} bytes = "
        f"{result / 2**30:.1f} GiB (and work on {working / 2**30:.1f} GiB per chunk); this "
        f"device has {_memory_bytes() / 2**30:.0f} GiB. If you need the gradient's mean and "
        "variance, expectax.diagnostics.gradient_moments streams them in chunks (memory "
        "chunk × |θ|); otherwise use fewer samples or a smaller chunk_size."
    )


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
    got = (
        f"{type(key).__name__} with {key.dtype} and shape {key.shape}"
        if hasattr(key, "dtype") and hasattr(key, "shape")
        else f"{type(key).__name__} {key!r}"[:80]
    )
    raise TypeError(
        "key must be a jax.random key, e.g. jax.random.key(0) (or the legacy "
        f"jax.random.PRNGKey(0)); got {got}. "
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
