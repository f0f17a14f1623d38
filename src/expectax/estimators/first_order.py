"""Surrogates whose first derivative is an estimator but whose second is not: refuse it.

A per-site estimator such as DisARM, REBAR/RELAX or the unordered-set estimator builds a
surrogate whose *gradient* is unbiased; differentiating that gradient again gives a number
that estimates nothing (often zero). :func:`first_order_only` passes its argument and its
first derivative through unchanged, in forward and reverse mode, and raises a ``ValueError``
naming the estimator when a second derivative reaches it (``jax.hessian``, ``jax.grad`` of
``jax.grad``, ``jax.jvp`` of ``jax.grad``), instead of returning a wrong Hessian silently.
"""

from __future__ import annotations

import functools

import jax

__all__ = ["first_order_only"]


def first_order_only(x: jax.Array, what: str) -> jax.Array:
    """``x`` unchanged, differentiable once; a second derivative raises, naming ``what``."""
    return _once(what, x)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _once(what: str, x: jax.Array) -> jax.Array:
    return x


@_once.defjvp
def _once_jvp(what, primals, tangents):
    (x,), (dx,) = primals, tangents
    return _once(what, x), _never(what, x, dx)


def _never(what: str, x: jax.Array, dx: jax.Array) -> jax.Array:
    # dx times a one that depends on x: however JAX stages the first derivative, a second
    # derivative has to differentiate _unit at x, whose rule raises
    return dx * _unit(what, x)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _unit(what: str, x: jax.Array) -> jax.Array:
    return jax.lax.integer_pow(x, 0)  # not ones_like: see _unit_exp in base.py


@_unit.defjvp
def _unit_jvp(what, primals, tangents):
    raise ValueError(
        f"{what} gives an unbiased first derivative only; its second derivative (jax.hessian, "
        "grad of grad) would not estimate anything. Use ex.ScoreFunction(...) or ex.Pathwise() "
        "for second derivatives (DiCE's magic box keeps every order unbiased)."
    )
