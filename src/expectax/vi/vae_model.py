r"""The discrete VAE of ``expectax vae``: model, objective and the estimators it can train with.

A variational autoencoder with ``L`` Bernoulli latents ``b`` for binarised images ``x``,

.. math::

    \mathrm{ELBO}(\theta, \phi; x) = \mathbb{E}_{q_\phi(b \mid x)}\big[
        \log p_\theta(x \mid b) + \log p_\theta(b) - \log q_\phi(b \mid x) \big],
    \qquad q_\phi(b \mid x)
    = \prod_{l=1}^L \mathrm{Bernoulli}\big(b_l;\ \sigma(\mathrm{enc}_\phi(x)_l)\big).

The architectures are those of Dong, Mnih & Tucker (2020), after Tucker et al. (2017):
``linear`` (affine encoder and decoder) and ``nonlinear`` (two hidden layers of 200
LeakyReLU(0.3) units on each side). Each image's ELBO is an :func:`expectax.expectation`
(:func:`make_loss`), so ``jax.grad`` of the loss is the chosen estimator's gradient.

**The zero-mean term.** The integrand depends on φ through ``−log q_φ(b | x)``; its direct
gradient ``−∇φ log q_φ(b | x)`` has expectation zero but adds variance. The DisARM reference
(google-research/disarm) drops it: only the estimator's term reaches the encoder. So does
:func:`make_loss` by default (``log_q_grad=False``: ``log q`` is evaluated at
``stop_gradient`` of the encoder's logits); ``log_q_grad=True`` keeps it. VIMCO always keeps
it: in the gradient of the multi-sample bound the term is weighted by the normalised
importance weights and is not zero-mean.

The training loop is in :mod:`expectax.vi.vae_train`, the command line in
:mod:`expectax.vi.vae`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import expectax as ex

__all__ = [
    "ESTIMATORS",
    "MAX_JOINT_LATENTS",
    "RELAX_HIDDEN",
    "TRAINED_CONTROL_VARIATE",
    "VAEConfig",
    "available_estimators",
    "elbo",
    "encode",
    "importance_weighted_bound",
    "init_params",
    "log_joint",
    "make_estimator",
    "make_loss",
    "needs_joint",
    "num_samples_for",
]

PyTree = Any

# --------------------------------------------------------------------------- estimators

#: ``--estimator`` name → (module, class, description). Imported lazily by name, so a
#: family that is missing from this install of expectax gives a clear error, not a crash.
ESTIMATORS: dict[str, tuple[str, str, str]] = {
    "reinforce": ("expectax.estimators.score_function", "ScoreFunction", "no baseline"),
    "rloo": ("expectax.baselines", "LeaveOneOut", "ScoreFunction(baseline=LeaveOneOut())"),
    "arm": ("expectax.estimators.arm", "ARM", "antithetic pairs"),
    "disarm": ("expectax.estimators.arm", "DisARM", "antithetic pairs"),
    "rebar": ("expectax.estimators.relax", "REBAR", "control variate trained"),
    "relax": ("expectax.estimators.relax", "RELAX", "control variate trained"),
    "vimco": ("expectax.estimators.multi_sample", "VIMCO", "trains the k-sample bound"),
    "unordered-set": ("expectax.estimators.multi_sample", "UnorderedSet", "without replacement"),
    "gumbel-softmax": ("expectax.estimators.relaxed", "GumbelSoftmax", "biased relaxation"),
    "st-gumbel-softmax": (
        "expectax.estimators.relaxed",
        "GumbelSoftmax",
        "GumbelSoftmax(straight_through=True): exact samples forward, biased",
    ),
    "st": ("expectax.estimators.relaxed", "StraightThrough", "biased"),
}


def _load(name: str) -> Any:
    if name not in ESTIMATORS:
        raise ValueError(
            f"--estimator {name!r} is unknown; choose from {', '.join(ESTIMATORS)} (or 'all')."
        )
    module, cls, _ = ESTIMATORS[name]
    try:
        obj = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as err:
        ready = [n for n in ESTIMATORS if n != name and _available(n)]
        raise ValueError(
            f"--estimator {name}: {cls} is not available in this installation of expectax "
            f"({module}.{cls} could not be imported: {err}). Pick one that is: "
            f"{', '.join(ready)}."
        ) from err
    return obj


def _available(name: str) -> bool:
    module, cls, _ = ESTIMATORS[name]
    try:
        return hasattr(importlib.import_module(module), cls)
    except ImportError:
        return False


def available_estimators() -> list[str]:
    """The ``--estimator`` names whose implementation this install of expectax provides."""
    return [n for n in ESTIMATORS if _available(n)]


def make_estimator(
    name: str, *, temperature: float = 0.5, latents: int = 32, key: jax.Array | None = None
) -> ex.Estimator:
    """The estimator behind an ``--estimator`` name, with its defaults.

    ``temperature`` sets the Gumbel-softmax relaxation (also of its straight-through variant,
    ``st-gumbel-softmax``); ``latents`` and ``key`` size and
    initialise RELAX's surrogate network (``RELAX.create``). REBAR and RELAX come with float
    arrays as control-variate parameters, ready to be trained (see :func:`train`).
    """
    obj = _load(name)
    if name == "reinforce":
        return obj()
    if name == "rloo":
        return ex.ScoreFunction(baseline=obj())
    if name in ("gumbel-softmax", "st-gumbel-softmax", "st"):
        fields = (
            {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        )
        kwargs = {"temperature": temperature} if "temperature" in fields else {}
        if name == "st-gumbel-softmax":
            kwargs["straight_through"] = True
        return obj(**kwargs)
    if name == "relax":
        key = jax.random.key(0) if key is None else key
        return obj.create(key, num_latents=latents, hidden=(RELAX_HIDDEN,))
    if name == "rebar":
        est = obj()
        return jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.result_type(float)), est)
    return obj()


#: Width of RELAX's surrogate network ``r_ψ(σ(z))`` (one tanh hidden layer).
RELAX_HIDDEN = 50

#: Estimators whose control-variate parameters are trained to minimise the gradient variance.
TRAINED_CONTROL_VARIATE = ("rebar", "relax")


def num_samples_for(estimator: ex.Estimator, evaluations: int) -> int:
    """The largest ``num_samples`` whose cost is at most ``evaluations`` evaluations of f.

    ARM and DisARM count antithetic pairs (2 evaluations each), so ``--evaluations 2`` gives
    them one pair and RLOO two samples: equal cost, as in the DisARM paper's comparisons.
    Estimators that need more than the budget get their minimum (reported in the CSV).
    """
    best = estimator.min_samples()
    n = best
    while n <= evaluations and estimator.evaluations(n) <= evaluations:
        best = n
        n += 1
    return best


# --------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Static description of the model: data dimension, latents, architecture."""

    data_dim: int
    latents: int = 32
    model: str = "linear"
    hidden: int = 200
    slope: float = 0.3


