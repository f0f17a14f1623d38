r"""The removed ``optax.monte_carlo`` API, built on expectax's estimators.

optax deprecated ``optax.monte_carlo`` in 0.2.4 and deleted it after 0.2.6. This module keeps
programs written against it running: change one import and nothing else::

    # before
    from optax import monte_carlo
    from optax._src import utils
    # after
    import expectax.compat.optax_monte_carlo as monte_carlo
    import expectax.compat.optax_monte_carlo as utils

Every function has optax 0.2.6's signature, argument order, defaults, return structure and
shapes: ``params`` is unpacked positionally, ``dist_builder(*params)`` (a list or tuple such as
``[mean, log_scale]``, or one array whose rows are the arguments), ``function(x)`` takes one
sample, and a Jacobian function returns the structure of ``params`` (a list for a list, a tuple
for a tuple, an array for an array) with a leading ``num_samples`` axis on each part, whose mean
over that axis is the gradient estimate of
:math:`\nabla_\theta \mathbb{E}_{p(x;\theta)} f(x)`.

The samples are optax's for the same key, for every builder: all ``num_samples`` of them come
from one ``dist_builder(*params).sample((num_samples,), key=rng)`` call (``seed=`` where the
distribution's ``sample`` takes that, as older optax and TensorFlow Probability did), so the
score-function and pathwise Jacobians equal optax 0.2.6's to float32 rounding
(``tests/test_compat_optax.py`` pins optax's numbers). With :func:`multi_normal` the
score-function and pathwise Jacobians are the Gaussian's closed forms in the standard normal
noise; with a builder returning a numpyro distribution (and for measure-valued Jacobians) they
come from :func:`expectax.per_sample_grads` with :class:`expectax.ScoreFunction`,
:class:`expectax.Pathwise` and :class:`expectax.MeasureValued`. Either way one backward pass
serves all samples, where optax ran one forward-mode pass per parameter element
(``jax.jacfwd``). Any other builder runs optax's own algorithm on its distribution.

Where the native API does better (see ``docs/migrating-from-optax-monte-carlo.md``):

- ``f`` may depend on θ: ``expectax.expectation(f, dist_fn, ...)`` with ``f(params, x)``
  includes the ``∇θ f`` term, where optax required ``stop_gradient`` and a manual chain rule.
- any numpyro distribution, with any parameterisation (a dict of parameters, softplus scales),
  not a builder over a positional list; measure-valued gradients are not limited to
  :func:`multi_normal`.
- ``jax.grad(E)`` gives the averaged gradient directly, without materialising the
  ``num_samples × |θ|`` Jacobian, and works under ``jit``, ``vmap`` and higher-order ``grad``.
- baselines and control variates attach to the estimator
  (``ScoreFunction(baseline=...)``) and keep explicit state that never sees the current
  samples.

Differences from optax 0.2.6, all deliberate:

- No ``DeprecationWarning``s.
- :func:`control_variates_jacobians` evaluates the control variate with the state it was
  *given* and returns the updated state; optax updated the state first, so a moving-average
  baseline had already seen the current samples, which biases the score-function gradient.
  The returned state is the same as optax's.
- :func:`pathwise_jacobians` refuses a builder whose samples have no derivative with respect to
  the parameters (integer samples, ``has_rsample`` false, a ``stop_gradient`` in ``sample``);
  optax returned a Jacobian of exactly zero for them.
- A builder may return a numpyro distribution (optax's ``sample((n,), key=...)`` call failed on
  numpyro's ``sample(key, sample_shape)``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.scipy.stats import norm

from expectax.estimators.base import _as_values
from expectax.estimators.pathwise import Pathwise
from expectax.estimators.score_function import ScoreFunction
from expectax.expectation import per_sample_grads

__all__ = [
    "ControlVariate",
    "CvState",
    "MultiNormalDiagFromLogScale",
    "control_delta_method",
    "control_variates_jacobians",
    "estimate_control_variate_coefficients",
    "measure_valued_jacobians",
    "moving_avg_baseline",
    "multi_normal",
    "pathwise_jacobians",
    "score_function_jacobians",
]

Params = Sequence[jax.Array]
# what the Jacobian functions unpack, dist_builder(*params): a list, a tuple or one array
PositionalParams = Sequence[jax.Array] | jax.Array
CvState = Any
ComputeCv = Callable[[Params, jax.Array, CvState], jax.Array]
CvExpectedValue = Callable[[Params, CvState], jax.Array]
UpdateCvState = Callable[[Params, jax.Array, CvState], CvState]
ControlVariate = tuple[ComputeCv, CvExpectedValue, UpdateCvState]


# --------------------------------------------------------------------------- distribution


@jax.tree_util.register_pytree_node_class
class MultiNormalDiagFromLogScale:
    """A diagonal Gaussian parameterised by its mean and the log of its standard deviation.

    The distribution :func:`multi_normal` builds, with optax's interface: ``sample(shape, key)``
    (shape first), ``log_prob(x)`` summed over the parameter axes, ``params`` and ``log_scale``.
    It is a JAX pytree, so it can cross ``jit`` and ``vmap`` boundaries.
    """

    def __init__(self, loc: jax.typing.ArrayLike, log_scale: jax.typing.ArrayLike):
        self._mean = jnp.asarray(loc)
        self._log_scale = jnp.asarray(log_scale)

    def tree_flatten(self) -> tuple[tuple[Any, Any], None]:
        return (self._mean, self._log_scale), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: Sequence[Any]) -> MultiNormalDiagFromLogScale:
        del aux
        obj = object.__new__(cls)
        obj._mean, obj._log_scale = children
        return obj

    @property
    def _param_shape(self) -> tuple[int, ...]:
        return jnp.broadcast_shapes(jnp.shape(self._mean), jnp.shape(self._log_scale))

    def sample(
        self, shape: Sequence[int], key: jax.Array | None = None, *, seed: jax.Array | None = None
    ) -> jax.Array:
        """Draw samples of shape ``(*shape, *param_shape)``: ``mean + exp(log_scale) · ε``.

        Args:
          shape: the sample shape, e.g. ``(num_samples,)`` (first, as in optax).
          key: a ``jax.random`` key (``seed=`` is accepted as an alias, as in optax < 0.2).
        """
        key = seed if key is None else key
        if key is None:
            raise TypeError(
                "multi_normal(...).sample(shape, key): key is missing. Pass a jax.random key, "
                "e.g. dist.sample((num_samples,), jax.random.key(0))."
            )
        return _draw_multi_normal(self._mean, self._log_scale, tuple(shape), key)[2]

    def log_prob(self, x: jax.typing.ArrayLike) -> jax.Array:
        """The log-density of ``x``, summed over the trailing parameter axes."""
        logpdf = norm.logpdf(x, loc=self._mean, scale=jnp.exp(self._log_scale))
        ndim = len(self._param_shape)
        return jnp.sum(logpdf, axis=tuple(range(-ndim, 0))) if ndim else logpdf

    @property
    def log_scale(self) -> jax.Array:
        """The log standard deviation, as passed in."""
        return self._log_scale

    @property
    def params(self) -> list[jax.Array]:
        """``[mean, log_scale]``, the arguments of :func:`multi_normal`."""
        return [self._mean, self._log_scale]


def _draw_multi_normal(
    mean: jax.typing.ArrayLike,
    log_scale: jax.typing.ArrayLike,
    sample_shape: tuple[int, ...],
    key: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(ε, σ, x)`` of ``multi_normal(mean, log_scale)``'s draw of shape
    ``(*sample_shape, *param_shape)``: ``x = μ + σ ε`` with ``σ = exp(log_scale)``, optax's samples
    for the same key. The one place they are drawn, for ``sample`` and the closed-form
    Jacobians alike."""
    mean, log_scale = jnp.asarray(mean), jnp.asarray(log_scale)
    dtype = jnp.result_type(float, mean, log_scale)
    shape = sample_shape + jnp.broadcast_shapes(mean.shape, log_scale.shape)
    eps = jax.random.normal(key, shape=shape, dtype=dtype)
    sigma = jnp.exp(log_scale)
    return eps, sigma, eps * sigma + mean


