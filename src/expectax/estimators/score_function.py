"""The score-function (log-derivative, REINFORCE, likelihood-ratio) estimator."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from expectax import sampling
from expectax.estimators.base import (
    Context,
    Estimator,
    check_fixed_support,
    joint_log_prob,
    magic_box,
    pytree_dataclass,
    static_field,
)

__all__ = ["PerParameter", "ScoreFunction"]


@pytree_dataclass
class ScoreFunction(Estimator):
    r"""The score-function estimator, with the ``∇θ f`` term and right derivatives of every order.

    .. math::

        \nabla_\theta\, \mathbb{E}_{p_\theta}[f_\theta(x)]
        = \mathbb{E}_{p_\theta}\big[(f_\theta(x) - b)\,\nabla_\theta \log p_\theta(x)
          + \nabla_\theta f_\theta(x)\big]
        \approx \frac1N \sum_{i=1}^N (f_\theta(x_i) - b_i)\,\nabla_\theta \log p_\theta(x_i)
          + \nabla_\theta f_\theta(x_i), \qquad x_i \sim p_\theta .

    The surrogate of sample i is DiCE's ``magic(l_i) · f_θ(x_i) + (1 − magic(l_i)) · b_i`` with
    ``l_i = log p_θ(x_i)`` and ``magic(l) = exp(l − stop_gradient(l))`` (Foerster et al., 2018;
    the baseline term of Mao et al., 2019): its value is ``f_θ(x_i)``, its gradient the
    estimator above, and its Hessian (and every higher derivative) the score-function
    estimate of the Hessian of the expectation, so ``jax.hessian`` stays unbiased.

    It needs only samples and a differentiable ``log_prob``: any distribution, continuous or
    discrete, and a non-differentiable f. Its variance grows with the magnitude of f and the
    dimension of x; a baseline (``expectax.baselines``) or control variate lowers it.

    When ``p`` does not depend on θ the score term vanishes and the estimator reduces to the
    Leibniz rule ``E_p[∇θ f_θ(x)]``.

    **The support of p_θ must not depend on θ.** Differentiating ``∫ f p_θ dx`` under the
    integral sign needs a fixed region of integration; for ``Uniform(0, θ)`` the Leibniz rule
    adds a boundary term ``f(θ)/θ`` that no sample sees (for f = x the estimate has the wrong
    sign). A support whose bounds are traced and differentiated (numpyro's ``interval``,
    ``greater_than``, ``less_than``, … with bounds computed from params) raises ``ValueError``
    at trace time; reparameterise instead (``Uniform(0, θ) = θ · Uniform(0, 1)``) and use
    :class:`Pathwise`.

    Args:
      baseline: ``None`` (no baseline) or a baseline from :mod:`expectax.baselines`
        (``Constant``, ``MovingAverage``, ``LeaveOneOut``, ``Optimal``). Its value is treated
        as a constant (``stop_gradient``) and must not depend on sample i's own ``x_i``, or
        the estimate is biased. A plain function ``baseline(f_values, ctx=ctx, xs=xs)``
        returning ``b`` broadcastable to ``(N,)`` works too.
      control_variate: ``None`` or a control variate from :mod:`expectax.control_variates`
        (``DeltaMethod()``, ``ControlVariate(h, expected_h)``): the cost becomes
        ``f − β h`` and ``β ∇E[h]`` is added back exactly. The baseline then applies to
        ``f − β h``.
      antithetic: draw ``num_samples/2`` mirrored pairs ``μ ± σε`` (``num_samples`` counts
        evaluations of f and must be even). Normal-noise location-scale families only.
      qmc: draw the noise from randomised (scrambled) Sobol points (see
        :mod:`expectax.sampling`). Normal-noise location-scale families only.

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> E = ex.expectation(lambda p, x: x ** 2, lambda p: dist.Normal(p, 1.0),
      ...                    estimator=ex.ScoreFunction(), num_samples=1000)
      >>> g = jax.grad(E)(jnp.array(1.0), jax.random.key(0))   # ≈ 2 μ = 2

    References:
      Williams (1992), "Simple statistical gradient-following algorithms for connectionist
      reinforcement learning". Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient
      estimation in machine learning", JMLR 21(132), section 4. Foerster et al. (2018),
      "DiCE: the infinitely differentiable Monte Carlo estimator". Mao et al. (2019),
      "A baseline for any order gradient estimation in stochastic computation graphs".
    """

    baseline: Any = None
    control_variate: Any = None
    antithetic: bool = static_field(default=False)
    qmc: bool = static_field(default=False)

    def __post_init__(self) -> None:
        # also runs when JAX rebuilds the estimator from its leaves (tracers, placeholders):
        # refuse only what no transformation puts there, a string or a class
        _check_part(self.baseline, "baseline", _BASELINES, "baselines.LeaveOneOut()")
        _check_part(
            self.control_variate,
            "control_variate",
            _CONTROL_VARIATES,
            "control_variates.DeltaMethod()",
        )

    def min_samples(self) -> int:
        n = 2 if self.antithetic else 1
        if self.baseline is not None and hasattr(self.baseline, "min_samples"):
            n = max(n, int(self.baseline.min_samples()))
        return n

    def evaluations(self, num_samples: int, dist: Any = None) -> int:
        extra = 0
        for part in (self.baseline, self.control_variate):
            if part is not None and hasattr(part, "extra_evaluations"):
                extra += int(part.extra_evaluations(num_samples))
        return num_samples + extra

    def _draw(self, dist: Any, key: jax.Array, n: int) -> Any:
        if self.antithetic or self.qmc:
            return sampling.sample(
                dist, key, n, antithetic=self.antithetic, qmc=self.qmc, owner="ScoreFunction"
            )
        return dist.sample(key, (n,))

    def cost_terms(self, dist: Any, g: Callable[[Any], Any], key: jax.Array, n: int) -> jax.Array:
        """The plain score-function terms ``magic(log p(x_i)) · g(x_i)`` for a cost ``g(x)``.

        Used to fit control-variate coefficients on a separate batch; ``dist`` may be stacked.
        """
        xs = jax.lax.stop_gradient(self._draw(dist, key, n))
        return magic_box(joint_log_prob(dist, xs)) * jax.vmap(g)(xs)

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        sampling.check_num_samples(num_samples, self.antithetic, "ScoreFunction")
        if (self.antithetic or self.qmc) and getattr(
            self.baseline, "requires_independent_samples", False
        ):
            raise ValueError(
                f"ScoreFunction: baseline={type(self.baseline).__name__}() uses the other "
                "samples of the batch, which antithetic/qmc sampling makes dependent on sample "
                "i (biasing the gradient). Use baselines.Optimal(), MovingAverage or Constant "
                "with antithetic=True/qmc=True, or i.i.d. sampling with LeaveOneOut()."
            )
        check_fixed_support(ctx.dist, "ScoreFunction")
        xs = jax.lax.stop_gradient(self._draw(ctx.dist, key, num_samples))
        fx = ctx.f(xs)
        log_p = ctx.log_prob(xs)
        box = magic_box(log_p)
        cost, offset = fx, 0.0
        cost_fn = None
        if self.control_variate is not None:
            cv = self.control_variate.bind(self, ctx, jax.random.fold_in(key, 1), num_samples)
            cost = fx - cv.beta * cv.h_values(xs)
            offset = cv.beta * cv.expected(ctx)
            cost_fn = lambda ys, ctx0: ctx0.f(ys) - cv.beta * cv.h_values(ys)  # noqa: E731
        out = box * cost + offset
        if self.baseline is None:
            return out
        cost_sg = jax.lax.stop_gradient(cost)
        if getattr(self.baseline, "takes_key", False):
            b = self.baseline(
                cost_sg, ctx=ctx, xs=xs, key=jax.random.fold_in(key, 2), cost_fn=cost_fn
            )
        else:
            b = self.baseline(cost_sg, ctx=ctx, xs=xs)
        if isinstance(b, PerParameter):
            # Gradient −b_d · ∂_d log p for each parameter d of the distribution; every higher
            # derivative has expectation zero (it is DiCE's magic box of a reparameterised θ).
            return out + (1.0 - magic_box(ctx.log_prob(xs, dist=b.scaled(ctx.dist))))
        b = jax.lax.stop_gradient(jnp.broadcast_to(b, fx.shape))
        return out + (1.0 - box) * b


@dataclasses.dataclass(frozen=True)
class PerParameter:
    """A per-coordinate baseline: one value ``b_d`` for each parameter of the distribution.

    ``scales`` is a list aligned with ``jax.tree_util.tree_leaves(dist)`` (None for leaves that
    are not floats); each entry has the shape of the leaf of one copy of θ. The score-function
    surrogate evaluates ``log p`` at ``φ̄ + b ⊙ (φ − φ̄)`` (``φ̄ = stop_gradient(φ)``), whose
    gradient is ``b ⊙ ∇φ log p``.
    """

    scales: list[Any]

    def scaled(self, dist: Any) -> Any:
        leaves, treedef = jax.tree_util.tree_flatten(dist)
        if len(leaves) != len(self.scales):
            raise RuntimeError("PerParameter baseline does not match the distribution's leaves.")
        new = []
        for leaf, b in zip(leaves, self.scales, strict=True):
            if b is None:
                new.append(leaf)
                continue
            b = jax.lax.stop_gradient(jnp.broadcast_to(b, jnp.shape(leaf)))
            fixed = jax.lax.stop_gradient(leaf)
            new.append(fixed + b * (leaf - fixed))
        return jax.tree_util.tree_unflatten(treedef, new)


_BASELINES = {
    "Constant(c)": ("constant", "const", "c"),
    "MovingAverage()": ("moving_average", "movingaverage", "ema", "average", "avg", "ma"),
    "LeaveOneOut()": ("leave_one_out", "leaveoneout", "loo", "rloo"),
    "Optimal()": ("optimal", "opt"),
    "WeightedLeaveOneOut()": ("weighted_leave_one_out", "weightedleaveoneout", "wloo"),
}
_CONTROL_VARIATES = {
    "DeltaMethod()": ("delta_method", "deltamethod", "delta"),
    "ControlVariate(h, expected_h)": ("control_variate", "controlvariate", "cv"),
}


def _check_part(value: Any, field: str, known: dict[str, tuple[str, ...]], example: str) -> None:
    """Refuse a string or a class for ``baseline``/``control_variate``, naming what to write."""
    module = "baselines" if field == "baseline" else "control_variates"
    listing = ", ".join(f"{module}.{name}" for name in known)
    if isinstance(value, str):
        key = value.strip().lower().replace("-", "_")
        match = [name for name, aliases in known.items() if key in aliases]
        hint = f"write {field}=ex.{module}.{match[0]}" if match else f"e.g. ex.{example}"
        raise TypeError(
            f"ScoreFunction({field}={value!r}): {field} must be an object from "
            f"expectax.{module} ({listing}), not a string; {hint}."
        )
    if isinstance(value, type):
        raise TypeError(
            f"ScoreFunction({field}={value.__name__}): {field} must be an instance, not the "
            f"class; write {field}=ex.{module}.{value.__name__}() with parentheses."
        )
