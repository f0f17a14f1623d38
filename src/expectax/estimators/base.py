"""The estimator protocol shared by every gradient estimator in expectax.

An estimator turns ``(f, p_θ, θ, key, N)`` into ``N`` per-sample *surrogate terms*: scalars whose
mean is the Monte Carlo estimate of ``E_{x~p_θ}[f_θ(x)]`` and whose gradient with respect to θ
(of every order, where the estimator supports it) is the estimator's gradient estimate. The
entry points in :mod:`expectax.expectation` average the terms (``expectation``) or
differentiate each one on its own (``per_sample_grads``); estimators never see which.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
from jax.custom_derivatives import SymbolicZero
from jax.scipy.special import gammaln

__all__ = [
    "Context",
    "Estimator",
    "check_fixed_support",
    "check_parameters",
    "magic_box",
    "pytree_dataclass",
    "joint_log_prob",
    "log_prob",
    "static_field",
]


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is pytree metadata (hashable, not traced), not a leaf."""
    metadata = dict(kwargs.pop("metadata", {}))
    metadata["static"] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def pytree_dataclass(cls: type) -> type:
    """Make ``cls`` a frozen dataclass registered as a JAX pytree.

    Fields declared with :func:`static_field` are metadata (they must be hashable: numbers,
    strings, functions); every other field is a pytree child, so arrays held by an estimator
    (a baseline constant, a control variate's coefficients) are traced under ``jit``.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    meta = [f.name for f in fields if f.metadata.get("static", False)]
    data = [f.name for f in fields if not f.metadata.get("static", False)]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)


def magic_box(log_prob: jax.Array) -> jax.Array:
    """DiCE's magic box ``exp(l − stop_gradient(l))``: value 1, ``∇ magic = magic · ∇l``.

    Multiplying a cost by ``magic_box(log p)`` makes every derivative, of every order, the
    score-function estimator of that derivative (Foerster et al., 2018).

    The argument of the exponential is identically zero, so instead of computing ``exp`` the
    box is a ``custom_jvp`` function whose value is exactly 1 and whose tangent is
    ``magic · dl`` (recursively, so all orders match ``exp``). It works in forward and reverse
    mode, and XLA folds the value away: the surrogate costs no more than ``f · log p``. (On
    CPU an ``exp`` in the surrogate made small estimates several times slower.)
    """
    return _unit_exp(log_prob - jax.lax.stop_gradient(log_prob))


@jax.custom_jvp
def _unit_exp(zero: jax.Array) -> jax.Array:
    """``exp(zero)`` for an argument that is always 0: value 1, derivatives those of exp."""
    # x⁰, not ones_like: a constant that does not depend on the argument broke jax.grad of a
    # jax.jit of a vmap over it (JAX's partial evaluation of the unbatched broadcast, cf.
    # jax-ml/jax#16374); XLA still folds it to 1
    return jax.lax.integer_pow(zero, 0)


@_unit_exp.defjvp
def _unit_exp_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]):
    (zero,), (tangent,) = primals, tangents
    value = _unit_exp(zero)
    return value, value * tangent


@dataclasses.dataclass(frozen=True)
class Context:
    """What an estimator gets to work with for one batch of ``N`` samples.

    Attributes:
      f_single: the user's ``f(params, x)`` for one sample ``x``, returning a scalar.
      dist: the distribution ``p_θ`` built from ``params`` (``None`` when the estimator brings
        its own sampler, as ``Pathwise.from_transform`` does).
      params: θ. When ``stacked`` is true every leaf has a leading axis of ``N`` (one copy of θ
        per sample, how ``per_sample_grads`` gets each sample's gradient in one backward pass)
        and ``dist`` was built from the stacked copies.
      stacked: see ``params``.
      debug: if true, values of ``f`` are checked for NaN and inf at run time.
      differentiates_f: the name of the estimator when it differentiates f with respect to
        its argument x (pathwise, relaxations, REBAR/RELAX), else ``None``. Then an integer
        or bool f, whose derivative is zero, is refused instead of converted to float.
    """

    f_single: Callable[[Any, Any], Any]
    dist: Any
    params: Any
    stacked: bool = False
    debug: bool = False
    differentiates_f: str | None = None

    @property
    def params_axis(self) -> int | None:
        """``in_axes`` for ``params`` when vmapping a per-sample function over samples."""
        return 0 if self.stacked else None

    def vmap(self, fn: Callable[[Any, Any], Any], xs: Any) -> Any:
        """``[fn(θ, x_i) for x_i in xs]``, vectorised, pairing sample i with θ's copy i."""
        return jax.vmap(fn, in_axes=(self.params_axis, 0))(self.params, xs)

    def f(self, xs: Any, params: Any = None) -> jax.Array:
        """Evaluate ``f`` on a batch of samples (leading axis ``N``), returning shape ``(N,)``.

        ``params`` overrides θ (e.g. ``stop_gradient(θ)``); by default θ is ``self.params``.
        """
        params = self.params if params is None else params
        values = jax.vmap(self.f_single, in_axes=(self.params_axis, 0))(params, xs)
        values = _as_values(values, self.differentiates_f)
        leading = jax.tree_util.tree_leaves(xs)[0].shape[0]
        if values.shape != (leading,):
            raise TypeError(
                "f must return a scalar for each sample: f(params, x) returned shape "
                f"{values.shape[1:]} per sample (batched shape {values.shape}). Reduce the "
                "output to a scalar inside f, e.g. return jnp.sum(...) instead of an array."
            )
        if not jnp.issubdtype(values.dtype, jnp.floating):
            values = values.astype(jnp.result_type(float))
        if self.debug:
            _check_finite(values, "f(params, x)")
        return values

    def f_control(self, xs: Any, params: Any = None) -> jax.Array:
        """f at relaxed (continuous) inputs, for a control variate such as REBAR's ``η f(σ(z/λ))``.

        The same as :meth:`f` for one distribution. In a stochastic program the site's
        downstream cost is a step function of a relaxed input when discrete sites follow it
        (their draws flip), so :mod:`expectax.programs` holds those sites at fixed values here:
        any function of ``z`` independent of the estimator's own noise is a valid control
        variate, and a continuous one keeps the reparameterised correction unbiased.
        """
        return self.f(xs, params)

    def log_prob(self, xs: Any, dist: Any = None) -> jax.Array:
        """Joint log-density of each sample under ``dist`` (default: ``self.dist``), shape ``(N,)``.

        Batch dimensions of the distribution are summed: a sample is the whole ``x`` passed to f.
        With ``debug`` a NaN or inf log-density raises at run time (invalid parameters).
        """
        value = joint_log_prob(self.dist if dist is None else dist, xs)
        if self.debug:
            _check_finite(value, "log p_θ(x), the log-density of the samples,")
        return value


def _as_values(values: Any, differentiates_f: str | None) -> jax.Array:
    """f's batched output as an array, refusing what would silently give a wrong gradient.

    The rule: f returns one real scalar. Complex values are refused everywhere (the imaginary
    part would be lost); integer and bool values are converted to float for estimators that
    never differentiate f (score function, measure-valued, ARM, …) and refused by those that
    do, for which the derivative of a piecewise-constant integer is zero.
    """
    if values is None:
        raise TypeError(
            "f(params, x) returned None; it must return a scalar for each sample (did the "
            "function forget its `return`?)."
        )
    if isinstance(values, (tuple, list, dict)):
        raise TypeError(
            f"f(params, x) returned a {type(values).__name__}; it must return one scalar for "
            "each sample. If f also computes auxiliary values, return only the quantity whose "
            "expectation you want (e.g. f = lambda p, x: loss_and_aux(p, x)[0])."
        )
    values = jnp.asarray(values)
    dtype = values.dtype
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"f(params, x) returned complex values ({dtype}); expectax estimates the "
            "expectation of a real scalar and would drop the imaginary part. Estimate the "
            "real and the imaginary part separately (jnp.real(f(p, x)), jnp.imag(f(p, x)))."
        )
    if differentiates_f is not None and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"f(params, x) returned {dtype} values, but {differentiates_f} differentiates f "
            "with respect to x, and an integer- or bool-valued f has derivative zero: the "
            "gradient would be silently wrong (zero, or too small). Return a float from a "
            "differentiable f, or use an estimator that never differentiates f: "
            "ex.ScoreFunction(), ex.MeasureValued(), or for Bernoulli/Categorical ex.DisARM()."
        )
    return values


