r"""Baselines for the score-function estimator: subtract ``b`` from f without adding bias.

.. math::

    \hat g = \frac1N \sum_{i=1}^N (f(x_i) - b_i)\,\nabla_\theta \log p_\theta(x_i)
             + \nabla_\theta f_\theta(x_i),
    \qquad \mathbb{E}[b_i \nabla_\theta \log p_\theta(x_i)] = 0
    \ \text{ when } b_i \text{ is independent of } x_i.

Pass one as ``ScoreFunction(baseline=...)``. The surrogate carries the baseline term of Mao et
al. (2019), ``(1 − magic(log p(x_i))) · b_i``, so every higher derivative (``jax.hessian``)
stays unbiased too, not only the gradient.

==================  ==============================================================
``Constant(c)``     a fixed number (e.g. a known average reward)
``MovingAverage``   exponential moving average of past batches (state explicit)
``LeaveOneOut()``   RLOO: the mean of the *other* samples of the batch (N ≥ 2)
``Optimal()``       variance-optimal per parameter, from an independent batch
``WeightedLeaveOneOut()``  the optimal baseline estimated from the *other* samples, with
                    the score norm's expectation known exactly (the programs' and ELBOs'
                    default for discrete sites)
==================  ==============================================================

References:
  Williams (1992). Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE samples, get a baseline
  for free!". Mao et al. (2019), "A baseline for any order gradient estimation in stochastic
  computation graphs". Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient
  estimation in machine learning", JMLR 21(132), section 7.4 (eq. 65, the optimal baseline).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from expectax.control_variates import float_leaves, unstacked
from expectax.estimators.base import Context, joint_log_prob, pytree_dataclass, static_field
from expectax.estimators.score_function import PerParameter

__all__ = [
    "Baseline",
    "Constant",
    "DecayingAverage",
    "LeaveOneOut",
    "MovingAverage",
    "MovingAverageState",
    "Optimal",
    "WeightedLeaveOneOut",
    "natural_score_weights",
    "others_sum",
    "weighted_loo",
]


class Baseline:
    """Base class of expectax's baselines (the hook :class:`ScoreFunction` calls).

    ``__call__(f_values, *, ctx, xs, key, cost_fn)`` returns ``b`` broadcastable to ``(N,)``
    (or a :class:`~expectax.estimators.score_function.PerParameter`); ``f_values`` are
    stop-gradient'd costs ``(N,)``, ``key`` is independent of the samples ``xs``.
    """

    takes_key = True
    requires_independent_samples = False

    @property
    def name(self) -> str:
        """A short label for tables and estimator names."""
        return f"{type(self).__name__}()"

    def min_samples(self) -> int:
        """The smallest batch the baseline works with."""
        return 1

    def extra_evaluations(self, num_samples: int) -> int:
        """Evaluations of f the baseline makes beyond the estimate's own."""
        return 0

    def __call__(
        self,
        f_values: jax.Array,
        *,
        ctx: Context,
        xs: Any,
        key: jax.Array,
        cost_fn: Callable | None = None,
    ) -> Any:
        raise NotImplementedError


@pytree_dataclass
class Constant(Baseline):
    r"""A constant baseline ``b``.

    .. math::

        \hat g = \frac1N \sum_i (f(x_i) - c)\,\nabla_\theta \log p_\theta(x_i).

    Args:
      c: the baseline value (a float or scalar array; traced under ``jit``).

    Example:
      >>> est = ex.ScoreFunction(baseline=Constant(10.0))

    References:
      Williams (1992), "Simple statistical gradient-following algorithms for connectionist
      reinforcement learning".
    """

    c: Any = 0.0

    def __call__(self, f_values, *, ctx=None, xs=None, key=None, cost_fn=None) -> jax.Array:
        c = jnp.asarray(self.c, f_values.dtype)
        if c.shape != ():
            raise ValueError(f"Constant(c): c must be a scalar, got shape {c.shape}.")
        return c


