r"""Sampling-side variance reduction: antithetic pairs and randomised quasi-Monte Carlo.

Both change *which* standard-normal noise ``ε`` feeds the location-scale reparameterisation
``x = μ + L ε`` (``L = σ`` for a Normal, the Cholesky factor for a MultivariateNormal); every
sample keeps the marginal law ``p_θ``, so any estimator that averages per-sample terms stays
unbiased. They are the ``antithetic`` and ``qmc`` fields of :class:`expectax.Pathwise` and
:class:`expectax.ScoreFunction`.

.. math::

    \text{antithetic:}\ \ \{\mu + L\epsilon_i,\ \mu - L\epsilon_i\}_{i=1}^{N/2},
    \qquad
    \text{RQMC:}\ \ \epsilon_i = \Phi^{-1}(u_i),\ u_{1:N} = \text{scrambled Sobol points}.

Antithetic pairs cancel the odd part of f (exactly, for a linear f); randomised QMC fills the
cube more evenly than i.i.d. points, so smooth integrands converge faster than ``1/√N``.

References:
  Owen (2013), "Monte Carlo theory, methods and examples", chapters 8 and 17.
  Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
  learning", JMLR 21(132), section 8.2.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_num_samples", "location_scale", "sample", "standard_normal"]

# Uniforms are clipped to [2^-24, 1 - 2^-24] before Φ^{-1}, so no point maps to ±inf.
_U_EPS = 2.0**-24
# scipy.stats.qmc.Sobol's direction numbers (Joe & Kuo) cover this many dimensions.
_SOBOL_MAX_DIM = 21201


def check_num_samples(num_samples: int, antithetic: bool, owner: str) -> None:
    """Raise ``ValueError`` if antithetic sampling gets an odd number of samples."""
    if antithetic and num_samples % 2:
        raise ValueError(
            f"{owner}(antithetic=True) needs an even num_samples: num_samples counts "
            f"evaluations of f, drawn as num_samples/2 mirrored pairs; got {num_samples}. "
            f"Use num_samples={num_samples + 1} (or chunk_size even), or antithetic=False."
        )


def location_scale(dist: Any, owner: str = "antithetic/qmc sampling") -> tuple[tuple, Callable]:
    """The noise shape and the map ``ε ↦ x`` of a location-scale distribution with Normal noise.

    Supports ``Normal`` (any batch shape), ``Independent``/expanded wrappers around it, and
    ``MultivariateNormal``. The map is differentiable in the distribution's parameters, so it
    is the reparameterisation used by :class:`expectax.Pathwise`.

    Args:
      dist: a numpyro distribution.
      owner: who asks (for the error message).

    Returns:
      ``(shape, transform)``: ``ε`` for one sample has shape ``shape``
      (``batch_shape + event_shape``); ``transform(eps)`` maps ``(N, *shape)`` to samples.

    Raises:
      ValueError: for any other family (the maths of mirrored/QMC Gaussian noise needs it).
    """
    import numpyro.distributions as nd

    inner = dist
    while isinstance(inner, (nd.Independent, nd.ExpandedDistribution)):
        inner = inner.base_dist
    shape = tuple(dist.batch_shape) + tuple(dist.event_shape)
    if type(inner) is nd.Normal:
        loc, scale = inner.loc, inner.scale
        return shape, lambda eps: loc + scale * eps
    if isinstance(inner, nd.MultivariateNormal) and inner is dist:
        loc, tril = dist.loc, dist.scale_tril
        return shape, lambda eps: loc + jnp.einsum("...ij,...j->...i", tril, eps)
    raise ValueError(
        f"{owner} needs a location-scale distribution with Gaussian noise (numpyro's Normal, "
        f"Normal(...).to_event(k) or MultivariateNormal), so that x = loc + scale·ε with "
        f"mirrored or quasi-random ε keeps the law of x; got {type(dist).__name__}. Use "
        "antithetic=False, qmc=False for this distribution, or reparameterise it through a "
        "Normal with Pathwise.from_transform(dist.Normal(0., 1.), g)."
    )


def _sobol_numpy(seed: np.ndarray, n: int, d: int) -> np.ndarray:
    from scipy.stats import qmc

    engine = qmc.Sobol(d, scramble=True, rng=np.random.default_rng(np.asarray(seed).tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balance warning when n is not a power of 2
        points = engine.random(n)
    return points.astype(np.float32)


def _sobol_uniforms(key: jax.Array, n: int, d: int) -> jax.Array:
    """``n`` scrambled-Sobol points in ``[0, 1)^d`` (a fresh Owen scrambling per key)."""
    try:
        import scipy.stats  # noqa: F401
    except ImportError as err:  # pragma: no cover - scipy is installed with expectax[test]
        raise ImportError("qmc=True needs scipy (pip install scipy).") from err
    seed = jax.random.bits(key, (4,), jnp.uint32)
    out = jax.ShapeDtypeStruct((n, d), jnp.float32)
    return jax.pure_callback(lambda s: _sobol_numpy(s, n, d), out, seed, vmap_method="sequential")


def standard_normal(
    key: jax.Array,
    num_samples: int,
    shape: tuple[int, ...],
    *,
    antithetic: bool = False,
    qmc: bool = False,
    dtype: Any = jnp.float32,
) -> jax.Array:
    r"""Standard-normal noise of shape ``(num_samples, *shape)``, optionally mirrored and/or RQMC.

    .. math::

        \epsilon_{i + N/2} = -\epsilon_i \ (\text{antithetic}), \qquad
        \epsilon_i = \Phi^{-1}(u_i),\ u = \text{scrambled Sobol} \ (\text{qmc}).

    Args:
      key: a PRNG key.
      num_samples: ``N`` (even when ``antithetic``).
      shape: the noise shape of one sample.
      antithetic: draw ``N/2`` points and append their mirror images.
      qmc: use randomised (Owen-scrambled) Sobol points mapped through ``Φ^{-1}`` (the
        uniforms are clipped to ``[2^-24, 1 − 2^-24]``); runs scipy through
        ``jax.pure_callback``, so it works under ``jit`` and ``vmap``.
      dtype: the float dtype.

    Returns:
      ``ε`` with shape ``(num_samples, *shape)``; each ``ε_i`` is exactly ``N(0, I)``.

    Example:
      >>> eps = standard_normal(jax.random.key(0), 8, (3,), antithetic=True, qmc=True)
    """
    check_num_samples(num_samples, antithetic, "standard_normal")
    n = num_samples // 2 if antithetic else num_samples
    d = max(math.prod(shape), 1)
    if qmc and d > _SOBOL_MAX_DIM:
        raise ValueError(
            f"qmc=True draws Sobol points of dimension {d} (the noise of one sample, shape "
            f"{tuple(shape)}), but scipy's Sobol sequence supports at most {_SOBOL_MAX_DIM} "
            "dimensions. Use qmc=False (plain or antithetic=True sampling) for this "
            "distribution."
        )
    if qmc:
        u = jnp.clip(_sobol_uniforms(key, n, d), _U_EPS, 1.0 - _U_EPS)
        eps = jax.scipy.special.ndtri(u).astype(dtype).reshape((n, *shape))
    else:
        eps = jax.random.normal(key, (n, *shape), dtype)
    if antithetic:
        eps = jnp.concatenate([eps, -eps], axis=0)
    return jax.lax.stop_gradient(eps)


def sample(
    dist: Any,
    key: jax.Array,
    num_samples: int,
    *,
    antithetic: bool = False,
    qmc: bool = False,
    owner: str = "antithetic/qmc sampling",
) -> jax.Array:
    """Reparameterised samples ``loc + scale·ε`` with antithetic and/or RQMC noise.

    Args:
      dist: a Normal-noise location-scale distribution (see :func:`location_scale`). When
        ``per_sample_grads`` stacks θ, its leaves carry the sample axis and sample i pairs with
        copy i.
      key: a PRNG key.
      num_samples: ``N`` (even when ``antithetic``).
      antithetic, qmc: see :func:`standard_normal`.
      owner: who asks (for error messages).

    Returns:
      Samples of shape ``(N, *batch_shape, *event_shape)``, differentiable in dist's parameters.
    """
    check_num_samples(num_samples, antithetic, owner)
    shape, transform = location_scale(dist, owner)
    dtype = jnp.result_type(*[leaf for leaf in jax.tree_util.tree_leaves(dist)], jnp.float32)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    eps = standard_normal(key, num_samples, shape, antithetic=antithetic, qmc=qmc, dtype=dtype)
    return transform(eps)
