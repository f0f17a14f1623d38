r"""Discrete problems from the REBAR / RELAX / ARM papers, exact by closed form or enumeration.

Registered with :func:`expectax.problems.register_problem`:

- ``bernoulli-toy`` (``target=0.499``; also ``bernoulli-toy-0.45``, ``-0.49``, ``-0.499``):
  ``E_{b~Bern(σ(φ))}[(b − t)²]``, the toy of Tucker et al. (2017), Grathwohl et al. (2018) and
  Yin & Zhou (2019). Its gradient ``σ(φ)(1 − σ(φ))(1 − 2t)`` is tiny next to the spread of f,
  so it separates estimators by variance.
- ``bernoulli-nonlinear``: 5 independent Bernoullis and an f that depends on θ (so the ``∇θ f``
  term is tested) and is defined on ``[0, 1]^d`` (so relaxations apply).
- ``categorical-nonlinear``: one Categorical over 5 classes with an f of the one-hot vector that
  depends on θ; f accepts an integer class or a (relaxed) vector on the simplex.

Exact answers use our own log-probabilities (``log σ(±φ)``, ``log_softmax``): numpyro's
``BernoulliLogits.log_prob`` has a wrong derivative at a logit of exactly 0 (see
docs/discrete.md), which would corrupt an enumeration at ``φ = 0``.

References:
  Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR: low-variance, unbiased
  gradient estimates for discrete latent variable models", NeurIPS. Grathwohl, Choi, Wu,
  Roeder & Duvenaud (2018), "Backpropagation through the void", ICLR. Yin & Zhou (2019),
  "ARM: augment-REINFORCE-merge gradient for stochastic binary networks", ICLR.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from expectax.estimators import ScoreFunction
from expectax.estimators.arm import ARM, DisARM
from expectax.estimators.relax import REBAR, RELAX
from expectax.estimators.relaxed import GumbelSoftmax, StraightThrough
from expectax.problems import Problem, register_problem

try:
    from expectax.baselines import LeaveOneOut

    _RLOO: tuple = (ScoreFunction(baseline=LeaveOneOut()),)
except ImportError:  # pragma: no cover - baselines not there yet
    _RLOO = ()

_BERNOULLI = (
    ScoreFunction(),
    *_RLOO,
    ARM(),
    DisARM(),
    REBAR(),
    RELAX(),
    GumbelSoftmax(),
    StraightThrough(),
)
_CATEGORICAL = (ScoreFunction(), *_RLOO, DisARM(), GumbelSoftmax(), StraightThrough())

__all__ = [
    "bernoulli_nonlinear",
    "bernoulli_toy",
    "categorical_nonlinear",
    "exact_bernoulli_expectation",
    "exact_categorical_expectation",
]


def exact_bernoulli_expectation(f, logits, params, d: int) -> jax.Array:  # noqa: ANN001
    """``Σ_{b∈{0,1}^d} Π_j σ(±φ_j) f_θ(b)`` by enumeration; differentiable in logits and θ."""
    states = jnp.asarray(np.array(list(itertools.product([0.0, 1.0], repeat=d))))
    states = states.astype(jnp.result_type(float))
    logits = jnp.reshape(logits, (1, d))
    log_p = states * jax.nn.log_sigmoid(logits) + (1.0 - states) * jax.nn.log_sigmoid(-logits)
    values = jax.vmap(lambda s: f(params, s))(states)
    return jnp.sum(jnp.exp(jnp.sum(log_p, axis=1)) * values)


def exact_categorical_expectation(f, logits, params) -> jax.Array:  # noqa: ANN001
    """``Σ_x softmax(ℓ)_x f_θ(x)`` over the integer classes; differentiable."""
    k = logits.shape[-1]
    values = jax.vmap(lambda x: f(params, x))(jnp.arange(k))
    return jnp.sum(jax.nn.softmax(logits) * values)


def bernoulli_toy(target: float = 0.499, logit: float = -0.4) -> Problem:
    r"""The REBAR/RELAX/ARM toy ``E_{b~Bernoulli(σ(φ))}[(b − t)²]``.

    .. math::

        J(\phi) = \sigma(\phi)(1 - t)^2 + (1 - \sigma(\phi))\, t^2, \qquad
        \nabla_\phi J = \sigma(\phi)\big(1 - \sigma(\phi)\big)(1 - 2t).

    Params ``{"logit": φ}``. f accepts ``b ∈ {0, 1}`` and relaxed values in (0, 1).

    Args:
      target: ``t`` (0.45, 0.49 and 0.499 in the papers: the closer to ½ the harder).
      logit: the default ``φ`` (−0.4, ``σ(φ) ≈ 0.4``: at 0 DisARM is exact and numpyro's
        Bernoulli score is wrong, see the module docstring).
    """
    if not 0.0 < float(target) < 1.0:
        raise ValueError(f"target must be in (0, 1), got {target!r}.")
    t = float(target)

    def f(params: dict, b: jax.Array) -> jax.Array:
        return (b - t) ** 2

    def dist_fn(p: dict) -> dist.Distribution:
        return dist.Bernoulli(logits=p["logit"])

    def exact_value(p: dict) -> jax.Array:
        s = jax.nn.sigmoid(p["logit"])
        return s * (1.0 - t) ** 2 + (1.0 - s) * t**2

    def exact_grad(p: dict) -> dict:
        s = jax.nn.sigmoid(p["logit"])
        return {"logit": s * (1.0 - s) * (1.0 - 2.0 * t)}

    return Problem(
        name="bernoulli-toy",
        description=f"E[(b - {t:g})^2], b ~ Bernoulli(sigmoid(logit)) (REBAR/RELAX/ARM toy)",
        f=f,
        dist_fn=dist_fn,
        params={"logit": jnp.asarray(logit, dtype=jnp.result_type(float))},
        exact_value=exact_value,
        exact_grad=exact_grad,
        estimators=_BERNOULLI,
    )


def bernoulli_nonlinear(d: int = 5) -> Problem:
    r"""``E[sin(aᵀb) + (mean(b) − 0.3)² + c · b_1 b_d]`` for ``d`` independent Bernoullis.

    .. math::

        J(\phi, a, c) = \sum_{b \in \{0,1\}^d} \prod_j \sigma(\phi_j)^{b_j}
          (1-\sigma(\phi_j))^{1-b_j}\,
          \Big(\sin(a^\top b) + (\bar b - 0.3)^2 + c\, b_1 b_d\Big).

    Params ``{"logits": (d,), "a": (d,), "c": ()}`` (f depends on ``a`` and ``c``, so an
    estimator must include the ``∇θ f`` term), exact by enumerating ``2^d`` states.

    Args:
      d: the number of Bernoulli units (4 to 6 keeps enumeration instant).
    """
    if not (isinstance(d, int) and 2 <= d <= 12):
        raise ValueError(f"d must be an int between 2 and 12, got {d!r}.")

    def f(params: dict, b: jax.Array) -> jax.Array:
        b = jnp.asarray(b, dtype=params["a"].dtype)
        return (
            jnp.sin(jnp.dot(params["a"], b))
            + (jnp.mean(b) - 0.3) ** 2
            + params["c"] * (b[0] * b[-1])
        )

    def dist_fn(p: dict) -> dist.Distribution:
        return dist.Bernoulli(logits=p["logits"])

    def exact_value(p: dict) -> jax.Array:
        return exact_bernoulli_expectation(f, p["logits"], p, d)

    return Problem(
        name="bernoulli-nonlinear",
        description=f"E[sin(a.b) + (mean(b) - 0.3)^2 + c b_1 b_d], b ~ {d} Bernoullis",
        f=f,
        dist_fn=dist_fn,
        params={
            "logits": jnp.linspace(-1.2, 0.9, d),
            "a": jnp.linspace(0.5, 1.5, d),
            "c": jnp.asarray(0.7),
        },
        exact_value=exact_value,
        exact_grad=jax.grad(exact_value),
        estimators=_BERNOULLI,
    )


def categorical_nonlinear(num_categories: int = 5) -> Problem:
    r"""``E[sin(vᵀy) + (uᵀy)²]`` for a Categorical ``x`` with one-hot ``y``; f depends on ``v``.

    .. math::

        J(\ell, v) = \sum_{x=0}^{K-1} \operatorname{softmax}(\ell)_x
          \big(\sin v_x + u_x^2\big), \qquad u_x = x / K - 0.4 .

    f accepts the integer class (unbiased estimators) or a vector on the simplex (relaxations),
    so relaxed estimators see ``sin(vᵀy) + (uᵀy)²`` of the relaxed ``y``. Params
    ``{"logits": (K,), "v": (K,)}``.

    Args:
      num_categories: ``K``.
    """
    if not (isinstance(num_categories, int) and num_categories >= 2):
        raise ValueError(f"num_categories must be an int ≥ 2, got {num_categories!r}.")
    kk = num_categories
    u = jnp.arange(kk) / kk - 0.4

    def f(params: dict, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        y = jax.nn.one_hot(x, kk) if x.ndim == 0 else x
        return jnp.sin(jnp.dot(params["v"], y)) + jnp.dot(u, y) ** 2

    def dist_fn(p: dict) -> dist.Distribution:
        return dist.Categorical(logits=p["logits"])

    def exact_value(p: dict) -> jax.Array:
        return exact_categorical_expectation(f, p["logits"], p)

    return Problem(
        name="categorical-nonlinear",
        description=f"E[sin(v.y) + (u.y)^2], y one-hot of x ~ Categorical(softmax(logits)), K={kk}",
        f=f,
        dist_fn=dist_fn,
        params={"logits": jnp.linspace(0.6, -0.6, kk), "v": jnp.linspace(-1.0, 2.0, kk)},
        exact_value=exact_value,
        exact_grad=jax.grad(exact_value),
        estimators=_CATEGORICAL,
    )


def _toy(target: float) -> object:
    def factory(logit: float = -0.4) -> Problem:
        return bernoulli_toy(target=target, logit=logit)

    return factory


register_problem("bernoulli-toy", bernoulli_toy)
for _t in ("0.45", "0.49", "0.499"):
    register_problem(f"bernoulli-toy-{_t}", _toy(float(_t)))
register_problem("bernoulli-nonlinear", bernoulli_nonlinear)
register_problem("categorical-nonlinear", categorical_nonlinear)