def _dense(key: jax.Array, n_in: int, n_out: int) -> dict[str, jax.Array]:
    scale = jnp.sqrt(1.0 / n_in)
    return {
        "w": scale * jax.random.truncated_normal(key, -2.0, 2.0, (n_in, n_out)),
        "b": jnp.zeros(n_out),
    }


def _widths(config: VAEConfig, n_in: int, n_out: int) -> list[int]:
    if config.model == "linear":
        return [n_in, n_out]
    return [n_in, config.hidden, config.hidden, n_out]


def init_params(key: jax.Array, config: VAEConfig, pixel_mean: np.ndarray | None = None) -> PyTree:
    """Encoder, decoder and prior parameters; the decoder's output bias at the pixel logits."""
    if config.model not in ("linear", "nonlinear"):
        raise ValueError(f"--model must be 'linear' or 'nonlinear', got {config.model!r}.")
    k_enc, k_dec = jax.random.split(key)
    enc_w = _widths(config, config.data_dim, config.latents)
    dec_w = _widths(config, config.latents, config.data_dim)
    enc = [
        _dense(k, a, b)
        for k, (a, b) in zip(jax.random.split(k_enc, len(enc_w) - 1), pairwise(enc_w), strict=True)
    ]
    dec = [
        _dense(k, a, b)
        for k, (a, b) in zip(jax.random.split(k_dec, len(dec_w) - 1), pairwise(dec_w), strict=True)
    ]
    if pixel_mean is not None:
        p = jnp.clip(jnp.asarray(pixel_mean, jnp.float32), 1e-3, 1 - 1e-3)
        dec[-1]["b"] = jnp.log(p) - jnp.log1p(-p)
    return {"encoder": enc, "decoder": dec, "prior": jnp.zeros(config.latents)}