def _check_decay(owner: str, d: Any) -> None:
    """A decaying average's rate: a real number in [0, 1) (NumPy scalars too; not a string,
    a bool or NaN)."""
    if isinstance(d, bool) or not isinstance(d, numbers.Real) or not 0 <= d < 1:
        raise ValueError(
            f"{owner}: decay must be a float in [0, 1) (the decaying average's rate, e.g. "
            f"0.9), got {d!r}."
        )


class MovingAverageState(NamedTuple):
    """State of :class:`MovingAverage`: the number of updates and the raw (biased) average."""

    count: jax.Array  # int32 scalar
    mean: jax.Array  # float scalar, zero-initialised


@pytree_dataclass
class MovingAverage(Baseline):
    r"""An exponential moving average of past batches' mean f, with zero-debiasing.

    .. math::

        m_t = \delta\, m_{t-1} + (1 - \delta)\, \bar f_t, \qquad
        b_t = \frac{m_{t-1}}{1 - \delta^{t-1}} \quad (b_1 = 0),

    where ``\bar f_t`` is batch t's mean of f. The baseline of batch t uses only *earlier*
    batches (the old state), so it is independent of batch t's samples and the gradient stays
    unbiased. The state is explicit (optax style): ``init`` makes it, ``update`` returns the
    baseline of the old state and the new state, and the estimator carries it as a pytree
    leaf, so the whole loop jits::

        ma = MovingAverage(0.9)
        state = ma.init()

        @jax.jit
        def step(params, state, key):
            est = ex.ScoreFunction(baseline=ma.with_state(state))
            E = ex.expectation(f, dist_fn, estimator=est, num_samples=32)
            value, grads = jax.value_and_grad(E)(params, key)   # value = mean of f
            _, state = ma.update(state, value)
            return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads), state

    (With a control variate the estimate's value is no longer the mean of f; pass the mean of
    f, or of ``f − βh``, to ``update`` yourself.)

    Args:
      decay: ``δ`` in ``[0, 1)``.
      state: a :class:`MovingAverageState` (``None`` only to call ``init``/``update``).

    References:
      Williams (1992). Kingma & Ba (2015), "Adam" (zero-debiasing). Mao et al. (2019).
    """

    decay: float = static_field(default=0.9)
    state: MovingAverageState | None = None

    def __post_init__(self) -> None:
        _check_decay("MovingAverage", self.decay)

    def init(self) -> MovingAverageState:
        """A fresh state (its baseline is 0)."""
        return MovingAverageState(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))

    def value(self, state: MovingAverageState) -> jax.Array:
        """The zero-debiased average held by ``state`` (0 before the first update)."""
        count = jnp.asarray(state.count)
        correction = 1.0 - jnp.asarray(self.decay, jnp.float32) ** count
        safe = jnp.where(count > 0, correction, 1.0)
        return jnp.where(count > 0, state.mean / safe, 0.0)

    def update(
        self, state: MovingAverageState, f_values: jax.Array
    ) -> tuple[jax.Array, MovingAverageState]:
        """Fold one batch into the average.

        Args:
          state: the current state.
          f_values: this batch's values of f, shape ``(N,)``, or their mean (a scalar).

        Returns:
          ``(b, new_state)`` where ``b`` is the baseline of the *old* state (what this batch
          used) and ``new_state`` includes this batch.
        """
        mean_f = jax.lax.stop_gradient(jnp.mean(jnp.asarray(f_values, jnp.float32)))
        b = self.value(state)
        new_mean = self.decay * state.mean + (1.0 - self.decay) * mean_f
        return b, MovingAverageState(state.count + 1, new_mean)

    def with_state(self, state: MovingAverageState) -> MovingAverage:
        """The same baseline holding ``state`` (to pass as ``ScoreFunction(baseline=...)``)."""
        return MovingAverage(self.decay, state)

    def advance(self, f_values: jax.Array) -> MovingAverage:
        """This baseline with its state updated by ``f_values`` (a batch, or its mean)."""
        if self.state is None:
            raise ValueError(_NO_STATE)
        return self.with_state(self.update(self.state, f_values)[1])

    def __call__(self, f_values, *, ctx=None, xs=None, key=None, cost_fn=None) -> jax.Array:
        if self.state is None:
            raise ValueError(_NO_STATE)
        return self.value(self.state).astype(f_values.dtype)


