r"""Expectations of stochastic programs: many random variables, an estimator per site.

A *stochastic program* is a plain function ``program(params, *args, **kwargs)`` that draws with
``numpyro.sample`` any number of times (in Python loops, inside ``numpyro.plate``, later draws
depending on earlier ones) and adds costs: ``numpyro.factor``, observed sites (their
log-density) and its return value. :func:`program_expectation` turns it into
``E(params, key, *args, **kwargs)``, exactly as :func:`expectax.expectation` does for one
distribution: the value is the Monte Carlo estimate of

.. math::

    J(\theta) = \mathbb{E}_{x \sim p_\theta}\Big[\sum_c c_\theta(x)\Big],

and ``jax.grad(E)`` is an unbiased estimate of ``∇J`` that combines, per sample site, the
estimator chosen for it:

- ``Pathwise()``: the site is drawn with ``rsample`` and gradients flow through its value.
- ``ScoreFunction(baseline=...)``: the site's value is a constant and its log-density enters
  DiCE's magic box of every cost *downstream* of it (Schulman et al. 2015's
  Rao-Blackwellisation: a cost that does not depend on the site does not multiply its score,
  and inside a plate a local site sees only its own elements' costs). Baselines are per site:
  ``LeaveOneOut()`` uses the other particles' downstream costs; ``Constant(c)``. The baseline
  term of Mao et al. (2019) keeps ``jax.hessian`` unbiased.
- any other estimator of expectax that serves the site's distribution (``DisARM()``,
  ``ARM()``, ``RELAX()``, ``REBAR()``, ``MeasureValued()``, the relaxations): its own
  ``terms`` are called with ``f`` = the site's downstream cost, computed by running the program
  again with the site's value substituted (the other sites keep their random numbers, so the
  evaluations share them). Costs local to the site's plate are evaluated for all plate
  elements at once; these estimators give first derivatives (not Hessians).
  ``UnorderedSet()`` and ``SumAndSample()`` draw ``k`` categories of each element's
  distribution (``infer={"num_samples": k}`` on the site, default 2).

The dependency structure comes from numpyro's provenance tracking
(:func:`numpyro.ops.provenance.eval_provenance`), as in numpyro's ``TraceGraph_ELBO``; plates
give conditional independence. Inside numpyro's ``scan``, where provenance cannot see, time
does: a cost that a forward scan produces at step ``s`` multiplies the scores of the scan's
sites at steps ``t ≤ s`` only; the cases that cannot be proved so keep every cost downstream
of every step (``docs/programs.md``). Nothing here is a second implementation of an estimator: the
per-site estimators are the ones :func:`expectax.expectation` uses, and the one-site program
``x = sample("x", p_θ); return f(θ, x)`` has the same expectation and estimator.

References:
  Schulman, Heess, Weber & Abbeel (2015), "Gradient estimation using stochastic computation
  graphs". Foerster et al. (2018), "DiCE: the infinitely differentiable Monte Carlo
  estimator". Mao et al. (2019), "A baseline for any order gradient estimation in stochastic
  computation graphs". van Krieken, Tomczak & ten Teije (2021), "Storchastic: a framework for
  general stochastic automatic differentiation".
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import numpyro.distributions.distribution as numpyro_dist
from numpyro import handlers
from numpyro.ops.provenance import eval_provenance
from numpyro.primitives import Messenger

from expectax import sharding as _sharding
from expectax.baselines import natural_score_weights
from expectax.estimators.base import (
    Context,
    Estimator,
    _check_finite,
    check_fixed_support,
    log_prob,
    magic_box,
    nan_unless_valid,
)
from expectax.estimators.first_order import first_order_only

__all__ = ["default_estimator", "program_expectation"]

PyTree = Any
RETURN = "_RETURN"


# --------------------------------------------------------------------------- site roles


def default_estimator(site: Mapping[str, Any], num_particles: int) -> Estimator:
    """The estimator a site gets when none is chosen for it.

    ``Pathwise()`` for a reparameterisable distribution (``fn.has_rsample``), otherwise the
    score function with :class:`expectax.baselines.WeightedLeaveOneOut` over the particles
    (the plain score function when there is a single particle and no history; see
    ``docs/numpyro.md`` for why it replaced the plain leave-one-out baseline).
    """
    from expectax import baselines
    from expectax.estimators.pathwise import Pathwise
    from expectax.estimators.score_function import ScoreFunction

    if getattr(site["fn"], "has_rsample", False):
        return Pathwise()
    return ScoreFunction(baseline=baselines.WeightedLeaveOneOut())


def _role(estimator: Estimator, name: str, fn: Any, num_particles: int) -> str:
    """How the program engine serves a site: ``pathwise``, ``score`` or ``blackbox``."""
    from expectax import baselines
    from expectax.estimators.multi_sample import VIMCO, SumAndSample, UnorderedSet
    from expectax.estimators.pathwise import Pathwise
    from expectax.estimators.score_function import ScoreFunction
    from expectax.expectation import _check_estimator

    try:
        _check_estimator(estimator)
    except TypeError as err:
        raise TypeError(f"site {name!r}: {err}") from None
    if isinstance(estimator, Pathwise):
        if estimator.transform is not None or estimator.base is not None:
            raise ValueError(
                f"site {name!r}: Pathwise.from_transform brings its own sampler and cannot "
                "serve a numpyro sample site; write the transform inside the program instead."
            )
        if estimator.control_variate is not None or estimator.antithetic or estimator.qmc:
            raise ValueError(
                f"site {name!r}: control variates and antithetic/QMC sampling are one-site "
                "options of Pathwise; in a program use plain ex.Pathwise()."
            )
        if not getattr(fn, "has_rsample", False):
            raise ValueError(
                f"site {name!r}: Pathwise needs a reparameterisable distribution, but "
                f"{type(fn).__name__} has no rsample. Use "
                "ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut()) for this site (or "
                "ex.DisARM() for a Bernoulli/Categorical site)."
            )
        return "pathwise"
    if isinstance(estimator, ScoreFunction):
        if estimator.control_variate is not None or estimator.antithetic or estimator.qmc:
            raise ValueError(
                f"site {name!r}: control variates and antithetic/QMC sampling are one-site "
                "options of ScoreFunction; in a program use ScoreFunction(baseline=...) with "
                "baselines.LeaveOneOut() or baselines.Constant(c)."
            )
        b = estimator.baseline
        allowed = (
            baselines.LeaveOneOut,
            baselines.WeightedLeaveOneOut,
            baselines.DecayingAverage,
            baselines.Constant,
        )
        if b is not None and not isinstance(b, allowed):
            raise ValueError(
                f"site {name!r}: in a program a score-function site takes baseline=None, "
                "baselines.WeightedLeaveOneOut() or baselines.LeaveOneOut() (over the "
                "particles), baselines.DecayingAverage() (in an ELBO through "
                "expectax.infer.with_baselines) or baselines.Constant(c); got "
                f"{type(b).__name__ if not isinstance(b, str) else repr(b)}."
            )
        if isinstance(b, baselines.LeaveOneOut) and num_particles < 2:
            raise ValueError(
                f"site {name!r}: the leave-one-out baseline needs num_particles >= 2 (it "
                f"averages the other particles); got num_particles={num_particles}."
            )
        return "score"
    if isinstance(estimator, VIMCO):
        raise ValueError(
            f"site {name!r}: VIMCO estimates the gradient of an importance-weighted bound, not "
            "of an expected cost, so it cannot serve one site of a program. For VIMCO over a "
            "whole model and guide use expectax.infer.IWELBO; for this site use ex.DisARM(), "
            "ex.RELAX() or ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut())."
        )
    if isinstance(estimator, (UnorderedSet, SumAndSample)):
        return "joint"  # k draws of one element's distribution at a time
    return "blackbox"


@dataclasses.dataclass(frozen=True)
class _Site:
    """What the engine knows about one latent sample site (static, the same for every run)."""

    name: str
    role: str
    estimator: Estimator
    frames: tuple[Any, ...]
    plate_dims: tuple[int, ...]  # the site's plate dims (negative), in batch order
    draws: int = 2  # for UnorderedSet/SumAndSample: draws per element (infer "num_samples")


# --------------------------------------------------------------------------- the sampler


#: ``fold_in(key, _ESTIMATOR_STREAM)``: the per-site estimators' own random numbers (DisARM's
#: antithetic partners, RELAX's noise), apart from the particles' ``split(key, N)``
_ESTIMATOR_STREAM = 0x7E57A7E


#: ``fold_in(key, _CONTROL_FLOW_STREAM + i)``: the key of the run's i-th ``scan``/``cond`` when
#: each particle has its own key (``_Sampler(key=...)``)
_CONTROL_FLOW_STREAM = 0x5CA0000


def _name_hash(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


class _Sampler(Messenger):
    """Draws every latent site as its estimator needs.

    By default the site's key is the one numpyro's ``seed`` handler (inside this one) gave it,
    so a run draws exactly the values numpyro would draw from the same seed; the seed handler
    assigns a key to every site whether or not it is substituted afterwards, so a run with one
    site substituted keeps every other site's random numbers (common random numbers for the
    per-site estimators). With ``key``, each site's key is ``fold_in(key, crc32(name))``
    instead (the importance-weighted bound: per-particle draws, a minibatch shared by all).
    """

    def __init__(
        self, fn, *, choose, substitutions, provenance=False, key=None, refuse_params=False
    ):
        self.key = key
        self.choose = choose
        self.substitutions = substitutions
        self.provenance = provenance
        self.refuse_params = refuse_params
        self._flows = 0  # control-flow calls (scan, cond) seen in this run
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "param" and self.refuse_params and msg["value"] is None:
            _refuse_param(msg["name"])
        if msg["type"] == "control_flow" and self.key is not None:
            # with a per-particle key (the importance-weighted bound) a scan's draws must come
            # from it too: the seed handler's key is shared by the particles, and every
            # particle then drew the same path (the bound of K particles was the ELBO's)
            if msg["kwargs"].get("rng_key") is None:
                msg["kwargs"]["rng_key"] = jax.random.fold_in(
                    self.key, _CONTROL_FLOW_STREAM + self._flows
                )
                self._flows += 1
            return
        if msg["type"] != "sample" or msg.get("is_observed"):
            return
        if msg.get("_control_flow_done"):
            _check_scanned(msg, self.choose(msg["name"], msg))
            return
        if msg["value"] is not None:
            return
        name = msg["name"]
        infer = msg.get("infer") or {}
        if infer.get("enumerate") is not None:
            raise ValueError(
                f"site {name!r} has infer={{'enumerate': {infer['enumerate']!r}}}: expectax "
                "estimates gradients by sampling and does not enumerate. Remove the "
                "'enumerate' entry (the site is then sampled with its estimator), or use "
                "numpyro.infer.TraceEnum_ELBO to sum the site out exactly."
            )
        role = self.choose(name, msg)
        fn = msg["fn"]
        shape = msg["kwargs"].get("sample_shape", ())
        if self.key is not None:
            key = jax.random.fold_in(self.key, _name_hash(name))
        else:
            key = msg["kwargs"].get("rng_key")
            if key is None:
                raise ValueError(
                    f"site {name!r} got no random key: run the program under numpyro's seed "
                    "handler (expectax does so itself; a handler of yours may have hidden it)."
                )
        if name in self.substitutions:
            value = self.substitutions[name]
            if self.provenance:  # the value depends on the site's parents, as in numpyro
                value = value + 0 * fn.sample(key, shape)
        elif role == "pathwise":
            value = fn.rsample(key, shape)
        else:
            value = jax.lax.stop_gradient(fn.sample(key, shape))
        msg["value"] = value


def _refuse_param(name: str) -> None:
    """A ``numpyro.param``/``numpyro.module`` in a program no handler gave a value to."""
    module = name.endswith("$params")
    if module:
        call = f"numpyro.module({name[: -len('$params')]!r}, ...)"
    else:
        call = f"numpyro.param({name!r}, ...)"
    raise ValueError(
        f"the program calls {call}, which program_expectation does not optimise: every run "
        "would return its initial value (a module's weights re-initialised from the run's "
        "key) and its gradient would be zero. Pass the parameters in `params` (the program's "
        "first argument) instead; for a numpyro model and guide trained with SVI, use "
        "expectax.infer.TraceGraph_ELBO, which substitutes them; or give the values yourself "
        "with numpyro.handlers.substitute(program, data={...})."
    )


def _check_scanned(msg: Mapping[str, Any], role: str) -> None:
    """A site drawn inside ``numpyro.contrib.control_flow.scan`` (or ``cond``): numpyro drew
    its value inside ``lax.scan``, where expectax cannot substitute one step's value or cut
    the draw's path derivative. Pathwise (reparameterisable) and score-function (discrete)
    sites are served; the rest is refused here, by name."""
    name, fn = msg["name"], msg["fn"]
    reparam = getattr(fn, "has_rsample", False)
    if role == "pathwise" and reparam:
        return
    if role == "score" and getattr(fn.support, "is_discrete", False):
        return
    if role == "score":
        why = (
            f"ScoreFunction on a continuous distribution ({type(fn).__name__}) inside scan: the "
            "draw carries its path derivative into the costs computed inside lax.scan, where "
            "expectax cannot hold it constant. Use ex.Pathwise() for the site (if it is "
            "reparameterisable)"
        )
    else:
        why = (
            "a per-site estimator re-runs the program with the site's value substituted, and "
            "one step of a scan cannot be substituted. Use ex.ScoreFunction(...) (discrete "
            "sites) or ex.Pathwise() for it"
        )
    raise ValueError(
        f"site {name!r} is drawn inside numpyro's scan/cond: {why}, or write the loop as a "
        "Python for loop (each step its own site)."
    )


# --------------------------------------------------------------------------- scans: time

#: the key under which :class:`_FlowRecorder` marks the sites of one ``scan``/``cond``
_FLOW = "_expectax_flow"


@dataclasses.dataclass(frozen=True)
class _Flow:
    """One call of numpyro's ``scan`` or ``cond`` in a run (``index``: its order in the run)."""

    index: int
    kind: str  # "scan", "cond" or "other"
    length: int | None = None  # a scan's number of steps
    reverse: bool = False
    enum: bool = False  # numpyro's enumerated scan (unrolled first steps): never served here