def _mlp(layers: list[dict[str, jax.Array]], h: jax.Array, slope: float) -> jax.Array:
    for i, layer in enumerate(layers):
        h = h @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            h = jax.nn.leaky_relu(h, slope)
    return h


def encode(params: PyTree, x: jax.Array, config: VAEConfig) -> jax.Array:
    """Logits of ``q_φ(b | x)``, shape ``(L,)`` for one image ``x`` of shape ``(D,)``."""
    return _mlp(params["encoder"], 2.0 * x - 1.0, config.slope)


def _bernoulli_log_pmf(logits: jax.Array, b: jax.Array) -> jax.Array:
    # log σ(l)^b (1 − σ(l))^(1−b) = b·l − softplus(l); also defined for relaxed b in (0, 1)
    return jnp.sum(b * logits - jax.nn.softplus(logits), axis=-1)


def log_joint(params: PyTree, x: jax.Array, b: jax.Array, config: VAEConfig) -> jax.Array:
    """``log p_θ(x | b) + log p_θ(b)`` for one image and one latent vector (scalar)."""
    x_logits = _mlp(params["decoder"], 2.0 * b - 1.0, config.slope)
    return _bernoulli_log_pmf(x_logits, x) + _bernoulli_log_pmf(params["prior"], b)


def _log_weight(
    params: PyTree, x: jax.Array, b: jax.Array, config: VAEConfig, log_q_grad: bool = True
) -> jax.Array:
    """``log p_θ(x, b) − log q_φ(b | x)``: the ELBO's integrand.

    With ``log_q_grad=False`` the value is the same but ``log q`` sees ``stop_gradient`` of the
    encoder's logits: the zero-mean term ``−∇φ log q_φ(b | x)`` is dropped from the gradient
    (a path through a relaxed ``b`` is kept).
    """
    logits = encode(params, x, config)
    if not log_q_grad:
        logits = jax.lax.stop_gradient(logits)
    return log_joint(params, x, b, config) - _bernoulli_log_pmf(logits, b)


def _posterior(params: PyTree, x: jax.Array, config: VAEConfig) -> dist.Distribution:
    return dist.Bernoulli(logits=encode(params, x, config)).to_event(1)


def elbo(params: PyTree, x: jax.Array, key: jax.Array, config: VAEConfig, k: int = 1) -> jax.Array:
    """Monte Carlo ELBO of one image with ``k`` exact samples of ``q`` (no gradient intended)."""
    logits = encode(params, x, config)
    b = jax.random.bernoulli(key, jax.nn.sigmoid(logits), (k, config.latents)).astype(x.dtype)
    return jnp.mean(jax.vmap(lambda bj: _log_weight(params, x, bj, config))(b))


def importance_weighted_bound(
    params: PyTree, x: jax.Array, key: jax.Array, config: VAEConfig, k: int = 100
) -> jax.Array:
    """The ``k``-sample importance-weighted bound ``log (1/k) Σ_j p(x, b_j) / q(b_j | x)``."""
    logits = encode(params, x, config)
    b = jax.random.bernoulli(key, jax.nn.sigmoid(logits), (k, config.latents)).astype(x.dtype)
    logw = jax.vmap(lambda bj: _log_weight(params, x, bj, config))(b)
    return jax.nn.logsumexp(logw) - jnp.log(k)