_NO_STATE = (
    "MovingAverage has no state. Create one with ma = MovingAverage(0.9); state = ma.init(), "
    "pass ScoreFunction(baseline=ma.with_state(state)), and after each step "
    "_, state = ma.update(state, mean_f)."
)


@pytree_dataclass
class DecayingAverage(Baseline):
    r"""Pyro's decaying-average baseline, for a site of an ``expectax.infer`` ELBO in SVI.

    .. math::

        b_t = m_{t-1}, \qquad m_t = \beta\, m_{t-1} + (1 - \beta)\, \bar D_t, \qquad m_0 = 0,

    per site and plate element, with :math:`\bar D_t` step t's mean downstream cost over the
    particles: Pyro's decaying average (zero-initialised, not debiased, the average alone),
    by default updated once per step. Step t's baseline holds earlier steps only, so the
    gradient stays unbiased. With ``every_particle=True`` the average takes in the particles
    one by one, as Pyro's does with its particles not vectorised (its default): particle j's
    baseline is the average after particles 0 … j−1 of the same step (never its own draw, so
    still unbiased), and the average forgets K times faster per step. On every model of the
    ELBO gallery that makes it train as Pyro's does, where the once-per-step average differs
    from Pyro on two of them (docs/elbo-gallery.md, "Pyro's average in Pyro's order"). The
    average lives in numpyro's mutable state, so the guide must be wrapped with
    :func:`expectax.infer.with_baselines`; Pyro's
    ``infer={"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": β}}`` means
    ``DecayingAverage(β, every_particle=True)`` (Pyro's order; the same at one particle). For
    one expectation with an explicit state use :class:`MovingAverage`.

    It is not the default: on the ELBO gallery's held-out mixtures it trains as Pyro does, but
    on the Dirichlet-process mixture it ends 407 ± 35 nats behind numpyro's estimator, 514 ± 44
    with ``every_particle=True`` (docs/elbo-gallery.md, "Pyro's simplex parameterisation" and
    "Pyro's average in Pyro's order, on every model").

    Args:
      decay: ``β`` in ``[0, 1)`` (Pyro's ``baseline_beta``; 0.9 there too).
      every_particle: update after every particle in turn (Pyro's order) instead of once per
        step with the particles' mean.

    Example:
      >>> est = ex.ScoreFunction(baseline=DecayingAverage(0.9))  # in an ELBO's estimators

    References:
      Pyro's ``TraceGraph_ELBO`` (Bingham et al., 2019). Williams (1992).
    """

    decay: float = static_field(default=0.9)
    every_particle: bool = static_field(default=False)

    def __post_init__(self) -> None:
        _check_decay("DecayingAverage", self.decay)
        if not isinstance(self.every_particle, bool):
            raise ValueError(
                "DecayingAverage: every_particle must be True (Pyro's order: after every "
                f"particle) or False (once per step), got {self.every_particle!r}."
            )

    def __call__(self, f_values, *, ctx=None, xs=None, key=None, cost_fn=None) -> jax.Array:
        raise ValueError(
            "DecayingAverage keeps its average in numpyro's mutable state through SVI: use it "
            "at a site of an expectax.infer ELBO whose guide is wrapped with "
            "expectax.infer.with_baselines. For one expectation use MovingAverage (explicit "
            "state)."
        )


@pytree_dataclass
class LeaveOneOut(Baseline):
    r"""The leave-one-out baseline (RLOO): each sample's baseline is the mean of the others.

    .. math::

        b_i = \frac{1}{N-1} \sum_{j \ne i} f(x_j), \qquad
        \hat g = \frac{1}{N} \sum_i (f(x_i) - b_i)\, \nabla_\theta \log p_\theta(x_i).

    Unbiased because the samples are independent; it needs ``num_samples ≥ 2`` and i.i.d.
    sampling (not ``antithetic``/``qmc``).

    Example:
      >>> est = ex.ScoreFunction(baseline=LeaveOneOut())

    References:
      Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE samples, get a baseline for free!".
    """

    requires_independent_samples = True

    def min_samples(self) -> int:
        return 2

    def __call__(self, f_values, *, ctx=None, xs=None, key=None, cost_fn=None) -> jax.Array:
        n = f_values.shape[0]
        if n < 2:
            raise ValueError(
                f"LeaveOneOut needs at least 2 samples per estimate (each sample's baseline is "
                f"the mean of the others); got num_samples={n}. Use num_samples >= 2."
            )
        return (jnp.sum(f_values) - f_values) / (n - 1)


