"""ELBOs for numpyro models and guides, with per-site estimators and baselines.

``expectax.infer.TraceGraph_ELBO`` is a drop-in for ``numpyro.infer.TraceGraph_ELBO`` (same
constructor arguments and ``loss``; usable as ``loss=`` in ``numpyro.infer.SVI``): each ELBO
is a stochastic program (:mod:`expectax.programs`) whose cost is ``log p − log q``.
``expectax.infer.IWELBO`` is the importance-weighted (multi-sample) bound, with VIMCO for
discrete guide sites and, optionally, DReG for reparameterised ones.
``expectax.infer.with_baselines`` carries the baselines' history through ``SVI``;
``expectax.infer.softmax_simplex`` optimises a guide's ``simplex`` params as Pyro does.
"""

from expectax.infer.elbo import BASELINE_STATE, IWELBO, TraceGraph_ELBO, with_baselines
from expectax.infer.simplex import softmax_simplex

__all__ = ["BASELINE_STATE", "IWELBO", "TraceGraph_ELBO", "softmax_simplex", "with_baselines"]