#: The largest ``--latents`` for which the joint of all ``2^L`` latent configurations is
#: enumerated as one Categorical (needed by ``unordered-set``).
MAX_JOINT_LATENTS = 16


def _configurations(latents: int) -> jax.Array:
    """All ``2^L`` binary vectors, shape ``(2^L, L)``; row ``i`` is the binary expansion of i."""
    bits = (np.arange(2**latents)[:, None] >> np.arange(latents - 1, -1, -1)[None, :]) & 1
    return jnp.asarray(bits, dtype=jnp.float32)


def _joint_posterior(params: PyTree, x: jax.Array, config: VAEConfig, bs: jax.Array) -> Any:
    """``q_φ(b | x)`` as one Categorical over the rows of ``bs`` (all configurations)."""
    return dist.Categorical(logits=_bernoulli_log_pmf(encode(params, x, config), bs))


def needs_joint(estimator: ex.Estimator) -> bool:
    """Whether the estimator samples one Categorical (without replacement), not Bernoullis."""
    return type(estimator).__name__ in ("UnorderedSet", "SumAndSample")


def make_loss(
    estimator: ex.Estimator, config: VAEConfig, num_samples: int, *, log_q_grad: bool = False
) -> Callable[[PyTree, jax.Array, jax.Array], jax.Array]:
    """``loss(params, batch, key)``: minus the mean over the batch of each image's objective.

    Each image's objective is ``expectax.expectation(f, q(·|x), estimator=..., num_samples=...)``
    with ``f(params, b) = log p(x, b) − log q(b | x)`` and ``q(·|x)`` the Bernoulli posterior
    (``Bernoulli(logits=enc(x)).to_event(1)``), so ``jax.grad(loss)`` is the estimator's
    gradient. Per estimator:

    - VIMCO returns the ``K``-sample importance-weighted bound for the log-weight f (the
      objective VIMCO trains), ``K = num_samples``; the others return the ELBO estimate.
    - ``log_q_grad=False`` (the default, as the DisARM reference) drops the zero-mean
      ``−∇φ log q_φ(b | x)`` term from the gradient (the value is unchanged); VIMCO keeps it
      always (not zero-mean in the gradient of the multi-sample bound).
    - UnorderedSet samples without replacement from one Categorical, so ``q(·|x)`` becomes the
      Categorical over all ``2^L`` configurations (f decodes the index into bits); it needs
      ``L ≤ MAX_JOINT_LATENTS``.
    """
    joint = needs_joint(estimator)
    if joint and config.latents > MAX_JOINT_LATENTS:
        raise ValueError(
            f"--estimator {type(estimator).__name__}: sampling without replacement needs the "
            f"joint of all 2^L latent configurations as one Categorical, so --latents must be "
            f"at most {MAX_JOINT_LATENTS}; got {config.latents}. Use --latents 10, or "
            "--estimator disarm / rloo for more latents."
        )
    bs = _configurations(config.latents) if joint else None
    keep = log_q_grad or type(estimator).__name__ == "VIMCO"

    def per_image(params: PyTree, x: jax.Array, key: jax.Array) -> jax.Array:
        if joint:
            f = lambda p, i: _log_weight(p, x, bs[i], config, keep)
            dist_fn = lambda p: _joint_posterior(p, x, config, bs)
        else:
            f = lambda p, b: _log_weight(p, x, b, config, keep)
            dist_fn = lambda p: _posterior(p, x, config)
        E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=num_samples)
        return E(params, key)

    def loss(params: PyTree, batch: jax.Array, key: jax.Array) -> jax.Array:
        keys = jax.random.split(key, batch.shape[0])
        return -jnp.mean(jax.vmap(per_image, in_axes=(None, 0, 0))(params, batch, keys))

    return loss
