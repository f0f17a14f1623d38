r"""Continuous relaxations of discrete samples: Gumbel-softmax / Concrete and straight-through.

Relaxed estimators replace a discrete sample by a differentiable function of the distribution's
logits and some noise, and differentiate through it (a pathwise estimator of a *different*
expectation). They are biased by design: the bias shrinks as the temperature falls, while the
variance grows. f must accept the relaxed values: a number in (0, 1) for a Bernoulli, a vector
on the simplex (trailing axis K) for a Categorical.

This module also holds the small helpers the discrete estimators share: reading the logits of a
Bernoulli or Categorical distribution in the shape a batch of ``N`` samples needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from expectax.estimators.base import Context, Estimator, pytree_dataclass, static_field

__all__ = [
    "GumbelSoftmax",
    "StraightThrough",
    "binary_concrete",
    "gumbel_softmax",
    "temperature_schedule",
]


# --------------------------------------------------------------------------- shared helpers


def _unwrap(d: Any) -> Any:
    """Strip ``Independent`` / ``ExpandedDistribution`` wrappers (they only reshape)."""
    while isinstance(d, (dist.Independent, dist.ExpandedDistribution)):
        d = d.base_dist
    return d


def _is_bernoulli(d: Any) -> bool:
    return isinstance(_unwrap(d), (dist.BernoulliLogits, dist.BernoulliProbs))


def _is_categorical(d: Any) -> bool:
    return isinstance(_unwrap(d), (dist.CategoricalLogits, dist.CategoricalProbs))


@jax.custom_jvp
def _probs_to_logits(probs: jax.Array) -> jax.Array:
    """numpyro's (clamped) logits of ``probs``, with the exact derivative ``1/(p(1 − p))``."""
    return dist.BernoulliProbs(probs).logits


@_probs_to_logits.defjvp
def _probs_to_logits_jvp(primals: tuple, tangents: tuple) -> tuple:
    (probs,), (t,) = primals, tangents
    return _probs_to_logits(probs), t / (probs * (1.0 - probs))


