"""Pyro's parameterisation of a ``simplex`` param, for numpyro guides: ``softmax_simplex``.

numpyro's ``SVI`` optimises a ``numpyro.param(..., constraint=constraints.simplex)`` through
``biject_to(simplex)``, the stick-breaking bijection: ``k − 1`` free numbers per row. Pyro's
parameter store maps the same constraint through a softmax of ``k`` free logits (torch's
``transform_to(simplex)``, whose inverse is the elementwise log). The two are parameterisations
of the same guide, but Adam, which scales every free coordinate on its own, takes different
steps in them; on the ELBO gallery's mixtures the softmax trained better for numpyro's estimator
and for expectax's defaults, not for the plain leave-one-out baseline (docs/elbo-gallery.md,
"Pyro's simplex parameterisation").

:func:`softmax_simplex` wraps a model or guide so that each of its ``simplex`` params is
optimised as Pyro would: the param site's constraint becomes :data:`SOFTMAX_SIMPLEX`, a simplex
constraint (it checks values exactly as ``constraints.simplex`` does) whose ``biject_to`` is a
softmax over the last axis, initialised at the log of the param's initial value. Nothing else
changes: the wrapped function draws the same samples and returns the same value, and
``svi.get_params`` returns the param on the simplex.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.transforms import ParameterFreeTransform, biject_to
from numpyro.primitives import Messenger


class _SoftmaxSimplex(constraints._Simplex):
    """The simplex, reached from free logits through a softmax (Pyro's parameterisation)."""


#: The simplex constraint whose ``biject_to`` is a softmax of free logits (not numpyro's
#: stick-breaking); what :func:`softmax_simplex` gives every ``simplex`` param.
SOFTMAX_SIMPLEX = _SoftmaxSimplex()


class _SoftmaxTransform(ParameterFreeTransform):
    """``softmax`` over the last axis, from ``k`` free logits onto the simplex; its inverse is the
    elementwise ``log`` (torch's ``SoftmaxTransform``). Not a bijection (adding a constant to
    every logit of a row changes nothing), so it has no Jacobian: it parameterises params, not
    densities."""

    domain = constraints.real_vector
    codomain = SOFTMAX_SIMPLEX

    def __call__(self, x):
        return jax.nn.softmax(x, axis=-1)

    def _inverse(self, y):
        return jnp.log(y)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        raise NotImplementedError(
            "the softmax parameterisation of a simplex param is not a bijection and has no "
            "Jacobian; use it for numpyro.param sites only (expectax.infer.softmax_simplex)."
        )


@biject_to.register(_SoftmaxSimplex)
def _softmax_simplex_transform(constraint):
    return _SoftmaxTransform()


class _SoftmaxParams(Messenger):
    def process_message(self, msg):
        if msg["type"] != "param":
            return
        constraint = msg["kwargs"].get("constraint")
        if isinstance(constraint, constraints._Simplex) and not isinstance(
            constraint, _SoftmaxSimplex
        ):
            msg["kwargs"] = dict(msg["kwargs"], constraint=SOFTMAX_SIMPLEX)


def softmax_simplex(fn: Callable) -> Callable:
    """``fn`` (a numpyro guide or model) with every ``simplex`` param optimised as Pyro does.

    ``SVI`` then holds, for a param ``phi`` of shape ``(..., k)`` on the simplex, ``k`` free
    logits per row starting at ``log(phi)``, and uses ``softmax(logits)``, instead of numpyro's
    ``k − 1`` stick-breaking coordinates::

        svi = SVI(model, expectax.infer.softmax_simplex(guide), optax.adam(0.05),
                  loss=expectax.infer.TraceGraph_ELBO(num_particles=4))

    Other params and all sample sites are untouched; it composes with
    :func:`expectax.infer.with_baselines` in either order.
    """
    if not callable(fn):
        raise TypeError(f"softmax_simplex(fn): fn must be a model or guide function, got {fn!r}.")

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with _SoftmaxParams():
            return fn(*args, **kwargs)

    return wrapped