def multi_normal(
    loc: jax.typing.ArrayLike, log_scale: jax.typing.ArrayLike
) -> MultiNormalDiagFromLogScale:
    """A diagonal Gaussian with mean ``loc`` and standard deviation ``exp(log_scale)``.

    The distribution builder of the old ``optax.monte_carlo`` (``optax._src.utils.multi_normal``).

    Args:
      loc: the mean, shape ``(D,)`` (any shape broadcastable with ``log_scale``).
      log_scale: the log standard deviation.

    Returns:
      A :class:`MultiNormalDiagFromLogScale`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from expectax.compat.optax_monte_carlo import multi_normal
      >>> d = multi_normal(jnp.zeros(3), jnp.zeros(3))
      >>> d.sample((5,), jax.random.key(0)).shape
      (5, 3)
    """
    return MultiNormalDiagFromLogScale(loc, log_scale)


def _is_multi_normal(builder: Any) -> bool:
    """Ours, or optax's own ``multi_normal`` (recognised by name; optax is never imported)."""
    if builder is multi_normal:
        return True
    return getattr(builder, "__name__", None) == "multi_normal" and str(
        getattr(builder, "__module__", "")
    ).startswith("optax")


def _gaussian(loc: jax.Array, log_scale: jax.Array) -> dist.Distribution:
    """numpyro's equivalent of ``multi_normal(loc, log_scale)``: the same samples per key."""
    loc, log_scale = jnp.asarray(loc), jnp.asarray(log_scale)
    base = dist.Normal(loc, jnp.exp(log_scale))
    ndim = len(jnp.broadcast_shapes(loc.shape, log_scale.shape))
    return base.to_event(ndim) if ndim else base


_ORDER = "(function, params, dist_builder, rng, num_samples)"


def _positional(params: Any, fn: str) -> tuple[Any, ...]:
    """The arguments ``dist_builder(*params)`` receives, as optax passed them.

    optax took any pytree that unpacks positionally: a list or tuple ``[mean, log_scale]``, or
    a single array, whose rows become the arguments (``jnp.array([.3])`` passes one scalar).
    """
    if isinstance(params, Mapping):
        raise TypeError(
            f"{fn}: params is unpacked positionally, dist_builder(*params), so a dict would pass "
            f"its keys; got a dict with keys {list(params)}. Pass a list such as "
            "[mean, log_scale], or use the native API, expectax.per_sample_grads, which takes "
            "any pytree."
        )
    if callable(params) and not hasattr(params, "shape"):
        raise TypeError(
            f"{fn}: params must be the parameters (a list of arrays, or one array), got the "
            f"function {getattr(params, '__name__', type(params).__name__)}. The argument order "
            f"is {_ORDER}."
        )
    if isinstance(params, (list, tuple)):
        return tuple(params)
    if hasattr(params, "shape"):
        if jnp.ndim(params) == 0:
            raise TypeError(
                f"{fn}: params is unpacked positionally, dist_builder(*params), so it must be a "
                "list of arrays or an array with at least one axis; got a 0-d array. Wrap it: "
                "params=[theta] (or jnp.array([theta]))."
            )
        return tuple(params)
    raise TypeError(
        f"{fn}: params must be a list (or tuple) of arrays passed positionally to dist_builder, "
        f"e.g. params=[mean, log_scale], or one array; got {type(params).__name__}."
    )


def _check_builder(dist_builder: Any, fn: str) -> None:
    if isinstance(dist_builder, dist.Distribution) or (
        not isinstance(dist_builder, type)
        and hasattr(dist_builder, "sample")
        and hasattr(dist_builder, "log_prob")
    ):
        raise TypeError(
            f"{fn}: dist_builder must be a function that builds the distribution from the "
            f"parameters, called as dist_builder(*params); got a {type(dist_builder).__name__} "
            "distribution itself. Pass the builder, e.g. multi_normal with params=[mean, "
            "log_scale], or lambda loc, log_scale: numpyro.distributions.Normal(loc, "
            "jnp.exp(log_scale)).to_event(1)."
        )
    if not callable(dist_builder):
        raise TypeError(
            f"{fn}: dist_builder must be a function building a distribution from the "
            f"parameters, e.g. multi_normal; got {type(dist_builder).__name__}. The argument "
            f"order is {_ORDER}."
        )