def joint_log_prob(dist: Any, x: Any, sample_ndim: int = 1) -> jax.Array:
    """``dist.log_prob(x)`` summed over all but the first ``sample_ndim`` axes of the result.

    With the default ``sample_ndim=1`` and samples stacked on a leading axis, this is the joint
    log-density of each sample, shape ``(N,)``; with ``sample_ndim=0``, of one sample (a
    scalar). The gradient is correct also where numpyro's is not (see :func:`log_prob`).
    """
    value = jnp.asarray(log_prob(dist, x))
    if value.ndim <= sample_ndim:
        lead = jnp.shape(jax.tree_util.tree_leaves(x)[0])[:sample_ndim]
        return jnp.broadcast_to(value, lead)
    return value.reshape(*value.shape[:sample_ndim], -1).sum(axis=-1)


def log_prob(dist: Any, x: Any) -> jax.Array:
    """``dist.log_prob(x)`` (same value and shape), with a correct gradient where numpyro's is not.

    numpyro's ``Bernoulli(logits=ℓ)`` and ``Binomial(n, logits=ℓ)`` compute the log-probability
    with ``max(ℓ, 0)``, whose derivative at exactly ``ℓ = 0`` is taken as 0 or 1 instead of the
    true ``y − n σ(0) = y − n/2``. Logits initialised at zero are common, and the score function
    would then be biased (e.g. 0.125 instead of 0.0005 on the REBAR toy). For these two
    families, also inside ``Independent``/``expand``, this computes the same value as
    ``y ℓ − n softplus(ℓ) + log C(n, y)``, whose gradient is right everywhere. Every other
    distribution goes to its own ``log_prob``.
    """
    if isinstance(dist, nd.Independent):
        value = log_prob(dist.base_dist, x)
        n = dist.reinterpreted_batch_ndims
        return value.sum(axis=tuple(range(-n, 0))) if n else value
    if isinstance(dist, nd.ExpandedDistribution):
        value = log_prob(dist.base_dist, x)
        lead = jnp.shape(x)[: max(jnp.ndim(x) - dist.event_dim, 0)]
        return jnp.broadcast_to(value, jnp.broadcast_shapes(dist.batch_shape, lead))
    if type(dist) is nd.BernoulliLogits:
        return _bernoulli_logits_log_prob(jnp.asarray(x, jnp.result_type(dist.logits)), dist.logits)
    if type(dist) is nd.BernoulliProbs:
        return _bernoulli_probs_log_prob(
            jnp.asarray(x, jnp.result_type(dist.probs, float)), dist.probs
        )
    if type(dist) is nd.CategoricalProbs:
        return _categorical_probs_log_prob(jnp.asarray(x), dist.probs)
    if type(dist) is nd.BinomialLogits:
        n = dist.total_count
        log_comb = gammaln(n + 1) - gammaln(x + 1) - gammaln(n - x + 1)
        return log_comb + x * dist.logits - n * jax.nn.softplus(dist.logits)
    return dist.log_prob(x)