class _FlowRecorder(Messenger):
    """Marks every site that numpyro's ``scan``/``cond`` emits with the call it came from.

    numpyro runs the scanned function inside ``lax.scan`` under a ``block`` handler and then
    emits each site once, its value stacked along a leading time axis, marked only
    ``_control_flow_done`` (``numpyro/contrib/control_flow/scan.py``). This handler, outside
    the run, sees the ``control_flow`` message itself (which primitive, its length, whether
    it runs in reverse) and, before the sites are emitted, adds ``_expectax_flow`` to each, so
    that the trace says which scan drew a site and which scan produced a cost. A site it did
    not mark (a ``block`` of the user's hid the message) gets no time structure.
    """

    def __init__(self):
        self.count = 0
        super().__init__(None)

    def postprocess_message(self, msg):
        if msg["type"] != "control_flow":
            return
        from numpyro.contrib.control_flow.cond import cond_wrapper
        from numpyro.contrib.control_flow.scan import scan_wrapper
        from numpyro.ops.pytree import PytreeTrace

        index, self.count = self.count, self.count + 1
        kwargs = msg.get("kwargs") or {}
        flow = _Flow(index, "other", enum=bool(kwargs.get("enum", False)))
        if msg["fn"] is scan_wrapper:
            f, init, xs, length, reverse = msg["args"][:5]
            if length is None:
                leaves = jax.tree_util.tree_leaves(xs)
                length = jnp.shape(leaves[0])[0] if leaves and jnp.ndim(leaves[0]) else None
            try:
                length = operator.index(length) if length is not None else None
            except TypeError:  # not a static int: no time structure (the fallback)
                length = None
            flow = dataclasses.replace(flow, kind="scan", length=length, reverse=bool(reverse))
        elif msg["fn"] is cond_wrapper:
            flow = dataclasses.replace(flow, kind="cond")
        stack = [msg["value"]]
        while stack:  # the PytreeTrace inside the value, wherever numpyro puts it
            v = stack.pop()
            if isinstance(v, PytreeTrace):
                for site in v.trace.values():
                    if isinstance(site, dict) and site.get("type") == "sample":
                        site[_FLOW] = flow
            elif isinstance(v, (tuple, list)):
                stack.extend(v)


def _time_layout(site: Mapping[str, Any], array: Any, length: int, frames) -> bool:
    """Whether ``array`` (the site's log-density or cost) has the scan's time on axis 0.

    numpyro stacks a scanned site's value and its distribution's parameters along a new
    leading axis and promotes the distribution's batch shape to include it; the check is that
    the value, the batch shape and the array agree on that axis (length ``T``, the same number
    of dimensions) and that every plate of the site lies right of it. A factor (``Unit``)
    keeps a stale batch shape: its stacked ``log_factor`` is checked instead.
    """
    fn, value = site["fn"], site["value"]
    shape, ndim = jnp.shape(array), jnp.ndim(array)
    if ndim < 1 or shape[0] != length:
        return False
    if jnp.ndim(value) < 1 or jnp.shape(value)[0] != length:
        return False
    if jnp.ndim(value) - fn.event_dim != ndim:
        return False
    base = _unmasked(fn)
    if isinstance(base, nd.Unit):
        lf = jnp.shape(base.log_factor)
        if len(lf) != ndim or lf[0] != length:
            return False
    elif len(fn.batch_shape) != ndim or fn.batch_shape[0] != length:
        return False
    return all(-f.dim <= ndim - 1 for f in frames)


def _cost_site(r: _Run, key: Any) -> Mapping[str, Any] | None:
    """The sample site a cost came from: the program's observed site, or in an ELBO's run
    (costs ``("model", name)``/``("guide", name)``) the model's or the guide's site."""
    site = r.cost_sites.get(key)
    if site is None and r.traces is not None and isinstance(key, tuple) and len(key) == 2:
        side, name = key
        if side in ("model", "guide"):
            site = r.traces[0 if side == "model" else 1].get(name)
    if site is None or site.get("type") != "sample":
        return None
    return site