@pytree_dataclass
class Optimal(Baseline):
    r"""The variance-optimal baseline, one value per parameter, fitted on an independent batch.

    .. math::

        b^\star_d = \frac{\mathbb{E}\big[f(x)\, (\partial_d \log p_\theta(x))^2\big]}
                         {\mathbb{E}\big[(\partial_d \log p_\theta(x))^2\big]}
        \approx \frac{\sum_{j} f(x'_j)\, s_{jd}^2}{\sum_j s_{jd}^2},
        \qquad x'_j \sim p_\theta \text{ independent of the estimate's samples},

    minimises the variance of coordinate d of ``(f(x) − b_d) ∂_d log p``. The coordinates d are
    the parameters of the *distribution* (its pytree leaves, e.g. ``loc`` and ``scale``), which
    are θ when ``dist_fn`` passes θ straight through. Because ``b`` comes from a separate batch
    it is independent of the samples: the gradient and all higher derivatives stay unbiased.
    Costs ``num_samples`` extra evaluations of f and of ``∇ log p``.

    Args:
      num_samples: the size of the independent batch (default: the estimate's).

    Example:
      >>> est = ex.ScoreFunction(baseline=Optimal())

    References:
      Mohamed et al. (2020), JMLR 21(132), eq. (65). Greensmith, Bartlett & Baxter (2004),
      "Variance reduction techniques for gradient estimates in reinforcement learning".
    """

    num_samples: int | None = static_field(default=None)

    def __post_init__(self) -> None:
        m = self.num_samples
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise ValueError(f"Optimal: num_samples must be a positive int or None, got {m!r}.")

    def extra_evaluations(self, num_samples: int) -> int:
        return num_samples if self.num_samples is None else self.num_samples

    def __call__(self, f_values, *, ctx, xs=None, key, cost_fn=None) -> PerParameter:
        if ctx is None or ctx.dist is None:
            raise TypeError("Optimal needs the distribution p_θ (pass dist_fn).")
        ctx0 = unstacked(ctx)
        m = f_values.shape[0] if self.num_samples is None else self.num_samples
        ys = jax.lax.stop_gradient(ctx0.dist.sample(key, (m,)))
        cost = ctx0.f(ys) if cost_fn is None else cost_fn(ys, ctx0)
        cost = jax.lax.stop_gradient(cost)
        leaves, treedef, mask = float_leaves(ctx0.dist)
        idx = [i for i, is_f in enumerate(mask) if is_f]

        def log_p(float_part: list[jax.Array], y: Any) -> jax.Array:
            new = list(leaves)
            for i, leaf in zip(idx, float_part, strict=True):
                new[i] = leaf
            dist = jax.tree_util.tree_unflatten(treedef, new)
            return joint_log_prob(dist, y, sample_ndim=0)

        scores = jax.vmap(jax.grad(log_p), in_axes=(None, 0))([leaves[i] for i in idx], ys)
        scales: list[Any] = [None] * len(leaves)
        for i, s in zip(idx, scores, strict=True):
            s2 = s**2
            wshape = (m,) + (1,) * (s2.ndim - 1)
            num = jnp.sum(cost.reshape(wshape) * s2, axis=0)
            den = jnp.sum(s2, axis=0)
            scales[i] = jax.lax.stop_gradient(
                jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)
            )
        return PerParameter(scales)