def check_fixed_support(dist: Any, owner: str) -> None:
    """Refuse a distribution whose support depends on the parameters being differentiated.

    The score function ``E[f ∇θ log p_θ]`` is the derivative of ``∫ f p_θ`` only when the
    region of integration does not move with θ; for ``Uniform(0, θ)`` the Leibniz rule adds a
    boundary term ``f(θ) p_θ(θ)`` that no sample sees, and the estimate is wrong (for f = x it
    has the wrong sign). numpyro describes the support as a constraint whose bounds are pytree
    leaves (``interval(low, high)``, ``greater_than(low)``, …). Each bound that is traced
    passes through an identity with a custom JVP rule: when a derivative with respect to the
    bound is taken (``jax.grad``, ``jax.jvp``, also through ``jax.jit``), the rule runs at trace
    time and raises ``ValueError``. Bounds that do not depend on the differentiated inputs get a
    symbolic-zero tangent and pass, so a plain ``jit`` or a fixed support costs nothing.
    """
    try:
        support = dist.support
    except Exception:  # noqa: BLE001 - a custom distribution without a support
        return
    if support is None:
        return
    for leaf in jax.tree_util.tree_leaves(support):
        if isinstance(leaf, jax.core.Tracer) and jnp.issubdtype(leaf.dtype, jnp.floating):
            _support_guard(owner, type(dist).__name__, leaf)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _support_guard(owner: str, dist_name: str, bound: jax.Array) -> jax.Array:
    return bound