def _float(x: Any) -> jax.Array:
    """Integer parameters (``Bernoulli(probs=1)``) as floats: noise and gradients need them."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _wrong_dist(estimator: str, d: Any, supported: str, alternatives: str) -> ValueError:
    return ValueError(
        f"{estimator} serves {supported} distributions, but dist_fn returned "
        f"{type(d).__name__}. Use {alternatives} instead."
    )


def bernoulli_logits(
    ctx: Context, num_samples: int, estimator: str, alternatives: str, exact: bool = False
) -> Any:
    """Logits of a (batch of independent) Bernoulli, broadcast to ``(N, *shape)``.

    ``shape`` is ``batch_shape + event_shape`` of ``ctx.dist``. When ``ctx.stacked`` the logits
    already carry a leading axis of ``N`` (one copy of θ per sample) and keep it, so row i
    depends on copy i only.

    With ``exact`` (the unbiased estimators) a distribution given by ``probs`` maps them to
    logits with the exact derivative ``1/(p(1 − p))`` instead of numpyro's clamped one (0 at
    0 and 1): at ``p ∈ {0, 1}`` the gradient then comes out non-finite rather than a silent 0
    (no sampling estimator can be right there: the other outcome is never drawn).
    """
    d = ctx.dist
    if not _is_bernoulli(d):
        raise _wrong_dist(estimator, d, "Bernoulli", alternatives)
    shape = tuple(d.batch_shape) + tuple(d.event_shape)
    base = _unwrap(d)
    if exact and isinstance(base, dist.BernoulliProbs):
        logits = _probs_to_logits(_float(base.probs))
    else:
        logits = _float(base.logits)
    return jnp.broadcast_to(logits, (num_samples, *shape))


def categorical_logits(ctx: Context, num_samples: int, estimator: str, alternatives: str) -> Any:
    """Logits of a (batch of independent) Categorical, broadcast to ``(N, *shape, K)``."""
    d = ctx.dist
    if not _is_categorical(d):
        raise _wrong_dist(estimator, d, "Categorical", alternatives)
    shape = tuple(d.batch_shape) + tuple(d.event_shape)
    logits = _float(_unwrap(d).logits)
    logits = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return jnp.broadcast_to(logits, (num_samples, *shape, logits.shape[-1]))


def logistic_noise(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """``L = log u − log(1 − u)`` with ``u ~ U(0, 1)``: the difference of two Gumbels."""
    u = jax.random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
    return jnp.log(u) - jnp.log1p(-u)


def binary_concrete(logits: jax.Array, noise: jax.Array, temperature: Any) -> jax.Array:
    r"""The binary Concrete relaxation ``σ((ℓ + L)/τ)`` of ``Bernoulli(σ(ℓ))``.

    .. math::

        z = \sigma\big((\ell + L)/\tau\big), \qquad L = \log u - \log(1 - u) = G_1 - G_2,

    which is the first coordinate of :func:`gumbel_softmax` with logits ``(ℓ, 0)`` and Gumbel
    noise ``(G_1, G_2)``.

    Args:
      logits: ``ℓ``, any shape.
      noise: logistic noise ``L``, broadcastable with ``logits``.
      temperature: ``τ > 0``.

    Returns:
      ``z`` in (0, 1), the broadcast shape.
    """
    return jax.nn.sigmoid((logits + noise) / temperature)


def gumbel_softmax(logits: jax.Array, gumbel: jax.Array, temperature: Any) -> jax.Array:
    r"""The Gumbel-softmax (Concrete) relaxation ``softmax((ℓ + G)/τ)`` along the last axis.

    Args:
      logits: ``ℓ``, shape ``(..., K)``.
      gumbel: Gumbel noise ``G``, broadcastable with ``logits``.
      temperature: ``τ > 0``.

    Returns:
      A point on the simplex, shape ``(..., K)``.
    """
    return jax.nn.softmax((logits + gumbel) / temperature, axis=-1)


# --------------------------------------------------------------------------- temperature


def temperature_schedule(
    init_value: float = 1.0,
    min_value: float = 0.5,
    decay_rate: float = 1e-4,
) -> Callable[[Any], jax.Array]:
    r"""The exponential annealing of Jang et al. (2017): ``τ_t = max(τ_min, τ_0 exp(−r t))``.

    .. math::

        \tau_t = \max\big(\tau_{\min},\; \tau_0 \, e^{-r t}\big).

    The temperature is an array field of :class:`GumbelSoftmax`, so a new value does not
    recompile a jitted training step.

    Args:
      init_value: ``τ_0`` (> 0).
      min_value: ``τ_min`` (> 0), the floor.
      decay_rate: ``r`` (≥ 0) per step.

    Returns:
      ``schedule(step) -> τ``, a scalar array, usable under ``jit`` (``step`` may be traced).

    Example:
      >>> sched = temperature_schedule(1.0, 0.5, 1e-3)
      >>> est = GumbelSoftmax(temperature=sched(1000))   # τ = max(0.5, e^{-1}) = 0.5

    References:
      Jang, Gu & Poole (2017), "Categorical reparameterization with Gumbel-softmax", ICLR.
    """
    for name, value, low in (("init_value", init_value, 0.0), ("min_value", min_value, 0.0)):
        if not value > low:
            raise ValueError(f"temperature_schedule: {name} must be > 0, got {value!r}.")
    if not decay_rate >= 0:
        raise ValueError(f"temperature_schedule: decay_rate must be ≥ 0, got {decay_rate!r}.")

    def schedule(step: Any) -> jax.Array:
        step = jnp.asarray(step, dtype=jnp.result_type(float))
        return jnp.maximum(min_value, init_value * jnp.exp(-decay_rate * step))

    return schedule


# --------------------------------------------------------------------------- estimators

_RELAXED_ALTERNATIVES = (
    "ex.ScoreFunction() (any distribution), or for a reparameterisable continuous "
    "distribution ex.Pathwise()"
)


def _check_temperature(temperature: Any) -> None:
    """Refuse a non-positive temperature whose value is known (not traced)."""
    if isinstance(temperature, jax.core.Tracer) or not isinstance(
        temperature, (int, float, np.ndarray, np.generic, jax.Array)
    ):
        return  # traced under jit, or a placeholder while JAX rebuilds the pytree
    if isinstance(temperature, bool) or not np.all(np.asarray(temperature) > 0):
        raise ValueError(
            f"GumbelSoftmax: temperature must be > 0, got {temperature!r}; typical values are "
            "0.1 to 1 (lower: less bias, more variance)."
        )


@pytree_dataclass
class GumbelSoftmax(Estimator):
    r"""Gumbel-softmax / Concrete relaxation (biased), and its straight-through variant.

    A Categorical sample with logits ``ℓ`` is ``argmax(ℓ + G)`` with Gumbel noise ``G``; the
    relaxation replaces it by the point on the simplex

    .. math::

        y = \operatorname{softmax}\big((\ell + G)/\tau\big), \qquad
        \nabla_\theta\, \mathbb{E}[f_\theta(y)] \approx
        \frac1N \sum_i \nabla_\theta f_\theta(y_i(\theta)),

    and f receives ``y`` (trailing axis K). For a Bernoulli with logit ``ℓ`` it is the binary
    Concrete ``z = σ((ℓ + L)/τ)`` with logistic noise ``L = log u − log(1 − u)`` (the
    difference of two Gumbels, so it equals the two-class Gumbel-softmax with logits
    ``(ℓ, 0)`` fed the same noise), and f receives ``z ∈ (0, 1)``.

    The estimate is the exact gradient of ``E[f(y)]``, not of ``E[f(x)]`` over the discrete
    ``x``: its bias vanishes as ``τ → 0`` (for f continuous on the simplex) while its variance
    grows like ``1/τ``. The value returned by ``expectation`` is the relaxed mean.

    With ``straight_through=True`` (straight-through Gumbel-softmax) f receives the exact sample
    (the one-hot vector ``onehot(argmax y)`` for a Categorical, ``1[z > ½]`` for a Bernoulli)
    and the gradient is that of the relaxed ``y``: ``y_hard + y − stop_gradient(y)``. Still
    biased, but f sees only valid discrete values.

    Args:
      temperature: ``τ > 0`` (an array field: changing it under ``jit`` does not recompile;
        anneal it with :func:`temperature_schedule`).
      straight_through: use the hard sample in the forward pass.

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> E = ex.expectation(lambda p, z: (z - 0.45) ** 2,
      ...                    lambda p: dist.Bernoulli(logits=p), num_samples=100,
      ...                    estimator=GumbelSoftmax(temperature=0.5))
      >>> g = jax.grad(E)(jnp.array(0.0), jax.random.key(0))

    References:
      Jang, Gu & Poole (2017), "Categorical reparameterization with Gumbel-softmax", ICLR.
      Maddison, Mnih & Teh (2017), "The Concrete distribution: a continuous relaxation of
      discrete random variables", ICLR.
    """

    unbiased = False
    differentiates_f = True

    temperature: Any = 0.5
    straight_through: bool = static_field(default=False)

    def __post_init__(self) -> None:
        _check_temperature(self.temperature)

    @property
    def name(self) -> str:
        """``GumbelSoftmax(τ=…)``, plus ``straight_through`` when set."""
        try:
            parts = [f"τ={float(self.temperature):.3g}"]
        except (TypeError, jax.errors.ConcretizationTypeError):  # traced temperature
            parts = ["τ=traced"]
        if self.straight_through:
            parts.append("straight_through")
        return f"GumbelSoftmax({', '.join(parts)})"

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        name = "GumbelSoftmax"
        _check_temperature(self.temperature)
        if _is_bernoulli(ctx.dist):
            logits = bernoulli_logits(ctx, num_samples, name, _RELAXED_ALTERNATIVES)
            noise = jax.lax.stop_gradient(logistic_noise(key, logits.shape, logits.dtype))
            z = binary_concrete(logits, noise, self.temperature)
            if self.straight_through:
                hard = jax.lax.stop_gradient((logits + noise > 0).astype(z.dtype))
                z = hard + (z - jax.lax.stop_gradient(z))  # exactly `hard` in value
            return ctx.f(z)
        alternatives = (
            "ex.ScoreFunction(), or GumbelSoftmax on a Bernoulli or Categorical distribution"
        )
        logits = categorical_logits(ctx, num_samples, name, alternatives)
        gumbel = jax.lax.stop_gradient(jax.random.gumbel(key, logits.shape, logits.dtype))
        y = gumbel_softmax(logits, gumbel, self.temperature)
        if self.straight_through:
            hard = jax.nn.one_hot(jnp.argmax(logits + gumbel, axis=-1), y.shape[-1], dtype=y.dtype)
            y = jax.lax.stop_gradient(hard) + (y - jax.lax.stop_gradient(y))
        return ctx.f(y)


@pytree_dataclass
class StraightThrough(Estimator):
    r"""The straight-through estimator (biased): exact samples forward, the mean's gradient back.

    .. math::

        \tilde x = x + \mu_\theta - \mathrm{stop\_gradient}(\mu_\theta), \qquad
        \nabla_\theta\, \mathbb{E}[f_\theta(x)] \approx \frac1N \sum_i
        \nabla_\theta f_\theta(\tilde x_i),

    where ``μ_θ = E[x]``: ``σ(ℓ)`` for a Bernoulli (f receives the exact sample in {0, 1}),
    the probability vector for a Categorical (f receives the exact one-hot vector, trailing
    axis K, since a gradient needs a vector). The backward pass treats the sampling step as
    the identity on the mean. Cheap (one evaluation per sample) and low-variance, but biased
    even for linear f on a Categorical with ``K > 2``; it is exact only when f is linear and
    the variable is Bernoulli. For straight-through Gumbel-softmax use
    ``GumbelSoftmax(straight_through=True)``.

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> E = ex.expectation(lambda p, b: (b - 0.45) ** 2,
      ...                    lambda p: dist.Bernoulli(logits=p), num_samples=100,
      ...                    estimator=StraightThrough())
      >>> g = jax.grad(E)(jnp.array(0.0), jax.random.key(0))

    References:
      Bengio, Léonard & Courville (2013), "Estimating or propagating gradients through
      stochastic neurons for conditional computation", arXiv:1308.3432.
    """

    unbiased = False
    differentiates_f = True

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        name = "StraightThrough"
        if _is_bernoulli(ctx.dist):
            logits = bernoulli_logits(ctx, num_samples, name, _RELAXED_ALTERNATIVES)
            mean = jax.nn.sigmoid(logits)
            u = jax.random.uniform(key, logits.shape, logits.dtype)
            hard = jax.lax.stop_gradient((u < mean).astype(mean.dtype))
            return ctx.f(hard + (mean - jax.lax.stop_gradient(mean)))
        alternatives = "ex.ScoreFunction(), or StraightThrough on a Bernoulli or Categorical"
        logits = categorical_logits(ctx, num_samples, name, alternatives)
        probs = jnp.exp(logits)
        idx = jax.random.categorical(key, jax.lax.stop_gradient(logits), axis=-1)
        hard = jax.nn.one_hot(idx, logits.shape[-1], dtype=probs.dtype)
        return ctx.f(jax.lax.stop_gradient(hard) + (probs - jax.lax.stop_gradient(probs)))


def log_prob(ctx: Context, xs: Any) -> jax.Array:
    """``ctx.log_prob(xs)``, but exact in the logits for a Bernoulli, shape ``(N,)``.

    numpyro's ``BernoulliLogits.log_prob`` has a wrong derivative at a logit of exactly 0 (it
    differentiates ``max(ℓ, 0)`` and ``|ℓ|`` separately), so the Bernoulli case is computed
    here as ``b log σ(ℓ) + (1 − b) log σ(−ℓ)``.
    """
    if not _is_bernoulli(ctx.dist):
        return ctx.log_prob(xs)
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    logits = bernoulli_logits(ctx, n, "log_prob", "", exact=True)
    b = jnp.asarray(xs, logits.dtype)
    lp = b * jax.nn.log_sigmoid(logits) + (1.0 - b) * jax.nn.log_sigmoid(-logits)
    return lp.reshape(n, -1).sum(axis=1)
