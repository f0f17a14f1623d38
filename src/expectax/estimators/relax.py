r"""REBAR and RELAX: unbiased Bernoulli gradients with a relaxation-based control variate.

Both are the score-function estimator with a control variate ``c(z)`` of the continuous
relaxation ``z`` of the sample, corrected so that the estimate stays unbiased:

.. math::

    \hat g = \big(f_\theta(b) - c(\tilde z)\big)\,\nabla_\theta \log p_\theta(b)
      + \nabla_\theta c(z) - \nabla_\theta c(\tilde z) + \nabla_\theta f_\theta(b),
    \qquad b = H(z),\ z \sim p_\theta(z),\ \tilde z \sim p_\theta(z \mid b),

with ``z = φ + log u − log(1 − u)`` (logistic), ``H`` the step function, and ``z̃`` drawn from
the conditional of ``z`` given ``b`` with fresh uniform noise, both reparameterised in φ.
REBAR uses ``c(z) = η f(σ(z/λ))``; RELAX adds a learned network ``r_ψ(σ(z))``.

The control-variate parameters (``log_temperature``, ``eta`` and RELAX's ``net``) are array
fields of the estimator, so the estimator *is* the state: :func:`variance_gradient` returns the
gradient of the estimator's variance with respect to them (an estimator-shaped pytree to feed an
optimiser such as optax), and :func:`fit_control_variate` runs a small jitted Adam loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from expectax.estimators.base import Context, Estimator, magic_box, pytree_dataclass
from expectax.estimators.relaxed import _is_bernoulli, bernoulli_logits, logistic_noise

__all__ = ["REBAR", "RELAX", "fit_control_variate", "variance_gradient"]

PyTree = Any

_ALTERNATIVES = (
    "ex.DisARM() (Bernoulli and Categorical), ex.UnorderedSet() (Categorical), or "
    "ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut()) (any distribution)"
)


def _conditional_z(logits: jax.Array, b: jax.Array, v: jax.Array) -> jax.Array:
    """``z̃ ~ p(z | b)`` for ``z = φ + Logistic``, reparameterised in φ with ``v ~ U(0, 1)``.

    ``b = 1``: ``u = 1 − θ + vθ`` gives ``z̃ = softplus(φ + log v) − log(1 − v) > 0``;
    ``b = 0``: ``u = v(1 − θ)`` gives ``z̃ = φ + log v − log(1 − v + e^φ) < 0``.
    """
    log_v, log_1mv = jnp.log(v), jnp.log1p(-v)
    z1 = jax.nn.softplus(logits + log_v) - log_1mv
    z0 = logits + log_v - jnp.logaddexp(log_1mv, logits)
    return jnp.where(b > 0.5, z1, z0)


def _mlp(net: Sequence[tuple[jax.Array, jax.Array]], x: jax.Array) -> jax.Array:
    """A tanh MLP on one flattened input, returning a scalar."""
    h = x
    for i, (w, c) in enumerate(net):
        h = h @ w + c
        if i < len(net) - 1:
            h = jnp.tanh(h)
    return h.reshape(())


@pytree_dataclass
class REBAR(Estimator):
    r"""REBAR: REINFORCE with the Concrete relaxation as a control variate, unbiased (Bernoulli).

    .. math::

        \hat g = \big(f_\theta(b) - \eta f(\sigma_\lambda(\tilde z))\big)
          \nabla_\theta \log p_\theta(b) + \eta \nabla_\theta f(\sigma_\lambda(z))
          - \eta \nabla_\theta f(\sigma_\lambda(\tilde z)) + \nabla_\theta f_\theta(b),

    with ``σ_λ(z) = σ(z/λ)``, ``z`` the logistic relaxation of ``b = 1[z > 0]`` and ``z̃`` drawn
    from ``p(z | b)`` (see the module docstring). Unbiased for any ``λ > 0`` and ``η``; its
    variance depends strongly on them, so train them with :func:`fit_control_variate` (or
    :func:`variance_gradient` and an optimiser of your own) on the problem at hand. With the
    defaults it can be several times worse than plain REINFORCE.

    f must accept relaxed values in (0, 1) (shape as the sample) and be differentiable there;
    it is evaluated three times per sample (``b``, ``σ_λ(z)``, ``σ_λ(z̃)``), so compare it with
    REINFORCE at ``3 N`` samples. The control variate uses ``stop_gradient(θ)`` in f; the
    ``∇θ f`` term comes from ``f_θ(b)``.

    Why not ``terms`` alone: the score-function part needs the coefficient
    ``f(b) − c(z̃)`` to carry no gradient to θ but to keep its gradient to ``η`` and ``λ``
    (for :func:`variance_gradient`). It is written as ``(magic(l) − 1)(sg f(b) − c(z̃))``:
    ``magic(l) − 1`` is 0 in value with gradient ``∇l``, so the product's θ-gradient is
    ``(f(b) − c(z̃))∇l`` while its second derivatives in (θ, η, λ) stay right.

    Args:
      log_temperature: ``log λ`` (default ``log 0.5``).
      eta: the scale ``η`` of the control variate (default 1).

    Example:
      >>> import jax, jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> f = lambda p, b: (b - 0.499) ** 2
      >>> dist_fn = lambda p: dist.Bernoulli(logits=p)
      >>> est = fit_control_variate(REBAR(), f, dist_fn, jnp.array(0.3), jax.random.key(0),
      ...                           num_samples=1, steps=200)
      >>> E = ex.expectation(f, dist_fn, estimator=est, num_samples=1)
      >>> g = jax.grad(E)(jnp.array(0.3), jax.random.key(1))

    References:
      Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein (2017), "REBAR: low-variance, unbiased
      gradient estimates for discrete latent variable models", NeurIPS.
    """

    differentiates_f = True

    log_temperature: Any = math.log(0.5)
    eta: Any = 1.0

    def evaluations(self, num_samples: int, dist: Any = None) -> int:
        return 3 * num_samples

    @property
    def name(self) -> str:
        """``REBAR`` / ``RELAX``, with ``λ``, ``η`` and the network's widths when not defaults."""
        parts = []
        try:
            lam, eta = float(jnp.exp(self.log_temperature)), float(self.eta)
            if abs(lam - 0.5) > 1e-6 or abs(eta - 1.0) > 1e-6:
                parts.append(f"λ={lam:.3g}, η={eta:.3g}")
        except (TypeError, jax.errors.ConcretizationTypeError):  # traced: no values to show
            parts.append("trained")
        net = getattr(self, "net", None)
        if net is not None:
            widths = [int(w.shape[0]) for w, _ in net] + [int(net[-1][0].shape[1])]
            parts.append("net=" + "→".join(map(str, widths)))
        return type(self).__name__ + (f"({', '.join(parts)})" if parts else "")

    def _network(self, relaxed: jax.Array) -> jax.Array:
        return jnp.zeros(relaxed.shape[0], relaxed.dtype)

    def _control(self, ctx: Context, z: jax.Array) -> jax.Array:
        temperature = jnp.exp(self.log_temperature)
        relaxed = jax.nn.sigmoid(z / temperature)
        frozen = jax.lax.stop_gradient(ctx.params)
        return self.eta * ctx.f_control(relaxed, params=frozen) + self._network(jax.nn.sigmoid(z))

    def terms(self, ctx: Context, key: jax.Array, num_samples: int) -> jax.Array:
        name = type(self).__name__
        if not _is_bernoulli(ctx.dist):
            raise ValueError(
                f"{name} serves Bernoulli distributions, but dist_fn returned "
                f"{type(ctx.dist).__name__}. Use {_ALTERNATIVES} instead."
            )
        logits = bernoulli_logits(ctx, num_samples, name, _ALTERNATIVES, exact=True)
        key_u, key_v = jax.random.split(key)
        noise = jax.lax.stop_gradient(logistic_noise(key_u, logits.shape, logits.dtype))
        tiny = jnp.finfo(logits.dtype).tiny
        v = jax.random.uniform(key_v, logits.shape, logits.dtype, minval=tiny, maxval=1.0)
        z = logits + noise
        b = jax.lax.stop_gradient((z > 0).astype(logits.dtype))
        z_tilde = _conditional_z(logits, b, v)
        log_p = b * jax.nn.log_sigmoid(logits) + (1.0 - b) * jax.nn.log_sigmoid(-logits)
        log_p = log_p.reshape(num_samples, -1).sum(axis=1)
        fb = ctx.f(b)
        c_z = self._control(ctx, z)
        c_zt = self._control(ctx, z_tilde)
        score = (magic_box(log_p) - 1.0) * (jax.lax.stop_gradient(fb) - c_zt)
        correction = c_z - c_zt
        return fb + score + correction - jax.lax.stop_gradient(correction)