def _support_guard_jvp(owner: str, dist_name: str, primals: tuple, tangents: tuple) -> tuple:
    (bound,), (tangent,) = primals, tangents
    if not isinstance(tangent, SymbolicZero):
        raise ValueError(
            f"{owner}: the support of {dist_name} depends on the parameters being "
            "differentiated (a bound of dist.support is a function of params). The score "
            "function E[f ∇θ log p] then misses the boundary term of the Leibniz rule and the "
            "gradient is wrong. Reparameterise so that the support is fixed and use "
            "ex.Pathwise(): e.g. Uniform(low, high) is low + (high − low)·Uniform(0, 1) "
            "(numpyro's Uniform has rsample, so estimator=ex.Pathwise() works directly), or "
            "write the path with ex.Pathwise.from_transform(dist.Uniform(0., 1.), "
            "lambda p, u: p * u)."
        )
    return bound, tangent


_support_guard.defjvp(_support_guard_jvp, symbolic_zeros=True)


DEBUG_MARK = "expectax debug check:"

# The exception a debug check raised most recently. Under ``jit`` JAX reports an exception from
# a host callback as ``JaxRuntimeError`` (the original type is lost);
# :func:`expectax.expectation.debug_errors` looks it up here to re-raise it as it was.
_last_debug_error: list[BaseException | None] = [None]


#: Appended to a check's message where JAX reports it (a ``JaxRuntimeError`` under ``jit``,
#: whose type and first line are JAX's): what to do to get the check's own exception.
DEBUG_HINT = (
    " (Under jax.jit JAX reports this check as a JaxRuntimeError; run the jitted call inside "
    "`with ex.debug_errors():` and block on its result to get this {kind} itself.)"
)


def _raise_debug(err: BaseException) -> None:
    """Raise a failed check from its host callback.

    The check's own exception is kept for :class:`expectax.expectation.debug_errors`, which
    re-raises it as it was; what JAX sees (and, under a ``jit`` of the user's, reports inside a
    ``JaxRuntimeError``) says how to get it. JAX logs every exception of a callback with its
    traceback before re-raising it; :func:`_quiet_jax_callback_logs` keeps expectax's own checks
    out of that log, so that the error is said once, where it is raised.
    """
    _last_debug_error[0] = err
    raise type(err)(str(err) + DEBUG_HINT.format(kind=type(err).__name__))


class _DebugCheckLogFilter:
    """Drops JAX's "callback failed" log records of expectax's own debug checks (only those)."""

    def filter(self, record: Any) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and DEBUG_MARK in str(exc))


_DEBUG_LOG_FILTER = _DebugCheckLogFilter()


def _quiet_jax_callback_logs() -> None:
    """Install :class:`_DebugCheckLogFilter` on JAX's callback loggers (once; no JAX work)."""
    import logging

    for name in ("jax._src.debugging", "jax._src.callback"):
        logger = logging.getLogger(name)
        if _DEBUG_LOG_FILTER not in logger.filters:
            logger.addFilter(_DEBUG_LOG_FILTER)


def _bernoulli_logits_log_prob(x: jax.Array, logits: jax.Array) -> jax.Array:
    """numpyro's ``BernoulliLogits.log_prob`` value (the same bits), with a derivative that is
    right at a logit of exactly 0.

    numpyro computes ``−(clip(ℓ, 0) + log1p(exp(−|ℓ|)) − ℓx)``. At ℓ = 0 JAX differentiates
    ``clip(ℓ, 0)`` as 1/2 and ``|ℓ|`` as 1, so d/dℓ comes out as ``x`` instead of
    ``x − σ(0) = x − 1/2``. Here ``max(ℓ, 0)`` is a select, ``where(ℓ ≥ 0, ℓ, 0)``, whose
    derivative at 0 is 1: the sum is then ``x − 1/2``, and the second derivative ``−1/4``, as
    everywhere else ``−σ(1 − σ)`` (``tests/test_score_function.py`` checks both at 0, so a
    change of JAX's conventions would show). Otherwise it is numpyro's own computation, which
    XLA compiles as it compiles numpyro's: a ``custom_jvp`` rule here made a mixture of
    Bernoullis on all digits take 1.29× numpyro's SVI step and the SBN at 16 particles 1.18×.
    """
    relu = jnp.where(logits >= 0, logits, 0.0)
    return -(relu + jnp.log1p(jnp.exp(-jnp.abs(logits))) - logits * x)


