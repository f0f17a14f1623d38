r"""Small discrete reference problems, solved exactly by enumerating every state.

Both have logits as parameters and a nonlinear f; the exact value is the finite sum
``J(θ) = Σ_x p_θ(x) f(x)`` and the exact gradient is ``jax.grad`` of that sum.

References:
  Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
  learning", JMLR 21(132), section 4 (the score function on discrete distributions).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from expectax.baselines import LeaveOneOut
from expectax.estimators import ARM, DisARM, GumbelSoftmax, ScoreFunction, StraightThrough
from expectax.estimators.base import joint_log_prob
from expectax.problems import Problem

#: What ``expectax compare`` runs: REINFORCE with and without the leave-one-out baseline, the
#: antithetic ARM/DisARM pairs (2 evaluations of f per pair), and, for Bernoulli, the biased
#: relaxations for contrast.
_BERNOULLI_ESTIMATORS = (
    ScoreFunction(),
    ScoreFunction(baseline=LeaveOneOut()),
    ARM(),
    DisARM(),
    GumbelSoftmax(),
    StraightThrough(),
)
_CATEGORICAL_ESTIMATORS = (ScoreFunction(), ScoreFunction(baseline=LeaveOneOut()), DisARM())

__all__ = ["bernoulli", "categorical", "enumerate_expectation"]


def enumerate_expectation(f, dist_fn, params, states) -> jax.Array:  # noqa: ANN001
    """``Σ_x p_θ(x) f_θ(x)`` over ``states`` (leading axis: one state per row).

    ``dist_fn(params).log_prob`` is summed over batch dimensions, so a batch of independent
    Bernoullis gives the joint probability of each row. Differentiable in ``params``.
    """
    d = dist_fn(params)
    log_p = jax.vmap(lambda s: joint_log_prob(d, s, sample_ndim=0))(states)
    values = jax.vmap(lambda s: f(params, s))(states)
    return jnp.sum(jnp.exp(log_p) * values)


def bernoulli(d: int = 5, target: float = 0.45) -> Problem:
    r"""``E[(wᵀx/Σw − t)²]`` for ``x_i ~ Bernoulli(σ(ℓ_i))`` independent, ``i = 1..d``.

    .. math::

        J(\ell) = \sum_{x \in \{0,1\}^d} \prod_i \sigma(\ell_i)^{x_i} (1 - \sigma(\ell_i))^{1 - x_i}
          \Big(\frac{w^\top x}{\textstyle\sum_i w_i} - t\Big)^2, \qquad w_i = i,

    a quadratic with pairwise interactions between the bits, summed over all ``2^d`` states.
    Params ``{"logits": (d,)}``, default ``linspace(-1, 1, d)``.

    Args:
      d: the number of bits (``2^d`` states are enumerated; keep it ≤ 12).
      target: ``t``.
    """
    if not (isinstance(d, int) and 1 <= d <= 16):
        raise ValueError(f"d must be an int between 1 and 16 (2^d states), got {d!r}.")
    w = jnp.arange(1.0, d + 1.0)
    w = w / jnp.sum(w)
    states = jnp.asarray(np.array(list(itertools.product([0, 1], repeat=d)), dtype=np.int32))

    def f(params: dict, x: jax.Array) -> jax.Array:
        return (jnp.dot(w, x.astype(w.dtype)) - target) ** 2

    def dist_fn(p: dict) -> dist.Distribution:
        return dist.Bernoulli(logits=p["logits"])

    def exact_value(p: dict) -> jax.Array:
        return enumerate_expectation(f, dist_fn, p, states)

    return Problem(
        name="bernoulli",
        description=f"E[(w.x - {target:g})^2], x ~ {d} independent Bernoulli(sigmoid(logits))",
        f=f,
        dist_fn=dist_fn,
        params={"logits": jnp.linspace(-1.0, 1.0, d)},
        exact_value=exact_value,
        exact_grad=jax.grad(exact_value),
        estimators=_BERNOULLI_ESTIMATORS,
    )


def categorical(num_categories: int = 6, target: float = 2.3) -> Problem:
    r"""``E[sin(x) + (x − t)² / K]`` for ``x ~ Categorical(softmax(ℓ))`` over ``{0, …, K−1}``.

    .. math::

        J(\ell) = \sum_{x=0}^{K-1} \operatorname{softmax}(\ell)_x
          \Big(\sin x + \frac{(x - t)^2}{K}\Big).

    Params ``{"logits": (K,)}``, default ``linspace(-0.5, 0.5, K)``.

    Args:
      num_categories: ``K``.
      target: ``t``.
    """
    if not (isinstance(num_categories, int) and num_categories >= 2):
        raise ValueError(f"num_categories must be an int ≥ 2, got {num_categories!r}.")
    kk = num_categories
    states = jnp.arange(kk)

    def f(params: dict, x: jax.Array) -> jax.Array:
        xf = jnp.asarray(x, dtype=jnp.result_type(float))
        return jnp.sin(xf) + (xf - target) ** 2 / kk

    def dist_fn(p: dict) -> dist.Distribution:
        return dist.Categorical(logits=p["logits"])

    def exact_value(p: dict) -> jax.Array:
        return enumerate_expectation(f, dist_fn, p, states)

    return Problem(
        name="categorical",
        description=f"E[sin(x) + (x - {target:g})^2/{kk}], x ~ Categorical(softmax(logits)), "
        f"K={kk}",
        f=f,
        dist_fn=dist_fn,
        params={"logits": jnp.linspace(-0.5, 0.5, kk)},
        exact_value=exact_value,
        exact_grad=jax.grad(exact_value),
        estimators=_CATEGORICAL_ESTIMATORS,
    )
