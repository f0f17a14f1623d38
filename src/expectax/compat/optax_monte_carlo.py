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
shapes: ``params`` is a positional list such as ``[mean, log_scale]``, ``dist_builder(*params)``
builds the distribution, ``function(x)`` takes one sample, and a Jacobian function returns a
list with one ``(num_samples, *param.shape)`` array per parameter, whose mean over the first
axis is the gradient estimate of :math:`\nabla_\theta \mathbb{E}_{p(x;\theta)} f(x)`.

Underneath, the Jacobians come from :func:`expectax.per_sample_grads` with
:class:`expectax.ScoreFunction`, :class:`expectax.Pathwise` and
:class:`expectax.MeasureValued`: one backward pass for all samples, where optax ran one
forward-mode pass per parameter element (``jax.jacfwd``). With :func:`multi_normal` the samples
are bit-for-bit those optax drew for the same key.

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
- Builders other than :func:`multi_normal` are sampled one draw per split key (optax drew all
  samples from one key); the estimates have the same distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.stats import norm

from expectax.estimators.base import Estimator
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
        sample_shape = tuple(shape) + self._param_shape
        dtype = jnp.result_type(float, self._mean, self._log_scale)
        eps = jax.random.normal(key, shape=sample_shape, dtype=dtype)
        return eps * jnp.exp(self._log_scale) + self._mean

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


@jax.tree_util.register_pytree_node_class
class _BuilderDistribution:
    """Adapts an optax-style builder to expectax's distribution protocol.

    ``builder(*params)`` must return an object with ``sample(shape, key=...)`` and
    ``log_prob(x)``. ``per_sample_grads`` vmaps the construction over one copy of ``params`` per
    sample; the copies are recognised by their extra leading axis, and sample ``i`` is then
    drawn from (and scored under) copy ``i``. Each sample gets its own split key so that both
    cases draw the same samples.
    """

    has_rsample = True

    def __init__(self, params: Params, builder: Callable[..., Any], ndims: Any = None):
        self.params = params
        self.builder = builder
        if ndims is None:
            ndims = tuple(jnp.ndim(leaf) for leaf in jax.tree_util.tree_leaves(params))
        self.ndims = ndims

    def tree_flatten(self) -> tuple[tuple[Any], tuple[Any, Any]]:
        return (self.params,), (self.builder, self.ndims)

    @classmethod
    def tree_unflatten(cls, aux: tuple[Any, Any], children: Sequence[Any]) -> _BuilderDistribution:
        obj = object.__new__(cls)
        obj.params = children[0]
        obj.builder, obj.ndims = aux
        return obj

    @property
    def _stacked(self) -> bool:
        leaves = jax.tree_util.tree_leaves(self.params)
        return any(jnp.ndim(leaf) > n for leaf, n in zip(leaves, self.ndims, strict=True))

    def _one(self, params: Params) -> Any:
        return self.builder(*params)

    def sample(self, key: jax.Array, sample_shape: tuple[int, ...] = ()) -> jax.Array:
        (n,) = sample_shape
        keys = jax.random.split(key, n)
        if self._stacked:
            return jax.vmap(lambda p, k: self._one(p).sample((), key=k))(self.params, keys)
        return jax.vmap(lambda k: self._one(self.params).sample((), key=k))(keys)

    rsample = sample

    def log_prob(self, xs: jax.Array) -> jax.Array:
        if self._stacked:
            return jax.vmap(lambda p, x: self._one(p).log_prob(x))(self.params, xs)
        return jax.vmap(lambda x: self._one(self.params).log_prob(x))(xs)


def _dist_fn(dist_builder: Callable[..., Any]) -> Callable[[Params], Any]:
    if _is_multi_normal(dist_builder):
        return lambda params: _gaussian(*params)
    return lambda params: _BuilderDistribution(params, dist_builder)


def _check_params(params: Any, fn: str) -> None:
    if not isinstance(params, (list, tuple)):
        raise TypeError(
            f"{fn}: params must be a list (or tuple) of arrays passed positionally to "
            f"dist_builder, e.g. params=[mean, log_scale]; got {type(params).__name__}. For "
            "dicts or other pytrees use the native API, expectax.per_sample_grads."
        )


def _check_builder(dist_builder: Any, fn: str) -> None:
    if not callable(dist_builder):
        raise TypeError(
            f"{fn}: dist_builder must be a function building a distribution from the "
            f"parameters, e.g. multi_normal; got {type(dist_builder).__name__}."
        )


def _draw(dist_builder: Callable[..., Any], params: Params, rng: jax.Array, n: int) -> jax.Array:
    """The samples the Jacobian functions draw for ``rng``."""
    return _dist_fn(dist_builder)(params).sample(rng, (n,))


def _jacobians(
    estimator: Estimator,
    fn: str,
    function: Callable[[jax.Array], Any],
    params: Params,
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
) -> Params:
    _check_params(params, fn)
    _check_builder(dist_builder, fn)
    grads = per_sample_grads(
        lambda _, x: function(x),
        _dist_fn(dist_builder),
        params,
        rng,
        estimator=estimator,
        num_samples=num_samples,
    )
    return type(params)(grads) if isinstance(params, tuple) else list(grads)


# --------------------------------------------------------------------------- estimators