@jax.custom_jvp
def _bernoulli_probs_log_prob(x: jax.Array, probs: jax.Array) -> jax.Array:
    """numpyro's ``BernoulliProbs.log_prob`` value, with the exact score in ``probs``.

    numpyro clamps ``probs`` to ``[ε, 1 − ε]``, so the gradient is exactly 0 at (and within ε
    of) 0 and 1, and a score-function estimate silently reports 0 there. The tangent here is
    ``x/p − (1 − x)/(1 − p)``: exact inside (0, 1), and NaN at ``p ∈ {0, 1}`` (``0/0``), where
    no sampling estimator can be right (the other outcome is never drawn, yet the derivative
    ``E[f | x=1] − E[f | x=0]`` needs it), so the coordinate says so instead of reading 0.
    """
    return nd.BernoulliProbs(probs).log_prob(x)


@_bernoulli_probs_log_prob.defjvp
def _bernoulli_probs_log_prob_jvp(primals: tuple, tangents: tuple) -> tuple:
    (x, probs), (t_x, t_probs) = primals, tangents
    value = _bernoulli_probs_log_prob(x, probs)
    score = x / probs - (1.0 - x) / (1.0 - probs)
    # the derivative in x matters at relaxed inputs (REBAR/RELAX's control variate, and the
    # relaxed values a program passes downstream). At probs ∈ {0, 1} the coefficient is
    # taken as 0, so that an exact sample (whose tangent is zero) does not give 0 · inf = NaN.
    inside = (probs > 0) & (probs < 1)
    safe = jnp.where(inside, probs, 0.5)
    coef = jnp.where(inside, jnp.log(safe) - jnp.log1p(-safe), 0.0)
    return value, score * t_probs + coef * t_x


@jax.custom_jvp
def _categorical_probs_log_prob(x: jax.Array, probs: jax.Array) -> jax.Array:
    """numpyro's ``CategoricalProbs.log_prob`` value, with the exact score in ``probs``.

    As for Bernoulli: numpyro clamps ``probs``, so a category of probability exactly 0 (never
    drawn) gets a score-function coordinate of exactly 0, while the derivative of
    ``Σ_k p_k f(k)`` in ``p_j`` is ``f(j)``. The tangent here is ``Σ_j [x = j] / p_j · t_j``:
    exact for ``p_j > 0``, and NaN (``0/0``) for ``p_j = 0``, so that coordinate says that no
    sampling estimator can see it instead of reading 0.
    """
    return nd.CategoricalProbs(probs).log_prob(x)


@_categorical_probs_log_prob.defjvp
def _categorical_probs_log_prob_jvp(primals: tuple, tangents: tuple) -> tuple:
    (x, probs), (_, t_probs) = primals, tangents
    value = _categorical_probs_log_prob(x, probs)
    # t_x · (1/p_x), gathered (the same numbers as Σ_j one-hot_j / p_j · t_j): written as that
    # sum, the transpose was a dense product over the categories that XLA's CPU compiler made a
    # slow dot (a mixture's score-function step took 1.2× numpyro's)
    shape = jnp.broadcast_shapes(jnp.shape(x), probs.shape[:-1])
    full = shape + probs.shape[-1:]
    index = jnp.broadcast_to(x, shape)[..., None].astype(jnp.int32)
    p_x = jnp.take_along_axis(jnp.broadcast_to(probs, full), index, axis=-1)[..., 0]
    t_x = jnp.take_along_axis(jnp.broadcast_to(t_probs, full), index, axis=-1)[..., 0]
    # an explicit NaN in every coordinate of probability 0 (never drawn), so that it reads
    # NaN instead of the silent 0 this rule exists to avoid (NaN · 0 is NaN)
    unseen = jnp.sum(jnp.where(probs > 0, 0.0, jnp.nan) * t_probs, axis=-1)
    return value, t_x * (1.0 / p_x) + unseen


def _check_finite(values: jax.Array, what: str) -> None:
    def callback(v: np.ndarray) -> None:
        v = np.asarray(v)
        if not np.all(np.isfinite(v)):
            bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
            _raise_debug(
                FloatingPointError(
                    f"{DEBUG_MARK} {what} produced NaN or inf in {bad} of {np.size(v)} "
                    "values. Look for log/sqrt/division of values outside their domain in f or "
                    "dist_fn (run without jit to find the line). Bernoulli probs of exactly 0 "
                    "or 1 also give a non-finite gradient with the sampling estimators (the "
                    "other outcome is never drawn): use ex.MeasureValued() or logits."
                )
            )

    _quiet_jax_callback_logs()
    jax.debug.callback(callback, values)