def natural_score_weights(dist: Any, x: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    r"""``(w, F)``: the squared score in the natural parameters and its exact expectation.

    .. math::

        w(x) = \big\lVert \nabla_\eta \log p_\eta(x) \big\rVert^2, \qquad
        F = \mathbb{E}_{p_\eta}[w(x)] = \operatorname{tr} \mathcal I(\eta),

    with ``η`` the logits of a Bernoulli (``w = (x − p)²``, ``F = p(1 − p)``) or of a Categorical
    (``w = ‖e_x − p‖²``, ``F = 1 − Σ p_k²``), or the log-rate of a Poisson
    (``w = (x − λ)²``, ``F = λ``). Both have the distribution's batch shape (event dimensions
    summed). ``None`` for any other distribution.
    """
    import numpyro.distributions as nd

    from expectax.estimators.relaxed import _unwrap

    base = _unwrap(dist)  # Independent/Expanded peeled off; Independent adds event dims
    reinterpreted = len(dist.event_shape) - len(base.event_shape)
    batch = tuple(dist.batch_shape)
    x = jnp.asarray(x)
    if isinstance(base, (nd.BernoulliProbs, nd.BernoulliLogits)):
        p = base.probs
        w, fisher = (x - p) ** 2, p * (1 - p)
    elif isinstance(base, (nd.CategoricalProbs, nd.CategoricalLogits)):
        p = base.probs
        px = jnp.take_along_axis(
            jnp.broadcast_to(p, x.shape + p.shape[-1:]), x[..., None].astype(jnp.int32), axis=-1
        )[..., 0]
        sq = jnp.sum(p**2, axis=-1)
        w, fisher = 1.0 - 2.0 * px + sq, 1.0 - sq
    elif type(base) is nd.Poisson:
        rate = base.rate
        w, fisher = (x - rate) ** 2, rate
    else:
        return None
    dims = tuple(batch) + tuple(dist.event_shape)[:reinterpreted]
    full = jnp.broadcast_shapes(jnp.shape(w), dims)
    w, fisher = jnp.broadcast_to(w, full), jnp.broadcast_to(fisher, full[len(full) - len(dims) :])
    if reinterpreted:
        axes = tuple(range(-reinterpreted, 0))
        w, fisher = jnp.sum(w, axis=axes), jnp.sum(fisher, axis=axes)
    return jax.lax.stop_gradient(w), jax.lax.stop_gradient(fisher)


def others_sum(v: jax.Array) -> jax.Array:
    """``Σ_{j≠i} v_j`` along axis 0: the total as a product with a vector of ones, minus ``v``.

    A matrix product, not ``jnp.sum``: XLA's CPU compiler can fuse a reduction over particles
    into the kernel that consumes it and then recompute every particle's cost once per
    particle (time quadratic in the particles); a dot's operands and result are materialised,
    so the costs are computed once. Memory stays linear in the particles (a ``(N, N)`` matrix
    of ``1 − I`` took 9 GiB at 50,000 particles).
    """
    total = jnp.tensordot(jnp.ones(v.shape[0], v.dtype), v, axes=1)
    return total[None] - v


#: :class:`WeightedLeaveOneOut`'s default ``share`` (chosen on the ELBO gallery's development
#: seeds, checked on two held-out sets: docs/numpyro.md, "The default for discrete sites").
DEFAULT_SHARE = 0.03


def weighted_loo(d, w, fisher, history=None, share=DEFAULT_SHARE):
    r"""The :class:`WeightedLeaveOneOut` baseline of each of ``N`` particles (axis 0).

    ``d``: downstream costs ``(N, ...)``; ``w``: their squared natural scores (``None``: all
    1, ``fisher`` 1 too); ``fisher``: each particle's ``E[w]``; ``history``: ``(λ, Σ_wd, Σ_w)``
    from earlier steps (λ pseudo-particles), or ``None``; ``share``: below this share of their
    expected ``Σ w`` the others' weighted mean shrinks towards 0.
    """
    n = d.shape[0]
    if w is None:
        w = jnp.ones_like(d)
        fisher = jnp.ones_like(d)
    num = others_sum(w * d)
    den_sample = others_sum(w)
    count = n - 1
    if history is not None:
        lam, hist_wd, hist_w = history
        num = num + lam * hist_wd
        den_sample = den_sample + lam * hist_w
        count = count + lam
    den = jnp.maximum(share * count * fisher, den_sample)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


@pytree_dataclass
class WeightedLeaveOneOut(Baseline):
    r"""The variance-optimal baseline, estimated from the *other* samples.

    .. math::

        b^\star = \frac{\mathbb{E}[f(x)\, w(x)]}{\mathbb{E}[w(x)]}, \qquad
        b_i = \frac{\sum_{j\ne i} f(x_j)\, w(x_j)}
                   {\max\big(c\,(N-1)\,\mathbb{E}[w],\ \sum_{j \ne i} w(x_j)\big)},

    with ``w`` the squared score in the natural parameters and ``E[w]`` its exact expectation
    (:func:`natural_score_weights`: Bernoulli, Categorical, Poisson), for one discrete variable
    (per plate element in a program); a vector of independent units sums its units' squared
    scores, a heavy-tailed weight that only adds noise, and gets ``w = 1``. ``b_i`` uses the
    other samples only, so the estimate stays unbiased. While the others carry at least a share
    ``c`` of their expected squared score it is their score-weighted mean cost, unchanged by a
    constant added to the cost; below that share it shrinks towards 0: on a nearly
    deterministic Categorical, where every sample draws the same value, the plain
    leave-one-out advantage ``f(x_i) − b_i`` is exactly 0 and training stalls, while here the
    others' weights are far below ``c E[w]`` and the estimate keeps the signal of the frequent
    value (``docs/numpyro.md`` measures both). For other distributions ``w = 1`` and this is
    :class:`LeaveOneOut`. With one sample (``N = 1``) it is 0, the plain score function.

    In an ELBO whose guide is wrapped with :func:`expectax.infer.with_baselines`, a decaying
    average of earlier steps' ``Σ f w`` and ``Σ w`` (rate ``decay``, as Pyro's
    ``baseline_beta``) enters as ``N (1 + decay)/(1 − decay)`` further samples (the draws a
    decaying average effectively holds: 19 steps of ``N`` at 0.9); it never sees the current
    step, so it adds no bias.

    Args:
      decay: the decaying average's rate for the history through SVI (``0 ≤ decay < 1``).
      share: ``c`` above (``0 < c ≤ 1``). The default 0.03 shrinks only when the others drew
        (nearly) nothing but a dominant value; ``share=1`` shrinks in proportion to the others'
        share, which lets a large constant in the cost (the log-likelihood of many data points
        downstream of a global site) add noise (``docs/elbo-gallery.md``).

    Example:
      >>> est = ex.ScoreFunction(baseline=WeightedLeaveOneOut())

    References:
      Kool, van Hoof & Welling (2019). Greensmith, Bartlett & Baxter (2004). Mohamed et al.
      (2020), JMLR 21(132), eq. (65).
    """

    decay: float = static_field(default=0.9)
    share: float = static_field(default=DEFAULT_SHARE)
    requires_independent_samples = True

    def __post_init__(self) -> None:
        _check_decay("WeightedLeaveOneOut", self.decay)
        c = self.share
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 < c <= 1:
            raise ValueError(
                f"WeightedLeaveOneOut: share must be a float in (0, 1] (the others' share of "
                f"their expected squared score below which the baseline shrinks, e.g. 0.03), "
                f"got {c!r}."
            )

    def __call__(self, f_values, *, ctx=None, xs=None, key=None, cost_fn=None) -> jax.Array:
        one_variable = ctx is not None and ctx.dist is not None and not ctx.stacked
        one_variable = one_variable and tuple(ctx.dist.batch_shape + ctx.dist.event_shape) == ()
        if not one_variable:  # weights only for one discrete variable (see the class doc)
            return weighted_loo(f_values, None, None)
        weights = natural_score_weights(ctx.dist, xs)
        if weights is None:
            return weighted_loo(f_values, None, None)
        n = f_values.shape[0]
        w = jnp.sum(jnp.reshape(weights[0], (n, -1)), axis=1)
        return weighted_loo(f_values, w, jnp.sum(weights[1]), share=self.share)