def _check_function(function: Any, fn: str) -> None:
    if not callable(function):
        raise TypeError(
            f"{fn}: function must be f(x), a function of one sample returning a scalar; got "
            f"{type(function).__name__}. The argument order is {_ORDER}."
        )
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p for p in signature.parameters.values() if p.kind in kinds]
    required = [p.name for p in positional if p.default is inspect.Parameter.empty]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values())
    if len(required) > 1:
        raise TypeError(
            f"{fn}: function must take one sample, f(x); it has {len(required)} required "
            f"arguments ({', '.join(required)}). For f(params, x) use the native API, "
            "expectax.per_sample_grads(f, dist_fn, params, key, estimator=..., num_samples=...), "
            "or pass lambda x: f(params, x) (here f must not depend on the parameters)."
        )
    if not positional and not varargs:
        raise TypeError(f"{fn}: function must take one sample, f(x); it takes no arguments.")


def _check_rng(rng: Any, fn: str) -> None:
    if isinstance(rng, jax.Array):
        if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.shape == ():
            return
        if rng.dtype == jnp.uint32 and rng.shape == (2,):
            return  # a legacy jax.random.PRNGKey
    raise TypeError(
        f"{fn}: rng must be one jax.random key, e.g. jax.random.PRNGKey(0) or "
        f"jax.random.key(0); got {type(rng).__name__} with dtype {getattr(rng, 'dtype', '?')} "
        f"and shape {getattr(rng, 'shape', '?')}. The argument order is {_ORDER}."
    )


def _check_num_samples(num_samples: Any, fn: str) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise TypeError(
            f"{fn}: num_samples must be a Python int, got {type(num_samples).__name__}. The "
            f"argument order is {_ORDER}; under jax.jit make it static (static_argnums)."
        )
    if num_samples < 1:
        raise ValueError(f"{fn}: num_samples must be at least 1, got {num_samples}.")
    return int(num_samples)


def _build(dist_builder: Callable[..., Any], params: Any, fn: str) -> Any:
    """``dist_builder(*params)``, with an error that says how params was unpacked."""
    args = _positional(params, fn)
    try:
        built = dist_builder(*args)
    except TypeError as err:
        name = getattr(dist_builder, "__name__", type(dist_builder).__name__)
        raise TypeError(
            f"{fn}: dist_builder(*params) failed: {err}. params is unpacked positionally: "
            f"{name} was called with {len(args)} argument(s), one per element of params (one "
            "per row of an array). E.g. multi_normal needs params=[mean, log_scale]."
        ) from err
    if not (hasattr(built, "sample") and hasattr(built, "log_prob")):
        raise TypeError(
            f"{fn}: dist_builder(*params) must return a distribution with sample(shape, key) "
            f"and log_prob(x); got {type(built).__name__}."
        )
    return built


def _key_keyword(sample: Callable[..., Any]) -> str | None:
    """How the distribution's ``sample`` takes its key: ``key=`` (optax 0.2.x), ``seed=``
    (older optax and TensorFlow Probability), or positionally after the shape."""
    try:
        parameters = inspect.signature(sample).parameters
    except (TypeError, ValueError):
        return "key"
    if "key" in parameters:
        return "key"
    if "seed" in parameters:
        return "seed"
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return "key"
    return None


def _sample(built: Any, n: int, rng: jax.Array) -> Any:
    """All ``n`` samples in one call, as optax drew them: ``sample((n,), key=rng)``."""
    if isinstance(built, dist.Distribution):  # numpyro: sample(key, sample_shape)
        return built.sample(rng, (n,))
    keyword = _key_keyword(built.sample)
    if keyword is None:
        return built.sample((n,), rng)
    return built.sample((n,), **{keyword: rng})


def _draw(dist_builder: Callable[..., Any], params: Any, rng: jax.Array, n: int, fn: str) -> Any:
    """The samples the Jacobian functions draw for ``rng``: ``builder(*params).sample((n,),
    key=rng)``, as optax drew them."""
    return _sample(_build(dist_builder, params, fn), n, rng)


def _unpack(params: Any) -> tuple[Any, ...]:
    return tuple(params)


def _depends_on_inputs(fun: Callable[[Any], Any], params: Any) -> bool:
    """Whether ``fun``'s output can carry a tangent of ``params``, read off the JVP's jaxpr.

    Conservative: an equation that takes any tangent-dependent input counts as producing
    tangent-dependent outputs, so ``False`` means the Jacobian is zero by construction (a
    ``stop_gradient`` or a sampler that does not use the parameters).
    """
    primals = jax.tree_util.tree_leaves(params)

    def tangent_out(*leaves: Any) -> Any:
        k = len(leaves) // 2
        tree = jax.tree_util.tree_structure(params)
        p = jax.tree_util.tree_unflatten(tree, leaves[:k])
        t = jax.tree_util.tree_unflatten(tree, leaves[k:])
        return jax.jvp(fun, (p,), (t,))[1]

    closed = jax.make_jaxpr(tangent_out)(*primals, *primals)
    jaxpr = closed.jaxpr
    live = set(jaxpr.invars[len(primals) :])
    for eqn in jaxpr.eqns:
        if any(isinstance(v, jex_core.Var) and v in live for v in eqn.invars):
            live.update(eqn.outvars)
    return any(isinstance(v, jex_core.Var) and v in live for v in jaxpr.outvars)


