r"""ARM and DisARM: unbiased antithetic estimators for Bernoulli (and Categorical) latents.

Both draw one uniform ``u`` per Bernoulli unit and evaluate f at two antithetically coupled
exact samples, so ``num_samples`` counts *pairs*: one estimate costs ``2 N`` evaluations of f
(reported by :meth:`~expectax.Estimator.evaluations`).

The gradient with respect to the logits is not of the score-function form, so the surrogate of
pair i is ``½ (f_θ(b_i) + f_θ(b̃_i)) + Σ_j stop_gradient(g_ij) (φ_ij − stop_gradient(φ_ij))``:
its value is the pair's mean, its first derivative the estimator (including the ``∇θ f``
term). Higher derivatives of this surrogate are not estimators of higher derivatives.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from expectax.estimators.base import Context, Estimator, pytree_dataclass
from expectax.estimators.relaxed import (
    _is_bernoulli,
    _is_categorical,
    bernoulli_logits,
    categorical_logits,
)

__all__ = ["ARM", "DisARM"]

_ALTERNATIVES = (
    "ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut()) (RLOO; any distribution with a log_prob)"
)


def _expand(values: jax.Array, ndim: int) -> jax.Array:
    """``(N,) -> (N, 1, …, 1)`` with ``ndim`` axes in all (explicit, for strict rank checks)."""
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _surrogate(f_a: jax.Array, f_b: jax.Array, coef: jax.Array, logits: jax.Array) -> jax.Array:
    n = f_a.shape[0]
    linear = jax.lax.stop_gradient(coef) * (logits - jax.lax.stop_gradient(logits))
    return 0.5 * (f_a + f_b) + linear.reshape(n, -1).sum(axis=1)


@pytree_dataclass
class ARM(Estimator):
    r"""The augment-REINFORCE-merge (ARM) estimator for independent Bernoulli variables.

    For ``b ~ Bernoulli(σ(φ))`` (any batch of independent units) and ``u ~ U(0, 1)`` per unit,

    .. math::

        \nabla_\phi\, \mathbb{E}[f(b)] = \mathbb{E}_u\Big[\big(f(\mathbb{1}[u > \sigma(-\phi)])
          - f(\mathbb{1}[u < \sigma(\phi)])\big)\,(u - \tfrac12)\Big],

    both arguments being exact samples of ``Bernoulli(σ(φ))``. ``num_samples`` counts the
    antithetic pairs; each costs two evaluations of f. The value is the mean of f over the
    ``2N`` samples; the gradient flows to θ through the logits (chain rule) and includes
    ``E[∇θ f_θ(b)]`` when f depends on θ. Prefer :class:`DisARM`: same cost, never more
    variance.

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> E = ex.expectation(lambda p, b: (b - 0.499) ** 2,
      ...                    lambda p: dist.Bernoulli(logits=p), estimator=ARM(),
      ...                    num_samples=8)          # 8 pairs, 16 evaluations of f
      >>> g = jax.grad(E)(jnp.array(0.0), jax.random.key(0))

    References:
      Yin & Zhou (2019), "ARM: augment-REINFORCE-merge gradient for stochastic binary
      networks", ICLR.
    """

    def evaluations(self, num_samples: int, dist: Any = None) -> int:
        return 2 * num_samples

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        if _is_categorical(ctx.dist):
            raise ValueError(
                "ARM serves Bernoulli distributions, but dist_fn returned a Categorical. Use "
                "ex.DisARM() (its stick-breaking extension serves Categoricals), "
                "ex.UnorderedSet() or " + _ALTERNATIVES + "."
            )
        logits = bernoulli_logits(
            ctx, num_samples, "ARM", "ex.DisARM() or " + _ALTERNATIVES, exact=True
        )
        u = jax.random.uniform(key, logits.shape, logits.dtype)
        sg = jax.lax.stop_gradient(logits)
        b1 = (u > jax.nn.sigmoid(-sg)).astype(logits.dtype)
        b2 = (u < jax.nn.sigmoid(sg)).astype(logits.dtype)
        f1, f2 = ctx.f(b1), ctx.f(b2)
        coef = _expand(f1 - f2, logits.ndim) * (u - 0.5)
        return _surrogate(f1, f2, coef, logits)


@pytree_dataclass
class DisARM(Estimator):
    r"""DisARM: ARM with the augmentation integrated out, for Bernoulli and Categorical latents.

    For independent ``b ~ Bernoulli(σ(φ))``, antithetic ``b = 1[u < σ(φ)]``,
    ``b̃ = 1[1 − u < σ(φ)]`` with one ``u ~ U(0, 1)`` per unit, and

    .. math::

        \hat g_j = \tfrac12\big(f(b) - f(\tilde b)\big)\,(-1)^{\tilde b_j}\,
          \mathbb{1}[b_j \ne \tilde b_j]\;\sigma(|\phi_j|),

    an unbiased estimate of ``∇φ E[f(b)]``. It is ARM's estimator with the augmenting uniform
    integrated out given the pair, so its variance is never larger than ARM's at the same
    cost. ``num_samples`` counts pairs (two evaluations of f each).

    For a Categorical over ``K`` classes (any batch of them) it uses the stick-breaking coupling
    of Dong, Mnih & Tucker (2021): ``x`` is the first ``k`` with ``β_k = 1`` for independent
    ``β_k ~ Bernoulli(σ(η_k))``, ``η_k = log π_k − log Σ_{j>k} π_j`` (``K − 1`` stages;
    ``x = K − 1`` if none fires), which has exactly the law ``Categorical(π)``. DisARM on the
    ``β`` gives an unbiased estimate of ``∇η``, chained to θ; the terms of stages that neither
    chain of the pair reached are dropped (their conditional mean is zero: a
    Rao-Blackwellisation). f receives the integer category.

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> E = ex.expectation(lambda p, b: (b - 0.499) ** 2,
      ...                    lambda p: dist.Bernoulli(logits=p), estimator=DisARM(),
      ...                    num_samples=8)          # 8 pairs, 16 evaluations of f
      >>> g = jax.grad(E)(jnp.array(0.0), jax.random.key(0))

    References:
      Dong, Mnih & Tucker (2020), "DisARM: an antithetic gradient estimator for binary latent
      variables", NeurIPS. Yin, Yue & Zhou (2020), "Probabilistic best subset selection via
      gradient-based optimization" (U2G, the same estimator). Dong, Mnih & Tucker (2021),
      "Coupled gradient estimators for discrete latent variables", NeurIPS.
    """

    def evaluations(self, num_samples: int, dist: Any = None) -> int:
        return 2 * num_samples

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        if _is_categorical(ctx.dist):
            return self._categorical_terms(ctx, key, num_samples)
        if not _is_bernoulli(ctx.dist):
            raise ValueError(
                "DisARM serves Bernoulli and Categorical distributions, but dist_fn returned "
                f"{type(ctx.dist).__name__}. Use " + _ALTERNATIVES + " instead."
            )
        logits = bernoulli_logits(ctx, num_samples, "DisARM", _ALTERNATIVES, exact=True)
        u = jax.random.uniform(key, logits.shape, logits.dtype)
        b, bt, coef_pair = _disarm_pair(logits, u)
        fb, fbt = ctx.f(b), ctx.f(bt)
        coef = _expand(0.5 * (fb - fbt), logits.ndim) * coef_pair
        return _surrogate(fb, fbt, coef, logits)

    def _categorical_terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        log_p = categorical_logits(ctx, num_samples, "DisARM", _ALTERNATIVES)  # (N, ..., K)
        k = log_p.shape[-1]
        if k < 2:
            raise ValueError("DisARM needs at least 2 categories.")
        tail = jax.lax.cumlogsumexp(log_p, axis=log_p.ndim - 1, reverse=True)  # log Σ_{j ≥ k} π_j
        eta = log_p[..., :-1] - tail[..., 1:]  # stage logits, (N, ..., K−1)
        u = jax.random.uniform(key, eta.shape, eta.dtype)
        beta, beta_t, coef_pair = _disarm_pair(eta, u)
        x, reached = _stick_breaking(beta)
        xt, reached_t = _stick_breaking(beta_t)
        fx, fxt = ctx.f(x), ctx.f(xt)
        mask = (reached | reached_t).astype(eta.dtype)
        coef = _expand(0.5 * (fx - fxt), eta.ndim) * coef_pair * mask
        return _surrogate(fx, fxt, coef, eta)


def _disarm_pair(logits: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The antithetic pair and ``(−1)^{b̃} 1[b ≠ b̃] σ(|φ|)`` (no f yet), all stop-gradient."""
    sg = jax.lax.stop_gradient(logits)
    b = (u < jax.nn.sigmoid(sg)).astype(sg.dtype)
    bt = (u > jax.nn.sigmoid(-sg)).astype(sg.dtype)
    coef = (1.0 - 2.0 * bt) * jnp.abs(b - bt) * jax.nn.sigmoid(jnp.abs(sg))
    return b, bt, coef


def _stick_breaking(beta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Category = first stage that fires (``K − 1`` if none); which stages were reached."""
    fired = jnp.concatenate([beta, jnp.ones_like(beta[..., :1])], axis=-1)
    x = jnp.argmax(fired, axis=-1)
    before = jnp.cumsum(beta, axis=-1) - beta  # how many fired strictly before stage k
    return x, before == 0
