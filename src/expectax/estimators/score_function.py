"""The score-function (log-derivative, REINFORCE, likelihood-ratio) estimator."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from expectax.estimators.base import Context, Estimator, magic_box, pytree_dataclass

__all__ = ["ScoreFunction"]


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

    Args:
      baseline: ``None`` (no baseline) or a baseline from :mod:`expectax.baselines`. Its value
        is treated as a constant (``stop_gradient``) and must not depend on sample i's own
        ``x_i``, or the estimate is biased.

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

    def min_samples(self) -> int:
        if self.baseline is not None and hasattr(self.baseline, "min_samples"):
            return int(self.baseline.min_samples())
        return 1

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        xs = jax.lax.stop_gradient(ctx.dist.sample(key, (num_samples,)))
        fx = ctx.f(xs)
        log_p = ctx.log_prob(xs)
        box = magic_box(log_p)
        if self.baseline is None:
            return box * fx
        b = jax.lax.stop_gradient(
            jnp.broadcast_to(self.baseline(jax.lax.stop_gradient(fx), ctx=ctx, xs=xs), fx.shape)
        )
        return box * fx + (1.0 - box) * b