def _check_reparameterised(
    built: Any, dist_builder: Callable[..., Any], params: Any, rng: jax.Array, n: int, fn: str
) -> None:
    """optax returned Jacobians of exactly zero for a sampler without a pathwise derivative;
    refuse instead."""
    name = type(built).__name__
    advice = (
        "Use score_function_jacobians (any distribution with a log_prob), or a builder whose "
        "sample is a differentiable function of the parameters, e.g. mean + exp(log_scale) · ε."
    )
    if getattr(built, "has_rsample", True) is False:
        raise ValueError(
            f"{fn}: dist_builder(*params) returned {name}, which is not reparameterisable "
            f"(has_rsample is False), so its pathwise Jacobian would be exactly zero. {advice}"
        )
    kind = getattr(built, "reparameterization_type", None)  # TensorFlow Probability
    if kind is not None and "NOT" in str(kind).upper():
        raise ValueError(
            f"{fn}: dist_builder(*params) returned {name} with reparameterization_type {kind}, "
            f"so its pathwise Jacobian would be exactly zero. {advice}"
        )

    def draw(p: Any) -> Any:
        return _sample(dist_builder(*_unpack(p)), n, rng)

    shapes = jax.eval_shape(draw, params)
    if not all(jnp.issubdtype(s.dtype, jnp.inexact) for s in jax.tree_util.tree_leaves(shapes)):
        dtypes = sorted({str(s.dtype) for s in jax.tree_util.tree_leaves(shapes)})
        raise ValueError(
            f"{fn}: {name}.sample returns {'/'.join(dtypes)} values, which have no derivative "
            f"with respect to the parameters (optax returned a Jacobian of exactly zero). "
            f"{advice}"
        )
    if not _depends_on_inputs(draw, params):
        raise ValueError(
            f"{fn}: the samples of {name} do not depend differentiably on params (its sample "
            "stops the gradient or ignores the parameters), so the pathwise Jacobian would be "
            f"exactly zero (optax returned that silently). {advice}"
        )


def _check_inputs(
    function: Any, params: Any, dist_builder: Any, rng: Any, num_samples: Any, fn: str
) -> int:
    _positional(params, fn)
    _check_function(function, fn)
    _check_builder(dist_builder, fn)
    _check_rng(rng, fn)
    return _check_num_samples(num_samples, fn)


def _jacobians(
    kind: str,
    fn: str,
    function: Callable[[jax.Array], Any],
    params: Any,
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
) -> Any:
    """Per-sample Jacobians with the structure of ``params``, drawn as optax drew them.

    Three routes, one result: ``multi_normal`` has closed forms in the noise
    (:func:`_multi_normal_jacobians`, optax's samples for the same key); builders returning a
    numpyro distribution go through :func:`expectax.per_sample_grads` (one backward pass for all
    samples); any other builder runs optax's own algorithm, all samples from one
    ``builder(*params).sample((n,), key=rng)`` call.
    """
    n = _check_inputs(function, params, dist_builder, rng, num_samples, fn)
    if _is_multi_normal(dist_builder):
        args = _positional(params, fn)
        if len(args) != 2:
            raise TypeError(
                f"{fn}: multi_normal takes params=[mean, log_scale] (two arrays, passed "
                f"positionally); got params with {len(args)} element(s)."
            )
        return _multi_normal_jacobians(kind, function, params, args, rng, n)
    else:
        built = _build(dist_builder, params, fn)
        if kind == "pathwise":
            _check_reparameterised(built, dist_builder, params, rng, n, fn)
        if not isinstance(built, dist.Distribution):
            return _optax_jacobians(kind, function, params, dist_builder, rng, n)
        dist_fn = lambda p: dist_builder(*_unpack(p))  # noqa: E731
    estimator = ScoreFunction() if kind == "score_function" else Pathwise()
    return per_sample_grads(
        lambda _, x: function(x), dist_fn, params, rng, estimator=estimator, num_samples=n
    )


def _multi_normal_jacobians(
    kind: str,
    function: Callable[[jax.Array], Any],
    params: Any,
    args: tuple[Any, ...],
    rng: jax.Array,
    n: int,
) -> Any:
    """The Jacobians for ``multi_normal`` in closed form, from the standard normal noise ε.

    Sample i is ``x_i = μ + σ ε_i`` (optax's samples for the same key). Score function:
    ``f(x_i) ε_i / σ`` for μ and ``f(x_i) (ε_i² − 1)`` for log σ. Pathwise: ``∇f(x_i)`` and
    ``∇f(x_i) σ ε_i``. The same numbers as the generic route (``per_sample_grads`` with
    ``∇θ log p(x_i)``) up to rounding, at the cost of a hand-written Jacobian: written from x,
    the score makes XLA's CPU fusion recompute the sample's ``erf_inv`` in each kernel that
    reads it (``benchmarks/README.md``, "optax compat"). An invalid ``log_scale`` or mean (NaN,
    ±inf) makes the Jacobians NaN by itself, as in the generic route.
    """
    mean, log_scale = (jnp.asarray(a) for a in args)
    eps, sigma, x = _draw_multi_normal(mean, log_scale, (n,), rng)
    dtype, shape = x.dtype, x.shape[1:]
    _check_scalar(function, x, n)
    # f's values pass the generic route's checks: complex refused, integers converted to
    # float for the score function and refused by the pathwise estimator (zero derivative)
    if kind == "score_function":
        values = _as_values(jax.vmap(function)(x), None).astype(dtype)
        scale = values.reshape((n,) + (1,) * len(shape))
        jac_mean, jac_log_scale = scale * eps / sigma, scale * (eps * eps - 1.0)
    else:
        grads = jax.vmap(jax.grad(lambda xi: _as_values(function(xi), "Pathwise")))(x)
        jac_mean, jac_log_scale = grads, grads * eps * sigma
    parts = [_sum_to(jac_mean, mean.shape), _sum_to(jac_log_scale, log_scale.shape)]
    if isinstance(params, (list, tuple)):
        return type(params)(parts)
    return jnp.stack(parts, axis=1)  # one array whose rows were the arguments


def _check_scalar(function: Callable[[jax.Array], Any], x: Any, n: int) -> None:
    """A clear error when ``f`` does not return a scalar for each of the samples ``x``."""
    out = jax.eval_shape(jax.vmap(function), x)
    if out is None or isinstance(out, (tuple, list, dict)):
        _as_values(out, None)  # the estimators' own refusal of None and of several outputs
    shape = jnp.shape(out)
    if shape != (n,):
        raise TypeError(
            f"function must return a scalar for each sample: f(x) returned shape {shape[1:]}. "
            "Reduce it, e.g. lambda x: jnp.sum(f(x))."
        )