@pytree_dataclass
class RELAX(REBAR):
    r"""RELAX: REBAR's control variate plus a learned network ``r_ψ``, trained for low variance.

    .. math::

        c(z) = \eta\, f(\sigma_\lambda(z)) + r_\psi(\sigma(z)), \qquad
        \hat g = \big(f_\theta(b) - c(\tilde z)\big)\nabla_\theta \log p_\theta(b)
          + \nabla_\theta c(z) - \nabla_\theta c(\tilde z) + \nabla_\theta f_\theta(b),

    unbiased for any ``c``. ``r_ψ`` is a small tanh MLP on the flattened ``σ(z)`` (all units
    of one sample) returning a scalar. ``RELAX()`` has no network yet (``net=None``: it is
    REBAR); :meth:`create` builds one with the last layer at zero (so it starts as REBAR) and
    :func:`fit_control_variate` trains ``η``, ``λ`` and ``ψ`` together by minimising the
    estimator's variance. Three evaluations of f per sample, as REBAR; the network's cost is
    extra. Same requirements on f as :class:`REBAR`.

    Args:
      log_temperature, eta: as in :class:`REBAR`.
      net: ``None`` or a tuple of ``(W, b)`` layers (see :meth:`create`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> import numpyro.distributions as dist
      >>> est = RELAX.create(jax.random.key(0), num_latents=1)
      >>> est = fit_control_variate(est, lambda p, b: (b - 0.499) ** 2,
      ...                           lambda p: dist.Bernoulli(logits=p), jnp.array(0.3),
      ...                           jax.random.key(1), num_samples=1, steps=200)

    References:
      Grathwohl, Choi, Wu, Roeder & Duvenaud (2018), "Backpropagation through the void:
      optimizing control variates for black-box gradient estimation", ICLR.
    """

    net: Any = None

    @classmethod
    def create(
        cls,
        key: jax.Array,
        num_latents: int,
        hidden: Sequence[int] = (10,),
        log_temperature: float = math.log(0.5),
        eta: float = 1.0,
    ) -> RELAX:
        """A RELAX estimator with an initialised surrogate network.

        Args:
          key: PRNG key for the weights.
          num_latents: the number of Bernoulli units in one sample (``prod(batch_shape)``).
          hidden: widths of the hidden layers.
          log_temperature, eta: initial REBAR parameters.
        """
        if not (isinstance(num_latents, int) and num_latents >= 1):
            raise ValueError(f"RELAX.create: num_latents must be an int ≥ 1, got {num_latents!r}.")
        sizes = [num_latents, *hidden, 1]
        keys = jax.random.split(key, len(sizes) - 1)
        net = []
        for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
            last = i == len(sizes) - 2
            w = jnp.zeros((n_in, n_out)) if last else jax.random.normal(k, (n_in, n_out))
            net.append((w / math.sqrt(n_in), jnp.zeros((n_out,))))
        return cls(
            log_temperature=jnp.asarray(log_temperature), eta=jnp.asarray(eta), net=tuple(net)
        )

    def _network(self, relaxed: jax.Array) -> jax.Array:
        n = relaxed.shape[0]
        if self.net is None:
            return jnp.zeros(n, relaxed.dtype)
        flat = relaxed.reshape(n, -1)
        n_in = self.net[0][0].shape[0]
        if flat.shape[1] != n_in:
            raise ValueError(
                f"RELAX: the network takes {n_in} latents but a sample has {flat.shape[1]}. "
                f"Build it with RELAX.create(key, num_latents={flat.shape[1]})."
            )
        return jax.vmap(lambda x: _mlp(self.net, x))(flat)