def _forward_scan(flow: Any) -> bool:
    return (
        isinstance(flow, _Flow)
        and flow.kind == "scan"
        and not flow.reverse
        and not flow.enum
        and flow.length is not None
    )


def _causal_structure(r: _Run, sites: Mapping[str, _Site]) -> dict[str, tuple[int, frozenset]]:
    r"""Per score-function site drawn inside a scan, the costs whose time step ``s`` depends on
    the site's steps ``t ≤ s`` only: ``{site: (T, costs)}``.

    The scanned function's step ``s`` sees earlier steps only through the carry, so a cost
    that the *same* forward scan produces at step ``s`` depends on the site's steps ``t ≤ s``
    only. In an ELBO the model's scan replays the guide's value ``z[s]`` at its step ``s``; its
    costs count too when that is all it can see of the guide's scan: it is a forward scan of
    the same length, every site of the guide's scan is a site of this model scan (so no other
    model code reads the guide's sequence), and every other latent site of the guide is drawn
    before the guide's scan (so none of them carries the sequence into the model). Anything
    else (``reverse=True``, ``cond``, an enumerated scan, a cost of another scan or after the
    scan, a time axis that cannot be identified) is not listed and stays downstream of every
    step.
    """
    out = {}
    model_tr, guide_tr = r.traces if r.traces is not None else (None, None)
    for name, s in sites.items():
        if s.role != "score":
            continue
        site = r.sites[name]
        flow = site.get(_FLOW)
        if not _forward_scan(flow):
            continue
        length = flow.length
        lp = log_prob(_unmasked(site["fn"]), site["value"])
        if not _time_layout(site, lp, length, s.frames):
            continue
        replayed = None  # the model's scan that replays this guide scan, where provably causal
        if model_tr is not None:
            msite = model_tr.get(name)
            mflow = msite.get(_FLOW) if msite is not None else None
            if _forward_scan(mflow) and mflow.length == length:
                members = [n for n, g in r.sites.items() if g.get(_FLOW) == flow]
                replay_all = all(
                    model_tr.get(n) is not None and model_tr[n].get(_FLOW) == mflow for n in members
                )
                order = [n for n, g in guide_tr.items() if n in r.sites]
                first = min(order.index(n) for n in members)
                before = all(order.index(n) < first for n in order if n not in members)
                if replay_all and before:
                    replayed = mflow
        causal = set()
        for c, (v, frames) in r.costs.items():
            csite = _cost_site(r, c)
            if csite is None:
                continue
            cflow = csite.get(_FLOW)
            if cflow is None or (cflow != flow and cflow != replayed):
                continue
            if _time_layout(csite, v, length, frames):
                causal.add(c)
        if causal:
            out[name] = (length, frozenset(causal))
    return out


# --------------------------------------------------------------------------- tracing


@dataclasses.dataclass
class _Run:
    """One run of a program: its latent sites and its cost terms, by name."""

    sites: dict[str, dict[str, Any]]  # latent sample sites of the trace
    costs: dict[Any, tuple[jax.Array, tuple[Any, ...]]]  # name -> (scaled value, frames)
    traces: Any = None  # the numpyro traces, for checks (ELBO: model and guide)
    control_flow: bool = False  # a site came from numpyro's scan/cond
    cost_sites: dict[Any, Any] = dataclasses.field(default_factory=dict)  # cost -> its site


