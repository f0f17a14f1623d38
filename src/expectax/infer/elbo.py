r"""``TraceGraph_ELBO``: numpyro's ELBO for non-reparameterised sites, with baselines.

The ELBO of a model ``p(x, z)`` and a guide ``q_φ(z)`` is the expectation under the guide of
the cost ``log p(x, z) − log q_φ(z)``: a stochastic program whose sample sites are the guide's.
Each guide site gets an estimator (per site: by name, or
``numpyro.sample(name, d, infer={"estimator": ...})`` in the guide); the default is
``Pathwise()`` for reparameterisable sites and the score function with a leave-one-out
baseline over the particles otherwise. Rao-Blackwellisation follows the dependency graph
(numpyro's provenance tracking) and the plates, as in numpyro's ``TraceGraph_ELBO``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
from numpyro import handlers
from numpyro.infer.elbo import ELBO

from expectax.estimators.base import Estimator, log_prob

__all__ = ["TraceGraph_ELBO"]


def _elbo_tracer(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Callable:
    """``run(...) -> _Run`` for the ELBO program: guide sites sampled, model replayed."""
    from expectax import programs

    def run(params, key, seed_key, choose, substitutions, provenance=False):
        guide_seed, model_seed = jax.random.split(seed_key)
        guide_s = programs._Sampler(
            handlers.substitute(guide, data=params),
            key=key,
            choose=choose,
            substitutions=substitutions,
            provenance=provenance,
        )
        with handlers.trace() as guide_tr, handlers.seed(rng_seed=guide_seed):
            programs._call(guide_s, args, kwargs)
        model_s = handlers.replay(handlers.substitute(model, data=params), trace=guide_tr)
        with handlers.trace() as model_tr, handlers.seed(rng_seed=model_seed):
            programs._call(model_s, args, kwargs)
        sites, costs = {}, {}
        for name, site in model_tr.items():
            if site["type"] == "sample":
                value = log_prob(site["fn"], site["value"])
                costs[("model", name)] = (programs._scaled(value, site), programs._frames(site))
        for name, site in guide_tr.items():
            if site["type"] != "sample":
                continue
            if site.get("is_observed"):
                raise ValueError(
                    f"the guide has an observed site {name!r}; observed sites belong in the "
                    "model (the guide draws only latent sites)."
                )
            sites[name] = site
            fn = site["fn"]
            if choose(name, site) != "pathwise":
                # as numpyro does: the score term carries the guide's dependence on φ; the
                # direct derivative of −log q_φ has expectation zero and only adds variance.
                # (Only φ is held: a per-site estimator may still differentiate in the value.)
                fn = jax.tree_util.tree_map(jax.lax.stop_gradient, fn)
            value = log_prob(fn, site["value"])
            costs[("guide", name)] = (-programs._scaled(value, site), programs._frames(site))
        return programs._Run(sites, costs, traces=(model_tr, guide_tr))

    return run


class TraceGraph_ELBO(ELBO):
    r"""A drop-in for ``numpyro.infer.TraceGraph_ELBO`` with per-site estimators and baselines.

    .. math::

        \mathrm{ELBO}(\phi) = \mathbb{E}_{z\sim q_\phi}\big[\log p(x, z) - \log q_\phi(z)\big],
        \qquad
        \hat\nabla = \frac1N\sum_{n}\Big[\sum_{s}\big(D_s^{(n)} - b_s^{(n)}\big)
          \nabla_\phi \log q_\phi(z_s^{(n)}) + \nabla_\phi(\text{reparameterised paths})\Big],

    where ``D_s`` is the cost downstream of guide site ``s`` (only the terms that depend on it,
    per plate element for a local site) and ``b_s`` its baseline, by default the mean of the
    other particles' ``D_s`` (leave-one-out; Kool et al. 2019). Sites with another estimator
    (``DisARM()``, ``RELAX()``, ...) use it, with ``f`` the site's downstream cost.

    Same constructor arguments and ``loss(rng_key, param_map, model, guide, *args, **kwargs)``
    as numpyro's (it returns ``−ELBO``); pass it as ``loss=`` to ``numpyro.infer.SVI``.

    Args:
      num_particles: particles per estimate; the leave-one-out default needs 2 or more (with
        1 particle the default is the plain score function, as in numpyro).
      vectorize_particles: ``True`` (vmap), ``False`` (``lax.map``) or a callable.
      estimators: optional mapping from guide site name to estimator; it overrides the
        ``infer={"estimator": ...}`` of the guide's sites.

    Example:
      >>> from numpyro.infer import SVI
      >>> import optax, expectax.infer
      >>> # svi = SVI(model, guide, optax.adam(1e-3), loss=expectax.infer.TraceGraph_ELBO(8))

    References:
      Schulman et al. (2015), "Gradient estimation using stochastic computation graphs".
      Kool, van Hoof & Welling (2019), "Buy 4 REINFORCE samples, get a baseline for free!".
    """

    can_infer_discrete = True

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool | Callable = True,
        *,
        estimators: Mapping[str, Estimator] | None = None,
    ) -> None:
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        from expectax import programs

        programs._check_particles(num_particles)
        programs._check_estimators(estimators)
        self.estimators = dict(estimators or {})

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs) -> jax.Array:
        """``−ELBO``, estimated with ``num_particles`` particles; ``jax.grad`` is the estimator."""
        return self.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)[
            "loss"
        ]

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        from expectax import programs

        engine = programs._Engine(
            num_particles=self.num_particles,
            estimators=self.estimators,
            vectorize=self.vectorize_particles_fn,
            debug=False,
        )
        run = _elbo_tracer(model, guide, args, kwargs)
        elbo = engine.estimate(run, param_map, rng_key, check=_check_traces)
        return {"loss": -elbo, "mutable_state": None}


def _check_traces(run: Any) -> None:
    from numpyro.util import _validate_model, check_model_guide_match

    model_tr, guide_tr = run.traces
    check_model_guide_match(model_tr, guide_tr)
    _validate_model(model_tr, plate_warning="strict")
