r"""A two-layer sigmoid belief network as a plain numpyro model and guide.

The discrete VAE of the REBAR/RELAX/DisARM literature, written the way a numpyro user writes
it (no expectax in sight), so that any ELBO of numpyro's (or expectax's drop-in) trains it:

.. math::

    p(z_2)\,p(z_1\mid z_2)\,p(x\mid z_1),\qquad q(z_1\mid x)\,q(z_2\mid z_1),

all Bernoulli with logits affine in the layer above (below, in the guide). Weights are
``numpyro.param`` sites (model ``p_*``, guide ``q_*``); the minibatch is a ``numpyro.plate``
inside ``numpyro.handlers.scale(num_data / batch)``, so the loss estimates the ELBO of the
whole training set. Each layer is one site of shape ``(batch, units)`` with
``.to_event(1)``: a per-site estimator (DisARM, RELAX) sees the layer of one image as one
sample, as in Dong, Mnih & Tucker (2020).

References:
  Neal (1992), "Connectionist learning of belief networks". Mnih & Gregor (2014), "Neural
  variational inference and learning in belief networks". Tucker et al. (2017), "REBAR".
  Dong, Mnih & Tucker (2020), "DisARM".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers

__all__ = ["log_weights", "make_sbn"]


def _normal_init(shape: tuple[int, ...], scale: float) -> Callable[[jax.Array], jax.Array]:
    return lambda key: scale * jax.random.normal(key, shape)


def make_sbn(
    num_pixels: int,
    hidden: tuple[int, int] = (32, 16),
    *,
    pixel_logits: Any = None,
    init_scale: float = 0.1,
) -> tuple[Callable, Callable]:
    """``(model, guide)`` of a ``D → H1 → H2`` sigmoid belief network, each ``f(x, num_data)``.

    Args:
      num_pixels: ``D``, the length of one (flattened, binary) image.
      hidden: ``(H1, H2)``, the units of the two latent layers.
      pixel_logits: initial output biases, shape ``(D,)`` (e.g. the logits of the training
        set's pixel means); zeros when None.
      init_scale: standard deviation of the initial weights.

    Returns:
      ``model(x, num_data)`` and ``guide(x, num_data)`` for a minibatch ``x`` of shape
      ``(B, D)`` out of ``num_data`` training images.
    """
    h1, h2 = (int(h) for h in hidden)
    d = int(num_pixels)
    b0 = jnp.zeros(d) if pixel_logits is None else jnp.asarray(pixel_logits, jnp.float32)

    def model(x, num_data):
        b = x.shape[0]
        p_b2 = numpyro.param("p_b2", jnp.zeros(h2))
        p_w21 = numpyro.param("p_w21", _normal_init((h2, h1), init_scale))
        p_b1 = numpyro.param("p_b1", jnp.zeros(h1))
        p_w10 = numpyro.param("p_w10", _normal_init((h1, d), init_scale))
        p_b0 = numpyro.param("p_b0", b0)
        with handlers.scale(scale=num_data / b), numpyro.plate("data", b):
            z2 = numpyro.sample(
                "z2", dist.Bernoulli(logits=jnp.broadcast_to(p_b2, (b, h2))).to_event(1)
            )
            z1 = numpyro.sample("z1", dist.Bernoulli(logits=z2 @ p_w21 + p_b1).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=z1 @ p_w10 + p_b0).to_event(1), obs=x)

    def guide(x, num_data):
        b = x.shape[0]
        q_w01 = numpyro.param("q_w01", _normal_init((d, h1), init_scale))
        q_b1 = numpyro.param("q_b1", jnp.zeros(h1))
        q_w12 = numpyro.param("q_w12", _normal_init((h1, h2), init_scale))
        q_b2 = numpyro.param("q_b2", jnp.zeros(h2))
        with handlers.scale(scale=num_data / b), numpyro.plate("data", b):
            z1 = numpyro.sample("z1", dist.Bernoulli(logits=x @ q_w01 + q_b1).to_event(1))
            numpyro.sample("z2", dist.Bernoulli(logits=z1 @ q_w12 + q_b2).to_event(1))

    return model, guide


def log_weights(
    model: Callable, guide: Callable, params: dict, x: jax.Array, key: jax.Array, k: int
) -> jax.Array:
    """``log p(x_i, z) − log q(z | x_i)`` for ``k`` guide draws per image: shape ``(k, B)``.

    Unscaled (``num_data = B``), one weight per image of ``x``: the mean over draws is each
    image's ELBO estimate, ``logsumexp − log k`` its importance-weighted bound.
    """
    b = x.shape[0]

    def one(key):
        seeded = handlers.seed(handlers.substitute(guide, data=params), key)
        guide_tr = handlers.trace(seeded).get_trace(x, b)
        model_tr = handlers.trace(
            handlers.replay(handlers.substitute(model, data=params), trace=guide_tr)
        ).get_trace(x, b)
        total = jnp.zeros(b)
        for tr, sign in ((model_tr, 1.0), (guide_tr, -1.0)):
            for site in tr.values():
                if site["type"] == "sample":
                    total = total + sign * site["fn"].log_prob(site["value"])
        return total

    return jax.vmap(one)(jax.random.split(key, k))