def _frames(site: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(site.get("cond_indep_stack", ()))


def _unmasked(fn: Any) -> Any:
    """The distribution a site is drawn from: ``handlers.mask`` wraps it in a
    ``MaskedDistribution`` whose density is 0 where masked, but the draw is the base's."""
    while isinstance(fn, nd.MaskedDistribution):
        fn = fn.base_dist
    return fn


def _masked(value: jax.Array, site: Mapping[str, Any]) -> jax.Array:
    mask = site.get("mask")
    if mask is not None and mask is not True:
        value = jnp.where(mask, value, 0.0)
    return value


def _scaled(value: jax.Array, site: Mapping[str, Any]) -> jax.Array:
    scale = site.get("scale")
    value = _masked(value, site)
    if scale is not None:
        value = scale * value
    return value


def _program_tracer(program: Callable, args: tuple, kwargs: dict) -> Callable:
    """``run(params, key, choose, substitutions, provenance) -> _Run`` for a program: one run
    under ``numpyro.handlers.seed(rng_seed=key)``."""

    def run(params, key, choose, substitutions, provenance=False) -> _Run:
        sampler_program = _Sampler(
            handlers.seed(program, rng_seed=key),
            choose=choose,
            substitutions=substitutions,
            provenance=provenance,
            refuse_params=True,
        )
        with handlers.trace() as tr:
            out = _call(functools.partial(sampler_program, params), args, kwargs)
        sites, costs, cost_sites = {}, {}, {}
        for name, site in tr.items():
            if site["type"] != "sample":
                continue
            if site.get("is_observed"):
                value = log_prob(site["fn"], site["value"])
                costs[name] = (_scaled(value, site), _frames(site))
                cost_sites[name] = site
            else:
                sites[name] = site
        if out is not None:
            costs[RETURN] = (_return_cost(out), ())
        flow = any(site.get("_control_flow_done") for site in tr.values())
        if not provenance and _guarded(params):
            # nothing can raise under jit: parameters outside their constraints make every
            # cost, so the estimate and its gradient, NaN instead of plausible numbers
            factor = 1.0
            for site in tr.values():
                if site["type"] == "sample":
                    factor = factor * nan_unless_valid(site["fn"])
            if not isinstance(factor, float):  # else nothing to check (real parameters only)
                factor = jax.lax.stop_gradient(factor)
                costs = {n: (v * factor, fr) for n, (v, fr) in costs.items()}
        return _Run(sites, costs, control_flow=flow, cost_sites=cost_sites)

    return run


def _guarded(params: PyTree) -> bool:
    """numpyro validates parameters (the user's setting) but cannot here: params are traced."""
    return numpyro_dist._VALIDATION_ENABLED and any(
        isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(params)
    )


def _call(program: Callable, args: tuple, kwargs: dict) -> Any:
    try:
        return program(*args, **kwargs)
    except jax.errors.ConcretizationTypeError as err:
        raise _control_flow_error(err) from err
    except ValueError as err:
        if "distribution got invalid" not in str(err):
            raise
        raise ValueError(
            f"the program built a distribution with invalid parameters (numpyro: {err}). Check "
            "the values in params (e.g. a scale must be positive: use jax.nn.softplus or exp of "
            "an unconstrained parameter; probs in [0, 1]: use jax.nn.sigmoid or logits=)."
        ) from err


def _control_flow_error(err: Exception) -> ValueError:
    return ValueError(
        "the program used the value of a random site in Python control flow (if/while/bool/"
        "int on a traced value). expectax traces the program once for all particles, so every "
        "run must draw the same sites: use jnp.where or jax.lax.cond instead of if, and "
        "jax.lax.fori_loop/while_loop or a fixed-length loop instead of a data-dependent "
        f"loop. JAX said: {str(err).splitlines()[0]}"
    )


def _return_cost(out: Any) -> jax.Array:
    if isinstance(out, (tuple, list, dict)):
        raise TypeError(
            "the program must return a scalar cost (or None, with costs added by "
            f"numpyro.factor); it returned a {type(out).__name__}. Return the sum of the terms."
        )
    value = jnp.asarray(out)
    if value.shape != ():
        raise TypeError(
            f"the program must return a scalar cost or None; it returned shape {value.shape}. "
            "Sum it (jnp.sum) or add it with numpyro.factor inside a plate."
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        if jnp.issubdtype(value.dtype, jnp.complexfloating):
            raise TypeError("the program returned a complex cost; return a real scalar.")
        value = value.astype(jnp.result_type(float))
    return value


# --------------------------------------------------------------------------- plates


def _reduce(value: jax.Array, frames: tuple[Any, ...], target: tuple[Any, ...]) -> jax.Array:
    """Sum ``value`` over every axis that is not a plate of both ``frames`` and ``target``.

    The result keeps the shared plate axes at their (negative) positions, so it broadcasts
    against an array laid out for ``target``'s plates.
    """
    value = jnp.asarray(value)
    keep = {f.dim for f in frames if f in target}
    axes = tuple(a for a in range(-value.ndim, 0) if a not in keep)
    if axes:
        value = value.sum(axis=axes, keepdims=True)
    lowest = min(keep, default=0)
    while value.ndim > -lowest:
        value = value[0]
    return value


def _target_shape(frames: tuple[Any, ...]) -> tuple[int, ...]:
    """The array shape laid out for these plates (sizes at their dims, 1 elsewhere)."""
    if not frames:
        return ()
    depth = -min(f.dim for f in frames)
    shape = [1] * depth
    for f in frames:
        shape[depth + f.dim] = f.size
    return tuple(shape)


# --------------------------------------------------------------------------- baselines' history

_PYRO_KEYS = {
    "use_decaying_avg_baseline",
    "baseline_beta",
    "baseline_value",
    "nn_baseline",
    "nn_baseline_input",
}


def _pyro_baseline(name: str, msg: Mapping[str, Any], spec: Any) -> Estimator:
    """Pyro's ``infer={"baseline": {...}}`` of a site, as an expectax estimator, or an error
    (``use_decaying_avg_baseline`` without ``with_baselines`` is refused where every
    :class:`~expectax.baselines.DecayingAverage` is, in :meth:`_Engine.estimate`)."""
    from expectax import baselines
    from expectax.estimators.score_function import ScoreFunction

    if not isinstance(spec, Mapping) or set(spec) - _PYRO_KEYS:
        raise ValueError(
            f"site {name!r}: infer={{'baseline': {spec!r}}} is not a Pyro baseline dict (keys "
            f"{sorted(_PYRO_KEYS)}). Use infer={{'estimator': ex.ScoreFunction(baseline=...)}}."
        )
    if "nn_baseline" in spec or "nn_baseline_input" in spec:
        raise ValueError(
            f"site {name!r}: Pyro's nn_baseline is not supported by expectax's ELBO. Remove it: "
            "the default baseline (baselines.WeightedLeaveOneOut over the particles, with a "
            "decaying average through expectax.infer.with_baselines(guide)) needs no network."
        )
    if getattr(msg["fn"], "has_rsample", False):
        raise ValueError(
            f"site {name!r}: infer={{'baseline': ...}} is for non-reparameterised sites, but "
            f"{type(msg['fn']).__name__} is reparameterised (expectax uses Pathwise() for it)."
        )
    if "baseline_value" in spec:
        value = spec["baseline_value"]
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"site {name!r}: baseline_value must be a scalar (got shape {jnp.shape(value)})."
            )
        return ScoreFunction(baseline=baselines.Constant(value))
    if spec.get("use_decaying_avg_baseline"):
        beta = spec.get("baseline_beta", 0.9)
        # Pyro's particles run one after another (its default), each folded into the average
        # before the next reads it: every_particle is Pyro's order
        average = baselines.DecayingAverage(decay=float(beta), every_particle=True)
        return ScoreFunction(baseline=average)
    raise ValueError(
        f"site {name!r}: infer={{'baseline': {spec!r}}} asks for no baseline expectax knows "
        "(use_decaying_avg_baseline=True or baseline_value=<float>)."
    )


def _weighted(s: _Site) -> bool:
    from expectax import baselines

    return isinstance(getattr(s.estimator, "baseline", None), baselines.WeightedLeaveOneOut)


def _score_weighted(site: Mapping[str, Any], fn: Any) -> bool:
    """Whether :class:`~expectax.baselines.WeightedLeaveOneOut` weights this site's particles.

    Only for one discrete variable per plate element (no event dimensions): there a draw with
    a tiny squared score is the dominant value of a nearly deterministic variable, the case the
    weights are for. A vector event (a layer of independent units) sums its units' squared
    scores, a heavy-tailed weight that tells nothing of the kind and made the baseline noisier
    (benchmarks/baseline_variance.py); it gets the plain leave-one-out mean. So does a scanned
    site: a sequence whose later steps' distributions depend on its own earlier draws, so that
    its E[w] would depend on the particle's own draw (a biased baseline).
    """
    return not site.get("_control_flow_done") and tuple(fn.event_shape) == ()


def _particle_mean(state, d, name):
    """The mean over particles (axis 0) in the layout of a site's history ``state``: per plate
    element, or one number for a site whose history is pooled (a subsampled or scaled
    plate); an error if the plates changed since ``SVI.init``."""
    target = d.shape[1:]
    pooled = jnp.shape(state["wd"]) == () and target != ()
    if not pooled and jnp.shape(state["wd"]) != target:
        raise ValueError(
            f"the baselines' state of site {name!r} has shape {jnp.shape(state['wd'])}, but "
            f"the site's downstream cost has plate shape {target}: the guide's plates changed "
            "since SVI.init. Re-run svi.init with the guide wrapped by "
            "expectax.infer.with_baselines."
        )
    return (lambda v: jnp.mean(v)) if pooled else (lambda v: jnp.mean(v, axis=0))


def _decaying_average(state, decay, d, name, every_particle=False):
    """``(b, new state)`` for :class:`~expectax.baselines.DecayingAverage`: the baseline is the
    average of earlier steps' mean downstream cost (Pyro's: zero-initialised, not debiased);
    the new state folds in this step's."""
    reduce = _particle_mean(state, d, name)
    if not every_particle:
        b = jnp.broadcast_to(state["wd"], d.shape).astype(d.dtype)
        new = {
            **state,
            "count": state["count"] + 1,
            "wd": decay * state["wd"] + (1 - decay) * reduce(d),
        }
        return b, new
    # Pyro's order with particles not vectorised: the average takes in each particle in turn,
    # so particle j's baseline holds the earlier steps and particles 0..j-1 of this one (never
    # its own draw: still unbiased); m_j = β^j m_0 + (1 − β) Σ_{i<j} β^{j−1−i} r_i
    n = d.shape[0]
    m0 = state["wd"]
    r = jax.vmap(lambda row: reduce(row[None]))(d)  # each particle in the history's layout
    j = jnp.arange(n + 1, dtype=d.dtype)
    lag = j[:, None] - 1.0 - j[None, :n]  # (n + 1, n): j − 1 − i
    weights = jnp.where(lag >= 0, (1 - decay) * decay ** jnp.maximum(lag, 0.0), 0.0)
    decay_j = jnp.reshape(decay**j, (n + 1,) + (1,) * jnp.ndim(m0))
    m = decay_j * m0 + jnp.tensordot(weights, r, axes=(1, 0))  # (n + 1, *m0's shape)
    b = jnp.broadcast_to(
        jnp.reshape(m[:n], (n,) + jnp.shape(m0) + (1,) * (d.ndim - 1 - jnp.ndim(m0))), d.shape
    )
    return b.astype(d.dtype), {**state, "count": state["count"] + 1, "wd": m[n]}


def _history(state, decay, d, w, name):
    """``((λ, Σ_wd, Σ_w), new state)`` for one site: earlier steps' decaying averages (zero
    debiased, as Adam's moments) enter as λ = N (1 + β)/(1 − β) pseudo-particles, the number
    of particle draws a decaying average of rate β effectively holds (19 steps of N particles
    at β = 0.9)."""
    n = d.shape[0]
    count, avg_wd, avg_w = state["count"], state["wd"], state["w"]
    reduce = _particle_mean(state, d, name)
    w = jnp.ones_like(d) if w is None else w
    debias = jnp.where(count > 0, 1.0 - decay ** count.astype(d.dtype), 1.0)
    lam = jnp.where(count > 0, n * (1.0 + decay) / (1.0 - decay), 0.0)
    past = (lam, avg_wd / debias, avg_w / debias)
    new = {
        "count": count + 1,
        "wd": decay * avg_wd + (1 - decay) * reduce(w * d),
        "w": decay * avg_w + (1 - decay) * reduce(w),
    }
    return past, new


# --------------------------------------------------------------------------- the engine


class _Engine:
    """The estimator of one program: static structure, particles, surrogate."""

    def __init__(self, *, num_particles, estimators, vectorize, debug):
        self.num_particles = num_particles
        self.estimators = dict(estimators or {})
        self.vectorize = vectorize
        self.debug = debug
        self.builders: dict[str, Callable] = {}
        self.reruns: dict[str, int] = {}  # per-site estimator: re-runs of the program per particle
        self.time_resolved: dict[str, tuple[Any, ...]] = {}  # as of the last trace: site -> costs
        self.value_deps: dict[str, frozenset] = {}  # site -> sampled sites its value depends on

    #: Rao-Blackwellisation across time inside numpyro's ``scan`` (:func:`_causal_structure`);
    #: ``False`` restores the all-downstream form, for tests and benchmarks to compare with.
    causal_scans: bool = True

    # -- estimator choice
    def _chooser(self, roles: dict[str, _Site] | None, record: dict[str, Any]):
        def choose(name: str, msg: Mapping[str, Any]) -> str:
            if roles is not None and name in roles:
                return roles[name].role
            infer = msg.get("infer") or {}
            est = self.estimators.get(name, infer.get("estimator"))
            if est is None and infer.get("baseline") is not None:
                est = _pyro_baseline(name, msg, infer["baseline"])
            if est is None:
                est = default_estimator(msg, self.num_particles)
            role = _role(est, name, msg["fn"], self.num_particles)
            record[name] = (est, role)
            return role

        return choose

    def structure(self, run, params, key, check=None):
        """Sites, roles and dependencies (static: found once per trace of the estimate).

        Returns ``(sites, cost_deps, lp_deps, cost_frames, causal)``: ``causal`` maps a
        score-function site drawn inside a scan to ``(T, costs)``, the costs of the same scan
        whose step ``s`` depends on the site's steps ``t ≤ s`` only (:func:`_causal_structure`).
        """
        record: dict[str, Any] = {}
        with _FlowRecorder():
            first = run(params, key, self._chooser(None, record), {})
        if check is not None:
            check(first)
        unknown = set(self.estimators) - set(first.sites)
        if unknown:
            raise ValueError(
                f"estimators names sites {sorted(unknown)} that the program does not draw "
                f"(its latent sites are {sorted(first.sites)}); check the names."
            )
        sites = {}
        for name, site in first.sites.items():
            est, role = record[name]
            frames = _frames(site)
            draws = (site.get("infer") or {}).get("num_samples", 2)
            if role == "joint" and (
                isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 2
            ):
                raise ValueError(
                    f"site {name!r}: infer={{'num_samples': {draws!r}}} must be an int >= 2 (the "
                    f"draws {type(est).__name__} makes of the site's distribution)."
                )
            sites[name] = _Site(
                name, role, est, frames, tuple(sorted(f.dim for f in frames)), int(draws)
            )
        if not first.costs:
            raise ValueError(
                "the program has no cost: return a scalar, or add terms with numpyro.factor "
                "or observed sites (obs=...)."
            )
        nonreparam = [n for n, s in sites.items() if s.role != "pathwise"]

        def provenance_fn(**values):
            roles = sites
            r = run(params, key, self._chooser(roles, {}), values, provenance=True)
            out = {("cost", n): v for n, (v, _) in r.costs.items()}
            for n in nonreparam:
                s = r.sites[n]
                out[("lp", n)] = log_prob(s["fn"], s["value"])
            for n, s in r.sites.items():
                out[("value", n)] = s["value"]
            return out

        latents = {
            n: jax.ShapeDtypeStruct(
                jnp.shape(first.sites[n]["value"]), jnp.result_type(first.sites[n]["value"])
            )
            for n in nonreparam
        }
        try:
            deps = eval_provenance(provenance_fn, **latents) if nonreparam else {}
        except jax.errors.ConcretizationTypeError as err:
            raise _control_flow_error(err) from err
        cost_deps = {n: frozenset(deps.get(("cost", n), ())) for n in first.costs}
        lp_deps = {n: frozenset(deps.get(("lp", n), ())) for n in nonreparam}
        # the non-reparameterised sites each site's value depends on: a per-site estimator's
        # re-runs take every value that does not depend on its site from the main run
        self.value_deps = {n: frozenset(deps.get(("value", n), ())) for n in first.sites}
        causal = {}
        if first.control_flow:
            # numpyro draws scanned sites inside lax.scan, where their values cannot be
            # substituted, so provenance cannot see what depends on them (nor on the values
            # fed into the scan): every cost counts as downstream of every site. Unbiased.
            # Within a forward scan time is the one structure known without provenance: a
            # cost of the scan's step s multiplies the scores of the site's steps t <= s
            # only (docs/programs.md).
            everything = frozenset(nonreparam)
            cost_deps = {n: everything for n in cost_deps}
            lp_deps = {n: everything - {n} for n in lp_deps}
            self.value_deps = {n: everything for n in first.sites}
            if self.causal_scans:
                causal = _causal_structure(first, sites)
        cost_frames = {n: frames for n, (_, frames) in first.costs.items()}
        return sites, cost_deps, lp_deps, cost_frames, causal

    # -- one particle
    def particle(self, run, sites, params, key, causal=None):
        chooser = self._chooser(sites, {})
        r = run(params, key, chooser, {})
        self._check_same_sites(sites, r)
        lps, lps_time, fns, values, weights = {}, {}, {}, {}, {}
        for name, s in sites.items():
            site = r.sites[name]
            values[name] = site["value"]
            if s.role == "score":
                check_fixed_support(site["fn"], f"ScoreFunction at site {name!r}")
                # not masked: handlers.mask removes the site's density from the costs, but the
                # site is still drawn from its distribution, so its score stays (E over p_θ)
                drawn = _unmasked(site["fn"])
                lp = log_prob(drawn, site["value"])
                if causal and name in causal:  # per step: (T, *plates)
                    lps_time[name] = jax.vmap(lambda x, f=s.frames: _reduce(x, f, f))(lp)
                    lps[name] = jnp.sum(lps_time[name], axis=0)
                else:
                    lps[name] = _reduce(lp, s.frames, s.frames)
                # the weights for one discrete variable per element (see _score_weighted)
                if _weighted(s) and _score_weighted(site, drawn):
                    wf = natural_score_weights(drawn, site["value"])
                    if wf is not None:
                        weights[name] = tuple(
                            _reduce(jnp.broadcast_to(v, jnp.shape(lp)), s.frames, s.frames)
                            for v in wf
                        )
            elif s.role in ("blackbox", "joint"):
                builder, fns[name] = _elementwise(site["fn"], s, _sample_shape(site))
                self.builders[name] = builder
        costs = {n: v for n, (v, _) in r.costs.items()}
        return {
            "lps": lps,
            "lps_time": lps_time,
            "costs": costs,
            "fns": fns,
            "values": values,
            "weights": weights,
        }

    def evaluations(self) -> int:
        """Runs of the program per estimate, as of the last trace: a run per particle plus the
        re-runs of the per-site estimators (e.g. 2 per particle for DisARM)."""
        return self.num_particles * (1 + sum(self.reruns.values()))

    @staticmethod
    def _check_same_sites(sites: dict[str, _Site], r: _Run) -> None:
        if set(r.sites) != set(sites):
            raise ValueError(
                "the program drew different sites in two runs "
                f"({sorted(set(r.sites) ^ set(sites))} differ): every run must draw the same "
                "sites (no Python control flow on random values or on the key)."
            )

    def map_particles(self, fn, keys):
        if callable(self.vectorize):
            return self.vectorize(fn, keys)
        if self.vectorize or keys.shape[0] == 1:
            return _over_rows(fn, keys)
        return jax.lax.map(fn, keys)

    # -- the estimate
    def estimate(self, run, params, key, check=None, history=None):
        """The surrogate; with ``history`` (the baselines' state, :func:`history_init`),
        ``(surrogate, new history)``."""
        from expectax import baselines
        from expectax.baselines import weighted_loo

        new_history = dict(history or {})
        n = self.num_particles
        # as numpyro's ELBOs: one particle runs on the key itself, N on split(key, N), so the
        # same key draws the same samples as numpyro's
        keys = jnp.expand_dims(key, 0) if n == 1 else jax.random.split(key, n)
        key_est = jax.random.fold_in(key, _ESTIMATOR_STREAM)
        sites, cost_deps, lp_deps, cost_frames, causal = self.structure(run, params, keys[0], check)
        if history is not None:
            # the baselines' state has no time axis (with_baselines, SVI.init): a site with a
            # history keeps the all-downstream form, its baseline one number per plate element
            causal = {k: v for k, v in causal.items() if k not in history}
        self.time_resolved = {k: tuple(sorted(v[1], key=str)) for k, v in causal.items()}
        out = self.map_particles(lambda k: self.particle(run, sites, params, k, causal), keys)
        costs, lps, lps_time = out["costs"], out["lps"], out["lps_time"]
        score = [s for s in sites.values() if s.role == "score"]
        downstream = {s.name: [c for c in costs if s.name in cost_deps[c]] for s in sites.values()}
        # baselines per score site, from the particles' downstream costs (stop-gradient); a
        # site with causal costs gets one per time step, (n, T, *plates)
        base = {}
        plain = [s for s in score if s.estimator.baseline is not None and s.name not in causal]
        take = _long({s.name: len(downstream[s.name]) for s in plain})
        wanted = {s.name: (downstream[s.name], s.frames) for s in plain if s.name in take}
        long_down = _long_downstream(costs, cost_frames, wanted, n)
        for s in score:
            b = s.estimator.baseline
            if b is None:
                continue
            if s.name in causal:
                d = _downstream_time(
                    costs, cost_frames, downstream[s.name], causal[s.name][1], s.frames, n
                )
            elif s.name in long_down:
                d = long_down[s.name]
            else:
                d = _downstream(costs, cost_frames, downstream[s.name], s.frames, n)
            d = jax.lax.stop_gradient(d)
            if isinstance(b, baselines.WeightedLeaveOneOut):
                w, fisher = out["weights"].get(s.name, (None, None))
                if w is not None:
                    w, fisher = (jnp.reshape(v, d.shape) for v in (w, fisher))
                past = None
                if history is not None and s.name in history:
                    past, new_history[s.name] = _history(history[s.name], b.decay, d, w, s.name)
                base[s.name] = weighted_loo(d, w, fisher, past, share=b.share)
            elif isinstance(b, baselines.DecayingAverage):
                if history is None or s.name not in history:
                    raise ValueError(
                        f"site {s.name!r}: DecayingAverage needs the baselines' state carried "
                        "through SVI (so does Pyro's use_decaying_avg_baseline), and this guide "
                        "declares none. Wrap the guide: "
                        "SVI(model, expectax.infer.with_baselines(guide), ...)."
                    )
                base[s.name], new_history[s.name] = _decaying_average(
                    history[s.name], b.decay, d, s.name, b.every_particle
                )
            elif isinstance(b, baselines.LeaveOneOut):
                base[s.name] = baselines.others_sum(d) / (n - 1)
            else:
                base[s.name] = jnp.broadcast_to(jnp.asarray(b.c, d.dtype), d.shape)

        upstream = {c: [s for s in score if s.name in cost_deps[c]] for c in costs}
        ancestors = {
            name: [a for a in score if a.name != name and a.name in lp_deps[name]] for name in base
        }
        long_sums = _long(
            {("cost", c): len(v) for c, v in upstream.items()}
            | {("anc", name): len(v) for name, v in ancestors.items()}
        )

        def surrogate(costs_p, lps_p, lps_time_p, base_p):
            # the sum of the log-densities upstream of each cost (and of each baselined site's
            # ancestors), as (key, thunk) terms: a long sum is one masked reduction (_long_sums)
            def cost_terms(c, v):
                frames_c = cost_frames[c]
                for s in upstream[c]:
                    if s.name in causal and c in causal[s.name][1]:
                        # step s of the cost: the site's steps t <= s (a cumulative sum)
                        lp_t = _time_reduce(lps_time_p[s.name], s.frames, frames_c, jnp.ndim(v))
                        yield (s.name, c), lambda lp_t=lp_t: jnp.cumsum(lp_t, axis=0)
                    else:
                        yield (
                            (s.name, frames_c),
                            functools.partial(_reduce, lps_p[s.name], s.frames, frames_c),
                        )

            def ancestor_terms(name):
                frames = sites[name].frames
                for a in ancestors[name]:
                    yield (
                        (a.name, frames),
                        functools.partial(_reduce, lps_p[a.name], a.frames, frames),
                    )

            wanted = {
                ("cost", c): cost_terms(c, v)
                for c, v in costs_p.items()
                if ("cost", c) in long_sums
            }
            wanted |= {
                ("anc", name): ancestor_terms(name) for name in base_p if ("anc", name) in long_sums
            }
            long = _long_sums(wanted)
            total = 0.0
            for c, v in costs_p.items():
                logp = long.get(("cost", c))
                if logp is None:
                    logp = _chain(cost_terms(c, v))
                total = total + jnp.sum(magic_box(jnp.asarray(logp)) * v)
            for name, b in base_p.items():
                anc = long.get(("anc", name))
                if anc is None:
                    anc = _chain(ancestor_terms(name))
                lp = lps_p[name]
                if name in causal:  # per step t: its own ancestors include steps < t
                    lp = lps_time_p[name]
                    anc = anc + (jnp.cumsum(lp, axis=0) - lp)
                term = (1.0 - magic_box(lp)) * magic_box(jnp.asarray(anc)) * b
                total = total + jnp.sum(term)
            return total

        # its value is the mean over particles of the total cost (every magic box is 1 and
        # every baseline term 0); its derivatives are the estimator
        result = jnp.mean(_over_rows(surrogate, costs, lps, lps_time, base))
        # per-site estimators: their own terms, with f the site's downstream cost
        for s in sites.values():
            if s.role not in ("blackbox", "joint"):
                continue
            site_key = jax.random.fold_in(key_est, _name_hash(s.name))
            deps = (cost_deps, lp_deps, cost_frames)
            t = self._blackbox(run, s, params, keys, out, deps, sites, site_key)
            t = first_order_only(t, f"{s.estimator.name} at site {s.name!r}")
            result = result + (t - jax.lax.stop_gradient(t))
        if history is None:
            return result
        return result, new_history

    def _blackbox(self, run, s, params, keys, out, deps, sites, key):
        """The site estimator's surrogate: Σ over plate elements, mean over particles.

        Its ``f`` is the site's downstream cost with the site's value substituted, every other
        site keeping its random numbers, θ held constant (the main surrogate carries ∇θ of the
        costs): the estimator's gradient flows only into the site's distribution, and from
        there into θ and upstream reparameterised values by the chain rule.
        """
        cost_deps, lp_deps, cost_frames = deps
        n = self.num_particles
        params_e = out["fns"][s.name]  # the elements' parameters, leaves (n, E, ...)
        lead = jax.tree_util.tree_leaves(params_e)[0].shape[1]
        params_e = jax.tree_util.tree_map(lambda v: v.reshape((n * lead, *v.shape[2:])), params_e)
        flat = jax.vmap(self.builders[s.name])(params_e)  # one distribution per (particle, element)
        main_values = out["values"][s.name]  # (n, *value shape)
        value_shape = main_values.shape[1:]
        down = [c for c in cost_deps if s.name in cost_deps[c]]
        local = all(set(s.frames) <= set(cost_frames[c]) for c in down)
        after = [a for a in lp_deps if a != s.name and s.name in lp_deps[a]]
        if after and not s.estimator.unbiased:
            raise ValueError(
                f"site {s.name!r}: {s.estimator.name} relaxes the site, but discrete sites "
                f"{after} depend on it, and their draws cannot be differentiated. Use "
                "ex.DisARM(), ex.RELAX() or ex.ScoreFunction(baseline=...) for the site."
            )
        frozen = jax.lax.stop_gradient(params)
        chooser = self._chooser(sites, {})
        # the values that do not depend on the site's: the main run's, not drawn again
        fixed = [t for t in sites if t != s.name and s.name not in self.value_deps.get(t, {s.name})]

        def downstream_cost(p, value, held):
            same = {t: jax.lax.stop_gradient(out["values"][t][p]) for t in fixed}
            with numpyro_dist.validation_enabled(False):
                r = run(frozen, keys[p], chooser, {**same, **held, s.name: value})
            self._check_same_sites(sites, r)
            total = 0.0
            for c in down:
                v, frames = r.costs[c]
                total = total + _reduce(v, frames, s.frames)
            return jnp.broadcast_to(total, _target_shape(s.frames)).reshape(-1)  # (E,)

        def held_values(p, control):
            return {a: out["values"][a][p] for a in after} if control else {}

        def single(control):
            def f_single(row, x):
                p, e = row["particle"], row["elem"]
                main = main_values[p].reshape((lead, -1))
                dtype = jnp.result_type(main.dtype, jnp.result_type(x))
                full = main.astype(dtype).at[e].set(jnp.reshape(x, (-1,)).astype(dtype))
                cost = downstream_cost(p, full.reshape(value_shape), held_values(p, control))
                return cost[e]

            return f_single

        def batch(control):
            def f_batch(xs, rows):
                if not local or xs.shape[0] != n * lead:
                    return jax.vmap(single(control))(rows, xs)
                full = xs.reshape((n, *value_shape))
                particles = jnp.arange(n)
                held = jax.vmap(lambda p: held_values(p, control))(particles)
                return jax.vmap(downstream_cost)(particles, full, held).reshape(-1)

            return f_batch

        one = self.builders[s.name](jax.tree_util.tree_map(lambda v: v[0], params_e))
        rows = {"particle": jnp.repeat(jnp.arange(n), lead), "elem": jnp.tile(jnp.arange(lead), n)}
        if s.role == "joint":
            # k draws of one element's distribution (without replacement): the estimator runs
            # on each (particle, element) alone; with local costs its j-th evaluations of all
            # elements share one run (lockstep), else each element is evaluated on its own
            table = None
            if local:
                table = _lockstep_table(
                    single(False), lambda p, v: downstream_cost(p, v, {}), main_values, n, lead
                )
            per_row = int(s.estimator.evaluations(s.draws, one))
            self.reruns[s.name] = per_row * (1 if local else lead)
            return _joint_terms(self, s, rows, params_e, single(False), key, table) / n
        per_call = 1 if local else lead  # lockstep: all elements in one run
        self.reruns[s.name] = int(s.estimator.evaluations(1, one)) * per_call
        ctx = _SiteContext(
            single(False),
            flat,
            rows,
            stacked=True,
            debug=self.debug,
            batch=batch(False),
            control=batch(True),
        )
        with _site_errors(f"site {s.name!r} ({type(flat).__name__})"):
            terms = s.estimator.terms(ctx, key, n * lead)
        return jnp.sum(terms) / n


def _lockstep_table(f_single, downstream_cost, main_values, n, lead):
    """``table(particle, elem, xs)``: one row's costs at its ``k`` values ``xs``, as
    ``f_single`` per value; batched over the rows (every ``(particle, element)`` once) it runs
    the program ``k`` times per particle, run ``j`` with every element at its ``j``-th value.

    Only for costs local to the site's plate (each element's cost depends on its own value):
    then the lockstep runs give each element's cost exactly as its own run would, with ``k``
    runs per particle instead of ``k`` per element. A batch that is not the rows' (any other
    vmap) evaluates each row on its own.
    """
    value_shape = main_values.shape[1:]

    def per_row(p, e, xs):
        return jax.vmap(lambda x: f_single({"particle": p, "elem": e}, x))(xs)

    @jax.custom_batching.custom_vmap
    def table(p, e, xs):
        return per_row(p, e, xs)

    @table.def_vmap
    def _rows(axis_size, in_batched, p, e, xs):
        if not all(in_batched) or axis_size != n * lead:
            axes = tuple(0 if b else None for b in in_batched)
            return jax.vmap(per_row, in_axes=axes)(p, e, xs), True
        k = xs.shape[1]
        dtype = jnp.result_type(main_values.dtype, xs.dtype)
        flat = jnp.moveaxis(xs.reshape((axis_size, k, -1)), 1, 0).astype(dtype)  # (k, R, v)
        grid = jnp.zeros((k, n, lead, flat.shape[-1]), dtype).at[:, p, e].set(flat)
        grid = grid.reshape((k, n, *value_shape))
        costs = jax.vmap(lambda g: jax.vmap(downstream_cost)(jnp.arange(n), g))(grid)
        costs = costs.reshape((k, n, lead))[:, p, e]  # (k, R), back in the rows' order
        return jnp.moveaxis(costs, 0, 1), True

    return table


def _joint_terms(engine, s, rows, params_e, f_single, key, table=None):
    """Σ over (particle, element) rows of the joint-sample estimator's mean term; ``table``
    (:func:`_lockstep_table`) evaluates the rows' draws in lockstep."""

    def one(row, element_params, row_key):
        d = engine.builders[s.name](element_params)

        def batch(xs, r):
            if table is not None:
                return table(r["particle"], r["elem"], xs)
            return jax.vmap(f_single, in_axes=(None, 0))(r, xs)

        ctx = _SiteContext(
            f_single, d, row, stacked=False, debug=engine.debug, batch=batch, control=batch
        )
        return jnp.mean(s.estimator.terms(ctx, row_key, s.draws))

    keys = jax.random.split(key, jax.tree_util.tree_leaves(rows)[0].shape[0])
    with _site_errors(f"site {s.name!r}"):
        return jnp.sum(jax.vmap(one)(rows, params_e, keys))


@contextlib.contextmanager
def _site_errors(prefix: str) -> Iterator[None]:
    """Run a per-site estimator (numpyro validation off: relaxed values are off-support by
    design), prefixing its ValueError/TypeError with the site so the user knows which."""
    try:
        with numpyro_dist.validation_enabled(False):
            yield
    except (ValueError, TypeError) as err:
        if str(err).startswith("site ") or "program" in str(err):
            raise
        raise type(err)(f"{prefix}: {err}") from err


#: Where the sums of one kind (the surrogate's log-densities, or the baselines' downstream
#: costs) have more than ``_LONG_TOTAL`` terms in all, each of more than ``_CHAIN_TERMS``
#: terms is one masked reduction over their stack, not a chain of additions. A Markov chain
#: of discrete sites written as a Python loop has every earlier site upstream of each of its
#: costs: T² additions in the surrogate (and as many in its gradient), and a compiled program
#: that grew quadratically in T (``benchmarks/chain_compile.py``). The reduction compiles
#: faster, but it ran 17 % slower per gradient on the 30-step chain there (11 % faster on 60
#: steps), so fewer terms keep the chain of additions, bit for bit: every model of the ELBO
#: gallery.
_CHAIN_TERMS = 8
_LONG_TOTAL = 1024


def _long(lengths: dict) -> set:
    """The sums (keys of ``lengths``, their numbers of terms) to take as masked reductions."""
    if sum(lengths.values()) <= _LONG_TOTAL:
        return set()
    return {k for k, m in lengths.items() if m > _CHAIN_TERMS}


def _chain(terms: Iterator[tuple[Any, Callable[[], jax.Array]]]) -> Any:
    """``0.0 + t_1 + t_2 + ...`` of ``(key, thunk)`` terms, in order."""
    total = 0.0
    for _, term in terms:
        total = total + term()
    return total


def _long_sums(wanted: dict) -> dict:
    """``{out: Σ of its terms}`` for ``wanted = {out: iterable of (key, thunk)}``, a term's
    value ``thunk()`` shared by every output that names its key.

    The outputs are grouped by the shape of their sum, each group's terms stacked once and
    summed as ``Σ_k where(mask[out, k], stack[k], 0)``: a ``select``, not a product with a 0/1
    matrix, so an infinite term never turns another output into NaN.
    """
    values, keys, groups = {}, {}, {}
    for o, terms in wanted.items():
        keys[o] = []
        for k, thunk in terms:
            if k not in values:
                values[k] = jnp.asarray(thunk())
            keys[o].append(k)
        shape = jnp.broadcast_shapes(*(values[k].shape for k in keys[o]))
        groups.setdefault(shape, []).append(o)
    out = {}
    for shape, outs in groups.items():
        cols = list(dict.fromkeys(k for o in outs for k in keys[o]))
        index = {k: j for j, k in enumerate(cols)}
        mask = np.zeros((len(outs), len(cols)), bool)
        for i, o in enumerate(outs):
            mask[i, [index[k] for k in keys[o]]] = True
        stack = jnp.stack([jnp.broadcast_to(values[k], shape) for k in cols])
        mask = mask.reshape(mask.shape + (1,) * len(shape))
        summed = jnp.sum(jnp.where(mask, stack[None], jnp.zeros((), stack.dtype)), axis=1)
        for i, o in enumerate(outs):
            out[o] = summed[i]
    return out


def _laid_out(costs, cost_frames, c, frames, n):
    """Cost ``c`` per particle reduced to ``frames``, laid out as ``(n, *plates)`` (or fewer
    axes of size 1 on the left)."""
    ndim = 1 + len(_target_shape(frames))
    v = jax.vmap(lambda x: _reduce(x, cost_frames[c], frames))(costs[c])
    return v.reshape((n,) + (1,) * (ndim - v.ndim) + v.shape[1:])


def _long_downstream(costs, cost_frames, wanted, n):
    """:func:`_downstream` of many sites at once, ``wanted = {site: (cost names, frames)}``,
    each summed by :func:`_long_sums` (the costs laid out once per plate layout)."""
    terms = {
        name: (
            ((c, frames), functools.partial(_laid_out, costs, cost_frames, c, frames, n))
            for c in names
        )
        for name, (names, frames) in wanted.items()
    }
    return {
        name: jnp.broadcast_to(total, (n, *_target_shape(wanted[name][1])))
        for name, total in _long_sums(terms).items()
    }


def _downstream(costs, cost_frames, names, frames, n):
    """Per particle, the sum of the named costs reduced to ``frames``: shape (n, *plates)."""
    target = (n, *_target_shape(frames))
    total = jnp.zeros(target)
    for c in names:
        total = total + _laid_out(costs, cost_frames, c, frames, n)
    return total


def _over_rows(fn, *args):
    """``jax.vmap(fn)(*args)`` over the leading axis; a single row runs without the ``vmap``
    (a size-1 ``vmap`` leaves a leading axis of 1 that XLA's CPU backend lays out with extra
    transposes: 7-9 % of an SBN step at 1797 digits, ``benchmarks/elbo_particles.py``)."""
    if jax.tree_util.tree_leaves(args)[0].shape[0] == 1:
        return jax.tree.map(lambda a: a[None], fn(*jax.tree.map(lambda a: a[0], args)))
    return jax.vmap(fn)(*args)


def _time_reduce(lp_time, frames, target, ndim):
    """A scanned site's per-step log-density ``(T, *plates)`` reduced to the plates it shares
    with ``target`` (a cost's), laid out as that cost: ``ndim`` axes, time on axis 0."""
    x = jax.vmap(lambda v: _reduce(v, frames, target))(lp_time)
    return x.reshape((x.shape[0],) + (1,) * (ndim - x.ndim) + x.shape[1:])


def _downstream_time(costs, cost_frames, names, causal, frames, n):
    """Per particle and time step t, the cost downstream of a scanned site's step t: the
    ``causal`` costs' steps s >= t (a reversed cumulative sum) and every other named cost
    whole; shape (n, T, *plates)."""
    layout = _target_shape(frames)
    per_step, rest = [], []
    for c in names:
        if c in causal:
            v = jax.vmap(jax.vmap(lambda x, c=c: _reduce(x, cost_frames[c], frames)))(costs[c])
            pad = (1,) * (len(layout) - v.ndim + 2)
            per_step.append(v.reshape(v.shape[:2] + pad + v.shape[2:]))
        else:
            rest.append(c)
    total = sum(per_step[1:], per_step[0])  # the causal costs per step, then one reversed sum
    steps = jnp.flip(jnp.cumsum(jnp.flip(total, axis=1), axis=1), axis=1)
    whole = _downstream(costs, cost_frames, rest, frames, n)  # (n, *plates)
    return steps + whole[:, None]


def _sample_shape(site: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(site["kwargs"].get("sample_shape", ()))


def _elementwise(fn: Any, s: _Site, sample_shape: tuple[int, ...]) -> Any:
    """The site's distribution as ``E`` independent per-element distributions, leaves (E, ...).

    The plate axes of the site become one leading axis of elements; any other batch axes are
    part of each element's event (the sample a per-site estimator passes to f).
    """
    if sample_shape:
        raise ValueError(
            f"site {s.name!r} has sample_shape={sample_shape}; a per-site estimator needs one "
            "draw per site: use numpyro.plate for repeated draws."
        )
    batch = tuple(fn.batch_shape)
    depth = len(batch)
    plate_axes = {depth + d for d in s.plate_dims if depth + d >= 0}
    k = len(plate_axes)
    if plate_axes != set(range(k)):
        raise ValueError(
            f"site {s.name!r}: its batch shape {batch} has dimensions left of its plates "
            f"{[f.name for f in s.frames]} that belong to no plate. Declare them with "
            ".to_event(...) or a numpyro.plate, so that a per-site estimator knows which "
            "elements are independent."
        )
    elems = int(np.prod(batch[:k], dtype=int))
    rest = depth - k
    return _flatten_dist(fn, batch, k, elems, rest, s.name)


def _flatten_dist(fn, batch, k, elems, rest, name):
    """``(builder, params)``: params with a leading axis of ``elems``; ``builder(params_i)``
    makes element i's distribution (its non-plate batch axes reinterpreted as event)."""
    wrap = 0
    while isinstance(fn, nd.Independent):
        wrap += fn.reinterpreted_batch_ndims
        fn = fn.base_dist
    base = fn.base_dist if isinstance(fn, nd.ExpandedDistribution) else fn
    full_batch = batch + tuple(fn.batch_shape)[len(batch) :]  # batch of the base, all axes
    params = {}
    for p, v in _params(base, name).items():
        ev = _event_dim(base, p)
        v = jnp.broadcast_to(v, full_batch + (jnp.shape(v)[jnp.ndim(v) - ev :] if ev else ()))
        params[p] = v.reshape((elems, *v.shape[k:]))
    cls = type(base)
    event = rest + wrap
    _rebuild(base, {p: v[0] for p, v in params.items()}, name)  # a clear error, early

    def builder(element_params):
        d = cls(**element_params)
        return d.to_event(event) if event else d

    return builder, params


def _event_dim(fn, p):
    c = fn.arg_constraints.get(p)
    return int(getattr(c, "event_dim", 0)) if c is not None else 0


def _params(fn, name):
    out = {}
    for p in fn.arg_constraints:
        if p in fn.__dict__:
            out[p] = jnp.asarray(getattr(fn, p))
    if not out:
        raise ValueError(
            f"site {name!r}: cannot split {type(fn).__name__} into per-element distributions "
            "for a per-site estimator; use ex.ScoreFunction(...) or ex.Pathwise() for it."
        )
    return out


def _rebuild(fn, params, name):
    try:
        return type(fn)(**params)
    except Exception as err:  # noqa: BLE001
        raise ValueError(
            f"site {name!r}: cannot rebuild {type(fn).__name__} from its parameters "
            f"({sorted(params)}) for a per-site estimator ({err}); use ex.ScoreFunction(...) "
            "or ex.Pathwise() for it."
        ) from err


@dataclasses.dataclass(frozen=True)
class _SiteContext(Context):
    """A one-site estimator's view of a program site: f re-runs the rest of the program."""

    batch: Callable[[Any, Any], jax.Array] | None = None
    control: Callable[[Any, Any], jax.Array] | None = None

    def f(self, xs: Any, params: Any = None) -> jax.Array:
        return self._values(self.batch, xs, params)

    def f_control(self, xs: Any, params: Any = None) -> jax.Array:
        return self._values(self.control, xs, params)

    def _values(self, fn, xs, params):
        rows = self.params if params is None else params
        values = jnp.asarray(fn(xs, rows))
        if self.debug:
            _check_finite(values, "the program's downstream cost")
        return values


# --------------------------------------------------------------------------- public


def _check_particles(num_particles: Any) -> int:
    if isinstance(num_particles, bool) or not isinstance(num_particles, (int, np.integer)):
        raise TypeError(
            "num_particles must be a Python int (independent runs of the program per "
            f"estimate), got {num_particles!r} of type {type(num_particles).__name__}."
        )
    num_particles = operator.index(num_particles)
    if num_particles < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}.")
    return num_particles


def _check_estimators(estimators: Any) -> None:
    if estimators is not None and not isinstance(estimators, Mapping):
        raise TypeError(
            "estimators must be a mapping from site name to estimator, e.g. "
            f"{{'z': ex.DisARM()}}; got {type(estimators).__name__}."
        )


def particles_over(
    mesh: Any, axis_name: Any, num_particles: int, vectorize: bool | Callable
) -> bool | Callable:
    """``vectorize_particles`` for the engine: with ``mesh``, the particles split over
    ``axis_name`` (:func:`expectax.sharding.particle_map`)."""
    if mesh is None:
        if axis_name is not None:
            raise ValueError(f"axis_name={axis_name!r} needs mesh=<a jax.sharding.Mesh>.")
        return vectorize
    mesh, axis_name, _ = _sharding.check_split_axis(mesh, axis_name, num_particles, "particles")
    if callable(vectorize):
        raise ValueError(
            "mesh: vectorize_particles is a function of your own, and mesh brings its own "
            "(the particles split over the mesh axis inside shard_map). Pass "
            "vectorize_particles=True (vmap per device) or False (lax.map per device)."
        )
    return _sharding.particle_map(mesh, axis_name, vectorize=bool(vectorize))


def program_expectation(
    program: Callable[..., Any],
    *,
    num_particles: int,
    estimators: Mapping[str, Estimator] | None = None,
    vectorize_particles: bool | Callable = True,
    debug: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: Any = None,
) -> Callable[..., jax.Array]:
    r"""Turn a stochastic program into a differentiable Monte Carlo estimate of its expected cost.

    .. math::

        E(\theta, \text{key}) = \frac1N \sum_{n=1}^N \sum_c c_\theta(x^{(n)}),
        \qquad x^{(n)} \sim p_\theta \text{ (the program's joint distribution)},

    where the costs ``c`` are the program's return value, its ``numpyro.factor`` terms and the
    log-densities of its observed sites. ``jax.grad(E)`` combines the estimators chosen per
    site (see :mod:`expectax.programs`); the default is ``Pathwise()`` for reparameterisable
    sites and ``ScoreFunction(baseline=baselines.LeaveOneOut())`` otherwise.

    Args:
      program: ``program(params, *args, **kwargs)``, calling ``numpyro.sample`` /
        ``numpyro.factor`` / ``numpyro.plate``; returns a scalar cost or ``None``.
      num_particles: ``N``, independent runs of the program per estimate (an int ≥ 1;
        leave-one-out baselines need 2).
      estimators: optional mapping from site name to estimator; it overrides
        ``numpyro.sample(name, d, infer={"estimator": ...})`` in the program.
      vectorize_particles: ``True`` (``jax.vmap`` over particles), ``False``
        (``jax.lax.map``, less memory) or a function ``(fn, keys) -> stacked results``.
      debug: check the per-site estimators' downstream costs for NaN/inf at run time.
      mesh: a ``jax.sharding.Mesh`` to split the particles over its axis ``axis_name``
        (``num_particles`` a multiple of the axis size): each device runs its block of
        particles inside ``shard_map`` (with ``jax.vmap``, or ``jax.lax.map`` if
        ``vectorize_particles=False``), particle i still drawn from the same key as without a
        mesh, and the cross-particle statistics (leave-one-out baselines, the mean) are
        reductions over the sharded particle axis, i.e. collectives: the same estimate, to
        float tolerance, on any number of devices. See ``docs/scale.md``.
      axis_name: the mesh axis the particles are split over (may be omitted for a 1-D mesh).

    Returns:
      ``E(params, key, *args, **kwargs) -> scalar``, usable under ``jit``, ``vmap`` and
      ``grad`` (``jax.hessian`` is unbiased when every site is ``ScoreFunction`` or
      ``Pathwise``).

    Example:
      >>> import jax, jax.numpy as jnp, numpyro, expectax as ex
      >>> import numpyro.distributions as dist
      >>> def program(theta):
      ...     a = numpyro.sample("a", dist.Bernoulli(logits=theta[0]))
      ...     b = numpyro.sample("b", dist.Bernoulli(logits=theta[1] + a))
      ...     return (a + b - 0.5) ** 2
      >>> E = ex.program_expectation(program, num_particles=16)
      >>> g = jax.grad(E)(jnp.zeros(2), jax.random.key(0))
    """
    if not callable(program):
        raise TypeError(f"program must be a function of params; got {type(program).__name__}.")
    num_particles = _check_particles(num_particles)
    _check_estimators(estimators)
    engine = _Engine(
        num_particles=num_particles,
        estimators=estimators,
        vectorize=particles_over(mesh, axis_name, num_particles, vectorize_particles),
        debug=debug,
    )

    def E(params: PyTree, key: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        from expectax.expectation import _check_key

        _check_key(key)
        run = _program_tracer(program, args, kwargs)
        return engine.estimate(run, params, key)

    E.__doc__ = f"Monte Carlo estimate of a program's expected cost, {num_particles} particles."
    E.engine = engine
    return E