# --------------------------------------------------------------------------- training


def _mean_terms(
    estimator: Estimator, f: Callable, dist_fn: Callable, params: PyTree, key: jax.Array, n: int
) -> jax.Array:
    ctx = Context(f, dist_fn(params), params, differentiates_f=estimator.name)
    return jnp.mean(estimator.terms(ctx, key, n))


def variance_gradient(
    estimator: REBAR,
    f: Callable[[PyTree, Any], Any],
    dist_fn: Callable[[PyTree], Any],
    params: PyTree,
    key: jax.Array,
    num_samples: int,
) -> tuple[REBAR, PyTree, jax.Array]:
    r"""The gradient of the estimator's variance with respect to its control-variate parameters.

    For an unbiased estimate ``ĝ`` of ``∇θ J``, ``E[ĝ]`` does not depend on the control-variate
    parameters ``ψ`` (``η``, ``λ``, the network), so

    .. math::

        \nabla_\psi \operatorname{Var}[\hat g] = \nabla_\psi\, \mathbb{E}\,\|\hat g\|^2
          = \mathbb{E}\big[\nabla_\psi \|\hat g\|^2\big],

    and ``∇ψ ‖ĝ‖²`` on one batch is an unbiased estimate of it (a second derivative through the
    surrogate). Pure and jittable.

    Args:
      estimator: a :class:`REBAR` or :class:`RELAX` (its array fields are ``ψ``).
      f, dist_fn: as in :func:`expectax.expectation`.
      params: θ.
      key: PRNG key for this batch.
      num_samples: ``N``.

    Returns:
      ``(grads, g, sq)``: ``grads`` an estimator-shaped pytree of ``∇ψ ‖ĝ‖²`` (apply it with
      any optimiser, e.g. ``optax.adam(1e-2).update(grads, opt_state)``), ``g`` the gradient
      estimate ``ĝ`` itself (a pytree like params, usable for the model update on the same
      batch) and ``sq = ‖ĝ‖²``.
    """

    def loss(est: REBAR) -> tuple[jax.Array, PyTree]:
        g = jax.grad(lambda p: _mean_terms(est, f, dist_fn, p, key, num_samples))(params)
        sq = sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(g))
        return sq, g

    (sq, g), grads = jax.value_and_grad(loss, has_aux=True)(estimator)
    return grads, g, sq