def _constraint_checks(dist: Any) -> Iterator[tuple[str, str, Any, jax.Array]]:
    """``(class name, parameter, constraint, valid)`` for each checkable parameter of ``dist``.

    Wrappers (``Independent``, ``.expand()``, masked and transformed distributions) are
    searched through ``base_dist``; lazily derived parameters (the probs of a distribution
    built from logits) are skipped, as numpyro skips them.
    """
    seen = 0
    while dist is not None and seen < 16:
        constraints = getattr(dist, "arg_constraints", None) or {}
        for name, constraint in constraints.items():
            if name not in vars(dist) and isinstance(
                getattr(type(dist), name, None), nd.util.lazy_property
            ):
                continue  # e.g. probs of a distribution built from logits
            try:
                value = getattr(dist, name)
                valid = jnp.asarray(constraint(value))
            except Exception:  # noqa: BLE001 - a constraint that cannot be evaluated here
                continue
            yield type(dist).__name__, name, constraint, valid
        dist = getattr(dist, "base_dist", None)
        seen += 1


def check_parameters(dist: Any) -> None:
    """Run-time check (``debug=True``) that each parameter satisfies its numpyro constraint.

    numpyro checks ``arg_constraints`` only for concrete values; under ``jit`` or ``vmap`` it
    cannot, and e.g. a negative scale then gives a NaN log-density whose score is finite (the
    magic box is 1 whatever ``log p`` is). This puts the same checks in the computation, with a
    host callback that raises ``ValueError`` at run time.
    """
    for dist_name, name, constraint, valid in _constraint_checks(dist):
        _check_valid(valid, dist_name, name, constraint)


def nan_unless_valid(dist: Any) -> jax.Array | float:
    """1.0 when every parameter of ``dist`` satisfies its constraint, NaN otherwise (the
    Python float 1.0 when there is nothing to check).

    Without ``debug=True`` nothing can raise inside ``jit``, so an estimate built from invalid
    parameters (a negative scale, probs outside [0, 1]) is multiplied by this factor: its value
    and every derivative are NaN instead of finite, plausible numbers (a product, not a
    ``where``, so that the NaN reaches the gradient too).
    """
    ok = None
    discrete = bool(getattr(getattr(dist, "support", None), "is_discrete", True))
    for _, _, constraint, valid in _constraint_checks(dist):
        if not discrete and _propagates(constraint):
            continue
        if not isinstance(valid, jax.core.Tracer) and np.all(valid):
            continue  # a concrete parameter that is valid: nothing to check at run time
        ok = jnp.all(valid) if ok is None else ok & jnp.all(valid)
    return 1.0 if ok is None else jnp.where(ok, 1.0, jnp.nan)


def guarded(value: Any, dist: Any) -> Any:
    """``value`` times :func:`nan_unless_valid` of ``dist`` (a pytree of arrays), or ``value``
    itself when ``dist`` has nothing to check (no multiply, so the compiled program is the
    unguarded one). The factor is a constant to differentiation: its NaN reaches every
    derivative through the product."""
    factor = nan_unless_valid(dist)
    if isinstance(factor, float):
        return value
    factor = jax.lax.stop_gradient(factor)
    return jax.tree_util.tree_map(lambda v: v * factor, value)


def guard_parameters(dist: Any) -> tuple[Any, Any]:
    """The guard of :func:`nan_unless_valid` placed on ``dist``'s own parameters.

    Returns ``(dist', factor)``: ``dist'`` is ``dist`` with every floating parameter times the
    (stop-gradient) factor, so invalid parameters make the samples, log-densities and every
    derivative NaN through the computation that runs anyway, in series with it; ``factor`` is
    the same factor for the caller to multiply the estimate's value by where sampling would
    swallow the NaN (discrete distributions: NaN logits still draw integers), else ``None``.
    ``(dist, None)`` when there is nothing to check. A guard multiplied onto the estimate
    alone (a branch beside the sampler) made the smallest compiled programs up to 8x slower in
    a third to a half of their compilations (``benchmarks/README.md``).
    """
    factor = nan_unless_valid(dist)
    if isinstance(factor, float):
        return dist, None
    factor = jax.lax.stop_gradient(factor)
    try:
        leaves, treedef = jax.tree_util.tree_flatten(dist)
        leaves = [
            leaf * factor if jnp.issubdtype(jnp.result_type(leaf), jnp.floating) else leaf
            for leaf in leaves
        ]
        guarded_dist = jax.tree_util.tree_unflatten(treedef, leaves)
    except Exception:  # noqa: BLE001 - a distribution that is not a pytree: guard the value
        return dist, factor
    discrete = bool(getattr(getattr(dist, "support", None), "is_discrete", True))
    return guarded_dist, (factor if discrete else None)