def _sum_to(jac: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Per-sample ``jac`` of shape ``(n, *broadcast shape)`` summed down to ``(n, *shape)``:
    a parameter broadcast against the other one gets the sum over the axes it was copied along."""
    lead = jac.ndim - 1 - len(shape)
    axes = tuple(range(1, 1 + lead)) + tuple(
        1 + lead + i for i, size in enumerate(shape) if size == 1 and jac.shape[1 + lead + i] != 1
    )
    return jnp.sum(jac, axis=axes, keepdims=False).reshape((jac.shape[0], *shape)) if axes else jac


def _optax_jacobians(
    kind: str,
    function: Callable[[jax.Array], Any],
    params: Any,
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    n: int,
) -> Any:
    """optax 0.2.6's algorithm for a builder of the user's own (the same samples, the same
    numbers): score function as ``f(x_i) ∇θ log p(x_i)`` on one stopped draw (per-sample
    reverse mode, where optax used ``jax.jacfwd``); pathwise as ``jax.jacfwd`` of
    ``vmap(f)(builder(*params).sample((n,), key=rng))``, exactly as optax computed it."""

    def build(p: Any) -> Any:
        return dist_builder(*_unpack(p))

    def values_of(p: Any) -> jax.Array:
        return jax.vmap(function)(_sample(build(p), n, rng))

    _check_scalar(function, jax.eval_shape(lambda p: _sample(build(p), n, rng), params), n)
    if kind == "pathwise":
        return jax.jacfwd(values_of)(params)
    samples = jax.lax.stop_gradient(_sample(build(params), n, rng))
    values = jax.vmap(function)(samples)
    scores = jax.vmap(jax.grad(lambda p, x: build(p).log_prob(x)), in_axes=(None, 0))(
        params, samples
    )
    return jax.tree_util.tree_map(lambda g: values.reshape((n,) + (1,) * (g.ndim - 1)) * g, scores)


# --------------------------------------------------------------------------- estimators


def score_function_jacobians(
    function: Callable[[jax.Array], float],
    params: PositionalParams,
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
) -> PositionalParams:
    r"""Per-sample score-function (REINFORCE) gradient estimates.

    .. math::

        \nabla_\theta \mathbb{E}_{p(x;\theta)} f(x)
        = \mathbb{E}_{p(x;\theta)}\big[f(x)\, \nabla_\theta \log p(x;\theta)\big],
        \qquad J_i = f(x_i)\, \nabla_\theta \log p(x_i;\theta).

    Needs ``log p`` differentiable in θ; ``f`` may be anything (discrete ``x`` too).

    Args:
      function: ``f(x)`` for one sample ``x``, returning a scalar; must not depend on θ.
      params: unpacked positionally, ``dist_builder(*params)``: a list or tuple of arrays, or
        one array whose rows are the arguments.
      dist_builder: builds the distribution, e.g. :func:`multi_normal`; its result needs
        ``sample(shape, key=...)`` (or ``seed=``) and ``log_prob(x)``, or is a numpyro
        distribution.
      rng: a ``jax.random`` key.
      num_samples: the number of samples ``N``.

    Returns:
      The structure of ``params`` (a list, a tuple or an array); each part has shape
      ``(num_samples, *part.shape)`` and holds one gradient estimate per sample. Its mean over
      axis 0 is the gradient estimate; the spread shows the estimator's variance.

    Native API: ``expectax.per_sample_grads(f, dist_fn, params, key,
    estimator=expectax.ScoreFunction(), num_samples=N)``, or ``jax.grad`` of
    ``expectax.expectation(...)`` for the mean alone. There ``f(params, x)`` may depend on θ,
    ``params`` may be any pytree and ``dist_fn`` any numpyro distribution; a baseline is one
    argument away (``ScoreFunction(baseline=...)``).

    References:
      Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
      learning", JMLR 21(132), section 4.
    """
    return _jacobians(
        "score_function",
        "score_function_jacobians",
        function,
        params,
        dist_builder,
        rng,
        num_samples,
    )


def pathwise_jacobians(
    function: Callable[[jax.Array], float],
    params: PositionalParams,
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
) -> PositionalParams:
    r"""Per-sample pathwise (reparameterisation) gradient estimates.

    .. math::

        \nabla_\theta \mathbb{E}_{p(x;\theta)} f(x)
        = \mathbb{E}_{p(\epsilon)}\big[\nabla_\theta f(g(\epsilon, \theta))\big],
        \qquad J_i = \nabla_\theta f(g(\epsilon_i, \theta)).

    Needs ``f`` differentiable and a sampler differentiable in θ (``multi_normal``:
    ``x = mean + exp(log_scale) ε``).

    Args:
      function: ``f(x)`` for one sample ``x``, returning a scalar; must not depend on θ.
      params: unpacked positionally, ``dist_builder(*params)``, as in
        :func:`score_function_jacobians`.
      dist_builder: builds the distribution, e.g. :func:`multi_normal`; its samples must be a
        differentiable function of the parameters.
      rng: a ``jax.random`` key.
      num_samples: the number of samples ``N``.

    Returns:
      The structure of ``params``; each part has shape ``(num_samples, *part.shape)``.

    Raises:
      ValueError: if the builder's samples cannot carry a derivative (integer samples,
        ``has_rsample`` false, a non-reparameterised TensorFlow Probability distribution, or a
        ``sample`` that stops the gradient); optax returned a Jacobian of exactly zero there.

    With :func:`multi_normal` (or a numpyro distribution) one reverse-mode pass computes all
    ``N`` per-sample gradients (θ is copied per sample); optax used ``jax.jacfwd``, one forward
    pass per parameter element, which is what runs for other builders.

    Native API: ``expectax.per_sample_grads(..., estimator=expectax.Pathwise())`` or
    ``jax.grad(expectax.expectation(f, dist_fn, estimator=expectax.Pathwise(), ...))``, which
    also includes ``∇θ f`` when ``f(params, x)`` depends on θ, and works with any
    reparameterisable numpyro distribution (Gamma, Beta and Dirichlet too).

    References:
      Kingma & Welling (2014), "Auto-encoding variational Bayes". Mohamed et al. (2020),
      JMLR 21(132), section 5.
    """
    return _jacobians(
        "pathwise", "pathwise_jacobians", function, params, dist_builder, rng, num_samples
    )


def measure_valued_jacobians(
    function: Callable[[jax.Array], float],
    params: Params,
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
    coupling: bool = True,
) -> Params:
    r"""Per-sample measure-valued gradient estimates for a diagonal Gaussian.

    .. math::

        \partial_{\theta_d} \mathbb{E}_{p(x;\theta)} f(x)
        = \frac{1}{c_{\theta_d}}\Big(\mathbb{E}_{p^+_d} f(x) - \mathbb{E}_{p^-_d} f(x)\Big),

    the weak derivative of the Gaussian: for the mean, Weibull(√2, 2) perturbations of
    coordinate ``d`` on either side with ``c = √(2π) σ_d``; for the standard deviation, a
    double-sided Maxwell against a Gaussian with ``c = σ_d``, then the chain rule to
    ``log_scale``. Each sample costs ``4 D`` evaluations of ``f`` for ``D`` coordinates.

    Args:
      function: ``f(x)`` for one sample ``x``, returning a scalar; must not depend on θ.
      params: ``[mean, log_scale]``.
      dist_builder: must be :func:`multi_normal` (optax's own is recognised too).
      rng: a ``jax.random`` key.
      num_samples: the number of samples ``N``.
      coupling: whether the positive and negative samples share their randomness (the
        paper's coupling); it lowers the variance. Recommended: True.

    Returns:
      ``[mean_jacobians, log_scale_jacobians]``, each of shape ``(num_samples, D)``.

    Raises:
      ValueError: if ``dist_builder`` is not :func:`multi_normal`.

    Native API: ``expectax.per_sample_grads(..., estimator=expectax.MeasureValued())``, or
    ``jax.grad`` of ``expectax.expectation(...)`` with it; there ``f`` may depend on θ.

    References:
      Mohamed et al. (2020), JMLR 21(132), section 6. Pflug (1989), "Sampling derivatives of
      probabilities".
    """
    fn = "measure_valued_jacobians"
    if not _is_multi_normal(dist_builder):
        raise ValueError(
            "Unsupported distribution builder for measure_valued_jacobians! It supports only "
            "dist_builder=multi_normal (a diagonal Gaussian from [mean, log_scale]); got "
            f"{getattr(dist_builder, '__name__', type(dist_builder).__name__)}. Use "
            "score_function_jacobians or pathwise_jacobians for other builders, or the native "
            "expectax.per_sample_grads(..., estimator=expectax.MeasureValued()) with a numpyro "
            "distribution."
        )
    n = _check_inputs(function, params, dist_builder, rng, num_samples, fn)
    args = _positional(params, fn)
    if len(args) != 2:
        raise ValueError(
            f"{fn}: params must be [mean, log_scale] (two arrays) for multi_normal; got "
            f"{len(args)} element(s)."
        )
    try:
        from expectax.estimators.measure_valued import MeasureValued
    except ImportError as err:  # pragma: no cover - only while the estimator is missing
        raise NotImplementedError(
            "measure_valued_jacobians needs expectax.estimators.measure_valued.MeasureValued, "
            "which this installation lacks."
        ) from err
    return per_sample_grads(
        lambda _, x: function(x),
        lambda p: _gaussian(*_unpack(p)),
        params,
        rng,
        estimator=MeasureValued(coupling=coupling),
        num_samples=n,
    )


# --------------------------------------------------------------------------- control variates


def control_delta_method(function: Callable[[jax.Array], float]) -> ControlVariate:
    r"""The delta-method control variate: a second-order Taylor expansion of ``f`` at the mean.

    .. math::

        h(x) = f(\mu) + (x - \mu)^\top \nabla f(\mu)
               + \tfrac12 (x - \mu)^\top \nabla^2 f(\mu) (x - \mu),
        \qquad
        \mathbb{E}_{\mathcal N(\mu, \operatorname{diag}\sigma^2)}[h]
        = f(\mu) + \tfrac12 \sum_d \sigma_d^2\, [\nabla^2 f(\mu)]_{dd}.

    For Gaussian ``params = [mean, log_scale]`` only.

    Args:
      function: ``f(x)`` for one sample ``x``, returning a scalar; ``x`` must be a vector.

    Returns:
      ``(control_variate, expected_value, update_state)``: ``control_variate(params, x,
      state)`` gives ``h(x)`` for one sample, ``expected_value(params, state)`` gives
      ``E[h]`` in closed form, ``update_state(params, samples, state)`` returns ``state``
      unchanged (the delta method keeps none).

    Native API: ``expectax.ScoreFunction(control_variate=expectax.control_variates.DeltaMethod())``
    (no per-call Hessian bookkeeping; works with the estimator's own samples).

    References:
      Paisley, Blei & Jordan (2012), "Variational Bayesian inference with stochastic search",
      ICML. Mohamed et al. (2020), JMLR 21(132), section 7.
    """

    def taylor(mean: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        value, grad = jax.value_and_grad(function)(mean)
        hess = jax.hessian(function)(mean)
        if hess.ndim != 2:
            raise ValueError(
                "control_delta_method: function must take a vector x of shape (D,) so that its "
                f"Hessian is (D, D); the Hessian at the mean has shape {hess.shape}."
            )
        return value, grad, hess

    def delta(params: Params, sample: jax.Array, state: CvState = None) -> jax.Array:
        del state
        mean, _ = _gaussian_params(params, "control_delta_method")
        value, grad, hess = taylor(mean)
        centred = sample - mean
        return value + centred @ grad + 0.5 * (centred @ hess @ centred)

    def expected_value_delta(params: Params, state: CvState) -> jax.Array:
        del state
        mean, log_scale = _gaussian_params(params, "control_delta_method")
        value, _, hess = taylor(mean)
        return value + 0.5 * jnp.sum(jnp.exp(2.0 * log_scale) * jnp.diagonal(hess))

    def update_state(params: Params, samples: jax.Array, state: CvState = None) -> CvState:
        del params, samples
        return state

    return delta, expected_value_delta, update_state


def moving_avg_baseline(
    function: Callable[[jax.Array], float],
    decay: float = 0.99,
    zero_debias: bool = True,
    use_decay_early_training_heuristic: bool = True,
) -> ControlVariate:
    r"""A moving-average baseline: ``h(x) = b``, an average of past values of ``f``.

    The state is ``(b, i)``: the average and the number of updates so far (start from
    ``(jnp.array(0.), 0)``). An update with samples ``x_1..x_N`` computes

    .. math::

        \beta_i = \min\big(\beta, \tfrac{1 + i}{10 + i}\big)\ \text{(heuristic on) or}\ \beta,
        \qquad
        b' = \beta_i b + (1 - \beta_i) \tfrac1N \textstyle\sum_n f(x_n),

    divides ``b'`` by ``1 − β_i^{i+1}`` when ``zero_debias`` is on, and returns
    ``(b', i + 1)``. The expected value of ``h`` is ``b`` itself, so the baseline only
    changes the score-function estimator (it has no effect on pathwise or measure-valued).

    Args:
      function: ``f(x)`` for one sample ``x``, returning a scalar.
      decay: the decay rate ``β`` of the moving average.
      zero_debias: whether to divide the new average by ``1 − β_i^{i+1}``.
      use_decay_early_training_heuristic: whether to use ``min(β, (1 + i) / (10 + i))`` as
        the decay early on (from TensorFlow's moving averages).

    Returns:
      ``(control_variate, expected_value, update_state)`` with the signatures of
      :func:`control_delta_method`; the first two return ``b``.

    Native API: ``expectax.ScoreFunction(baseline=expectax.baselines.MovingAverage(...))``
    with the state passed in and out explicitly, or a leave-one-out baseline, which needs no
    state at all.
    """

    def moving_avg(params: Params, samples: jax.Array, state: CvState = None) -> jax.Array:
        del params, samples
        return _average_state(state)[0]

    def expected_value_moving_avg(params: Params, state: CvState) -> jax.Array:
        del params
        return _average_state(state)[0]

    def update_state(params: Params, samples: jax.Array, state: CvState = None) -> CvState:
        del params
        value, i = _average_state(state)
        if use_decay_early_training_heuristic:
            step_decay = jnp.minimum(decay, (1.0 + i) / (10.0 + i))
        else:
            step_decay = jnp.asarray(decay)
        new = step_decay * value + (1.0 - step_decay) * jnp.mean(jax.vmap(function)(samples))
        if zero_debias:
            new = new / (1.0 - step_decay ** (i + 1))
        return jax.lax.stop_gradient(new), i + 1

    return moving_avg, expected_value_moving_avg, update_state


def _gaussian_params(params: Any, fn: str) -> tuple[jax.Array, jax.Array]:
    """``(mean, log_scale)`` from ``params``, or an error saying what they must be."""
    if not isinstance(params, (list, tuple)) or len(params) != 2:
        got = (
            f"{len(params)} arrays" if isinstance(params, (list, tuple)) else type(params).__name__
        )
        raise ValueError(
            f"{fn}: params must be [mean, log_scale] (a diagonal Gaussian's, as multi_normal "
            f"takes them); got {got}. For other distributions use moving_avg_baseline, or "
            "expectax.ScoreFunction(control_variate=...) with a control variate of your own."
        )
    return params[0], params[1]


def _average_state(state: Any) -> tuple[Any, Any]:
    """The moving average's ``(average, count)`` state, or an error saying how to start it."""
    if not isinstance(state, (list, tuple)) or len(state) != 2:
        got = f"{len(state)} elements" if isinstance(state, (list, tuple)) else repr(state)[:60]
        raise ValueError(
            "moving_avg_baseline: control_variate_state must be (average, count), e.g. "
            f"(jnp.array(0.0), 0) to start, then the state returned by the last call; got {got}."
        )
    return state[0], state[1]


def _control_variate(
    control_variate_from_function: Any, function: Callable[[jax.Array], float], fn: str
) -> ControlVariate:
    """``control_variate_from_function(function)``, checked to be the three functions."""
    if isinstance(control_variate_from_function, (list, tuple)) or not callable(
        control_variate_from_function
    ):
        raise TypeError(
            f"{fn}: control_variate_from_function must be a function of f returning "
            "(control_variate, expected_value, update_state), e.g. control_delta_method or "
            "moving_avg_baseline itself (not control_delta_method(f), which is its result); "
            f"got {type(control_variate_from_function).__name__}."
        )
    parts = control_variate_from_function(function)
    if not (
        isinstance(parts, (list, tuple)) and len(parts) == 3 and all(callable(p) for p in parts)
    ):
        got = f"{len(parts)} values" if isinstance(parts, (list, tuple)) else type(parts).__name__
        name = getattr(control_variate_from_function, "__name__", "control_variate_from_function")
        raise TypeError(
            f"{fn}: {name}(function) must return three functions (control_variate, "
            f"expected_value, update_state), as control_delta_method does; got {got}."
        )
    return parts


# A stream for the coefficients' samples that no estimator derives from ``rng`` itself. optax
# used ``split(rng)[0]``, which, with JAX's partitionable threefry, equals ``fold_in(rng, 0)``:
# the first key an estimator splits off for its own samples, correlating the coefficient with
# the estimate it scales (a bias visible with the measure-valued estimator).
_COEFF_STREAM = 0x6F707478

_FUSABLE = (score_function_jacobians, pathwise_jacobians, measure_valued_jacobians)


def control_variates_jacobians(
    function: Callable[[jax.Array], float],
    control_variate_from_function: Callable[[Callable[[jax.Array], float]], ControlVariate],
    grad_estimator: Callable[..., Params],
    params: Params,
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
    control_variate_state: CvState = None,
    estimate_cv_coeffs: bool = False,
    estimate_cv_coeffs_num_samples: int = 20,
) -> tuple[Params, CvState]:
    r"""Per-sample gradient estimates with a control variate ``h``.

    .. math::

        \nabla_\theta \mathbb{E}_p f
        = \underbrace{\nabla_\theta \mathbb{E}_p [f(x) - c\,h(x; \bar\theta)]}_{\text{estimator}}
          - c\,\mathbb{E}_p[\nabla_\theta h(x; \theta)]
          + c\,\nabla_\theta \mathbb{E}_p[h(x; \theta)],

    with ``θ̄`` held fixed in the first term, the second averaged over the same samples and
    the third from ``h``'s closed-form expectation. ``c = 1`` per parameter, or estimated
    with :func:`estimate_control_variate_coefficients` on fresh samples.

    Args:
      function: ``f(x)`` for one sample ``x``, returning a scalar.
      control_variate_from_function: e.g. :func:`control_delta_method` or
        :func:`moving_avg_baseline` (or a partial of it); called with ``function``.
      grad_estimator: e.g. :func:`score_function_jacobians`, :func:`pathwise_jacobians` or
        :func:`measure_valued_jacobians`.
      params: a list of arrays, e.g. ``[mean, log_scale]``.
      dist_builder: e.g. :func:`multi_normal`.
      rng: a ``jax.random`` key.
      num_samples: the number of samples ``N``.
      control_variate_state: the control variate's state (``(jnp.array(0.), 0)`` for a
        moving average; ``None`` for the delta method).
      estimate_cv_coeffs: whether to estimate the coefficients ``c``.
      estimate_cv_coeffs_num_samples: samples used to estimate them.

    Returns:
      ``(jacobians, new_state)``: a list like ``params`` with elements of shape
      ``(num_samples, *param.shape)``, and the control variate's state updated once with
      this call's samples.

    Unlike optax, ``h`` is evaluated with the state passed in, not the updated one: a
    moving-average baseline that has already seen the current samples biases the estimate.
    With the default ``c = 1`` and one of this module's estimators, ``f − h`` goes through the
    estimator in a single pass.

    Native API: attach the control variate to the estimator, e.g.
    ``expectax.ScoreFunction(control_variate=DeltaMethod())``.
    """
    fn = "control_variates_jacobians"
    if not isinstance(params, (list, tuple)):
        raise TypeError(
            f"{fn}: params must be a list (or tuple) of arrays passed positionally to "
            f"dist_builder, e.g. params=[mean, log_scale]; got {type(params).__name__}."
        )
    num_samples = _check_inputs(function, params, dist_builder, rng, num_samples, fn)
    stochastic_cv, expected_value_cv, update_state_cv = _control_variate(
        control_variate_from_function, function, fn
    )
    if estimate_cv_coeffs:
        cv_coeffs = estimate_control_variate_coefficients(
            function,
            control_variate_from_function,
            grad_estimator,
            params,
            dist_builder,
            rng,
            estimate_cv_coeffs_num_samples,
            control_variate_state,
        )
    else:
        cv_coeffs = [1.0] * len(params)

    samples = jax.lax.stop_gradient(_draw(dist_builder, params, rng, num_samples, fn))
    new_state = update_state_cv(params, samples, control_variate_state)
    state = control_variate_state
    fixed = jax.lax.stop_gradient(params)

    def cv_of_sample(x: jax.Array) -> jax.Array:
        return stochastic_cv(fixed, x, state)

    if not estimate_cv_coeffs and grad_estimator in _FUSABLE:
        # The estimators are linear in f: one pass through the estimator for f − h.
        diff_jacobians = grad_estimator(
            lambda x: function(x) - cv_of_sample(x), params, dist_builder, rng, num_samples
        )
        cv_jacobians = None
    else:
        diff_jacobians = grad_estimator(function, params, dist_builder, rng, num_samples)
        cv_jacobians = grad_estimator(cv_of_sample, params, dist_builder, rng, num_samples)

    def mean_cv(p: Params) -> jax.Array:
        return jnp.mean(jax.vmap(lambda x: stochastic_cv(p, x, state))(samples))

    cv_param_grads = jax.grad(mean_cv)(params)
    expected_value_grads = jax.grad(lambda p: expected_value_cv(p, state))(params)

    jacobians = []
    for k, param in enumerate(params):
        jac = diff_jacobians[k]
        coeff = cv_coeffs[k]
        if cv_jacobians is not None:
            jac = jac - coeff * cv_jacobians[k]
        jac = jac + coeff * (expected_value_grads[k] - cv_param_grads[k])
        expected_shape = (num_samples, *jnp.shape(param))
        if jac.shape != expected_shape:
            raise ValueError(
                f"{fn}: the Jacobian for params[{k}] has shape {jac.shape}, expected "
                f"{expected_shape}. Check that grad_estimator returns one "
                "(num_samples, *param.shape) array per parameter."
            )
        jacobians.append(jac)
    if isinstance(params, tuple):
        jacobians = tuple(jacobians)
    return jacobians, new_state


def estimate_control_variate_coefficients(
    function: Callable[[jax.Array], float],
    control_variate_from_function: Callable[[Callable[[jax.Array], float]], ControlVariate],
    grad_estimator: Callable[..., Params],
    params: Params,
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
    control_variate_state: CvState = None,
    eps: float = 1e-3,
) -> list[jax.Array]:
    r"""Variance-minimising control-variate coefficients, one scalar per parameter.

    .. math::

        c_k = \frac{\sum_j \operatorname{Cov}(J^f_{kj}, J^h_{kj})}
                   {\sum_j \operatorname{Var}(J^h_{kj}) + \epsilon},

    from the Jacobians of ``f`` and of the control variate ``h`` on the same fresh samples,
    drawn with a key folded from ``rng`` that no estimator uses for the main estimate, so the
    coefficient is independent of the samples it is applied to (optax's ``split(rng)[0]`` is
    not, under JAX's partitionable PRNG). The state is not updated.

    Args:
      function, control_variate_from_function, grad_estimator, params, dist_builder, rng,
        num_samples, control_variate_state: as in :func:`control_variates_jacobians`.
      eps: added to the denominator for numerical safety.

    Returns:
      A list with one scalar coefficient per element of ``params`` (no gradient flows
      through them).
    """
    cv_rng = jax.random.fold_in(rng, _COEFF_STREAM)
    stochastic_cv, _, _ = _control_variate(
        control_variate_from_function, function, "estimate_control_variate_coefficients"
    )
    cv_jacobians = grad_estimator(
        lambda x: stochastic_cv(params, x, control_variate_state),
        params,
        dist_builder,
        cv_rng,
        num_samples,
    )
    f_jacobians = grad_estimator(function, params, dist_builder, cv_rng, num_samples)

    def coeff(jac_h: jax.Array, jac_f: jax.Array) -> jax.Array:
        jac_h = jac_h.reshape(jac_h.shape[0], -1)
        jac_f = jac_f.reshape(jac_f.shape[0], -1)
        cov = jnp.mean((jac_f - jac_f.mean(0)) * (jac_h - jac_h.mean(0)), axis=0)
        return jax.lax.stop_gradient(jnp.sum(cov) / (jnp.sum(jnp.var(jac_h, axis=0)) + eps))

    return [coeff(cv_jacobians[k], f_jacobians[k]) for k in range(len(params))]