def fit_control_variate(
    estimator: REBAR,
    f: Callable[[PyTree, Any], Any],
    dist_fn: Callable[[PyTree], Any],
    params: PyTree,
    key: jax.Array,
    num_samples: int,
    steps: int = 500,
    learning_rate: float = 0.01,
) -> REBAR:
    """Train REBAR/RELAX's control-variate parameters at fixed θ by Adam on the variance.

    Runs ``steps`` Adam updates (``lax.scan``, jitted) on :func:`variance_gradient`, each with
    a fresh key. In a training loop of your own, interleave :func:`variance_gradient` with the
    model's updates instead (the papers do).

    Args:
      estimator: the starting :class:`REBAR` or :class:`RELAX`.
      f, dist_fn, params, num_samples: the problem, as in :func:`variance_gradient`.
      key: PRNG key.
      steps: number of Adam steps.
      learning_rate: Adam's step size.

    Returns:
      The estimator with trained parameters (same class).
    """
    if not isinstance(estimator, REBAR):
        raise TypeError(
            f"fit_control_variate trains REBAR or RELAX, got {type(estimator).__name__}."
        )
    leaves, treedef = jax.tree_util.tree_flatten(estimator)
    leaves = [jnp.asarray(leaf, dtype=jnp.result_type(float)) for leaf in leaves]
    estimator = jax.tree_util.tree_unflatten(treedef, leaves)
    b1, b2, eps = 0.9, 0.999, 1e-8

    def step(carry: tuple, inputs: tuple) -> tuple[tuple, jax.Array]:
        est, m, v = carry
        k, t = inputs
        grads, _, sq = variance_gradient(est, f, dist_fn, params, k, num_samples)
        m = jax.tree_util.tree_map(lambda a, g: b1 * a + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda a, g: b2 * a + (1 - b2) * g * g, v, grads)
        scale_m, scale_v = 1.0 - b1**t, 1.0 - b2**t
        est = jax.tree_util.tree_map(
            lambda p, a, s: p - learning_rate * (a / scale_m) / (jnp.sqrt(s / scale_v) + eps),
            est,
            m,
            v,
        )
        return (est, m, v), sq

    zeros = jax.tree_util.tree_map(jnp.zeros_like, estimator)
    keys = jax.random.split(key, steps)
    ts = jnp.arange(1, steps + 1, dtype=jnp.result_type(float))
    run = jax.jit(lambda est: jax.lax.scan(step, (est, zeros, zeros), (keys, ts))[0][0])
    return run(estimator)