def score_function_jacobians(
    function: Callable[[jax.Array], float],
    params: Params,
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
) -> Params:
    r"""Per-sample score-function (REINFORCE) gradient estimates.

    .. math::

        \nabla_\theta \mathbb{E}_{p(x;\theta)} f(x)
        = \mathbb{E}_{p(x;\theta)}\big[f(x)\, \nabla_\theta \log p(x;\theta)\big],
        \qquad J_i = f(x_i)\, \nabla_\theta \log p(x_i;\theta).

    Needs ``log p`` differentiable in θ; ``f`` may be anything (discrete ``x`` too).

    Args:
      function: ``f(x)`` for one sample ``x``, returning a scalar; must not depend on θ.
      params: a list of arrays, passed positionally: ``dist_builder(*params)``.
      dist_builder: builds the distribution, e.g. :func:`multi_normal`; its result needs
        ``sample(shape, key=...)`` and ``log_prob(x)``.
      rng: a ``jax.random`` key.
      num_samples: the number of samples ``N``.

    Returns:
      A list like ``params``; element ``k`` has shape ``(num_samples, *params[k].shape)`` and
      holds one gradient estimate per sample. Its mean over axis 0 is the gradient estimate;
      the spread shows the estimator's variance.

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
        ScoreFunction(),
        "score_function_jacobians",
        function,
        params,
        dist_builder,
        rng,
        num_samples,
    )


def pathwise_jacobians(
    function: Callable[[jax.Array], float],
    params: Params,
    dist_builder: Callable[..., Any],
    rng: jax.Array,
    num_samples: int,
) -> Params:
    r"""Per-sample pathwise (reparameterisation) gradient estimates.

    .. math::

        \nabla_\theta \mathbb{E}_{p(x;\theta)} f(x)
        = \mathbb{E}_{p(\epsilon)}\big[\nabla_\theta f(g(\epsilon, \theta))\big],
        \qquad J_i = \nabla_\theta f(g(\epsilon_i, \theta)).

    Needs ``f`` differentiable and a sampler differentiable in θ (``multi_normal``:
    ``x = mean + exp(log_scale) ε``).

    Args:
      function: ``f(x)`` for one sample ``x``, returning a scalar; must not depend on θ.
      params: a list of arrays, passed positionally: ``dist_builder(*params)``.
      dist_builder: builds the distribution, e.g. :func:`multi_normal`.
      rng: a ``jax.random`` key.
      num_samples: the number of samples ``N``.

    Returns:
      A list like ``params``; element ``k`` has shape ``(num_samples, *params[k].shape)``.

    One reverse-mode pass computes all ``N`` per-sample gradients (θ is copied per sample);
    optax used ``jax.jacfwd``, one forward pass per parameter element.

    Native API: ``expectax.per_sample_grads(..., estimator=expectax.Pathwise())`` or
    ``jax.grad(expectax.expectation(f, dist_fn, estimator=expectax.Pathwise(), ...))``, which
    also includes ``∇θ f`` when ``f(params, x)`` depends on θ, and works with any
    reparameterisable numpyro distribution (Gamma, Beta and Dirichlet too).

    References:
      Kingma & Welling (2014), "Auto-encoding variational Bayes". Mohamed et al. (2020),
      JMLR 21(132), section 5.
    """
    return _jacobians(
        Pathwise(), "pathwise_jacobians", function, params, dist_builder, rng, num_samples
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
    _check_params(params, fn)
    if len(params) != 2:
        raise ValueError(
            f"{fn}: params must be [mean, log_scale] (two arrays) for multi_normal; got "
            f"{len(params)} arrays."
        )
    try:
        from expectax.estimators.measure_valued import MeasureValued
    except ImportError as err:  # pragma: no cover - only while the estimator is missing
        raise NotImplementedError(
            "measure_valued_jacobians needs expectax.estimators.measure_valued.MeasureValued, "
            "which this installation lacks."
        ) from err
    return _jacobians(
        MeasureValued(coupling=coupling), fn, function, params, dist_builder, rng, num_samples
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
        mean = params[0]
        value, grad, hess = taylor(mean)
        centred = sample - mean
        return value + centred @ grad + 0.5 * (centred @ hess @ centred)

    def expected_value_delta(params: Params, state: CvState) -> jax.Array:
        del state
        mean, log_scale = params[0], params[1]
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
        return state[0]

    def expected_value_moving_avg(params: Params, state: CvState) -> jax.Array:
        del params
        return state[0]

    def update_state(params: Params, samples: jax.Array, state: CvState = None) -> CvState:
        del params
        value, i = state
        if use_decay_early_training_heuristic:
            step_decay = jnp.minimum(decay, (1.0 + i) / (10.0 + i))
        else:
            step_decay = jnp.asarray(decay)
        new = step_decay * value + (1.0 - step_decay) * jnp.mean(jax.vmap(function)(samples))
        if zero_debias:
            new = new / (1.0 - step_decay ** (i + 1))
        return jax.lax.stop_gradient(new), i + 1

    return moving_avg, expected_value_moving_avg, update_state


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
    _check_params(params, fn)
    _check_builder(dist_builder, fn)
    stochastic_cv, expected_value_cv, update_state_cv = control_variate_from_function(function)
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

    samples = jax.lax.stop_gradient(_draw(dist_builder, params, rng, num_samples))
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
    stochastic_cv, _, _ = control_variate_from_function(function)
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