def _propagates(constraint: Any) -> bool:
    """A ``real`` constraint (NaN or ±inf invalid) of a continuous distribution needs no
    guard: such a parameter makes the samples NaN or infinite, and so the estimate and its
    gradient, by itself. The guard checks only constraints that finite values can break (a
    scale ≤ 0, probs outside [0, 1]) and the real parameters of discrete distributions, whose
    sampling swallows a NaN (NaN logits still draw integers)."""
    while isinstance(constraint, nd.constraints._IndependentConstraint):
        constraint = constraint.base_constraint
    return constraint is nd.constraints.real


def _check_valid(valid: jax.Array, dist_name: str, name: str, constraint: Any) -> None:
    def callback(v: np.ndarray) -> None:
        v = np.asarray(v)
        if not np.all(v):
            bad = int(np.size(v) - np.count_nonzero(v))
            _raise_debug(
                ValueError(
                    f"{DEBUG_MARK} dist_fn(params) built {dist_name} with {name} outside its "
                    f"constraint ({type(constraint).__name__.lstrip('_')}) in {bad} of "
                    f"{np.size(v)} values, e.g. a negative scale or probs outside [0, 1]. "
                    "Map unconstrained parameters into the support (jax.nn.softplus or exp for "
                    "a scale, jax.nn.sigmoid or logits= for probabilities)."
                )
            )

    _quiet_jax_callback_logs()
    jax.debug.callback(callback, valid)


class Estimator:
    """Base class of all gradient estimators.

    Subclasses are frozen pytree dataclasses (see :func:`pytree_dataclass`) and implement
    :meth:`terms`. Class attributes describe the estimator to ``compare`` and to error messages:

    - ``unbiased``: whether the gradient estimate is unbiased (relaxations are not).
    - ``needs_dist``: whether a ``dist_fn`` is required (``Pathwise.from_transform`` brings its
      own sampler).
    - ``joint_samples``: whether the ``num_samples`` samples form one joint estimate that is
      not a mean of independent parts (VIMCO's K-sample bound, sampling without
      replacement); such estimators refuse ``chunk_size``, which would silently compute a
      different quantity (the mean of bounds of ``chunk_size`` samples).
    - ``differentiates_f``: whether the gradient differentiates f with respect to x (pathwise,
      relaxations, REBAR/RELAX); such estimators refuse an integer- or bool-valued f.
    """

    unbiased: ClassVar[bool] = True
    needs_dist: ClassVar[bool] = True
    joint_samples: ClassVar[bool] = False
    differentiates_f: ClassVar[bool] = False

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        """Per-sample surrogate terms, shape ``(num_samples,)``.

        Their mean's value is the Monte Carlo estimate of ``E[f]``; its gradient is the
        estimator. Term i may depend on other samples only through ``stop_gradient`` (so that
        ``per_sample_grads`` is the gradient of term i alone).
        """
        raise NotImplementedError

    def min_samples(self) -> int:
        """The smallest ``num_samples`` the estimator accepts (2 for leave-one-out schemes)."""
        return 1

    def evaluations(self, num_samples: int, dist: Any = None) -> int:
        """How many times one estimate evaluates f; ``compare`` reports it as the cost."""
        return num_samples

    @property
    def name(self) -> str:
        """A short label for tables: the class name plus the fields that differ from defaults."""
        parts = []
        if dataclasses.is_dataclass(self):
            for fld in dataclasses.fields(self):
                value = getattr(self, fld.name)
                default = fld.default
                if (
                    default is dataclasses.MISSING
                    and fld.default_factory is not dataclasses.MISSING
                ):
                    default = fld.default_factory()
                if fld.repr and not _same(value, default):
                    parts.append(f"{fld.name}={_short(value)}")
        return type(self).__name__ + (f"({', '.join(parts)})" if parts else "")


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or a == b)
    except Exception:  # arrays compare elementwise
        return False


def _short(value: Any) -> str:
    if hasattr(value, "name") and isinstance(value.name, str):
        return value.name
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return repr(value)
