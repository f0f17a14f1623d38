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

import zlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.infer.elbo import ELBO
from numpyro.infer.elbo import TraceGraph_ELBO as _NumpyroTraceGraph
from numpyro.primitives import Messenger

from expectax.estimators.base import Estimator, log_prob

__all__ = ["BASELINE_STATE", "IWELBO", "TraceGraph_ELBO", "with_baselines"]

#: the name of the ``numpyro.mutable`` site that carries the baselines' state through SVI
BASELINE_STATE = "_expectax_baselines"


def with_baselines(guide: Callable) -> Callable:
    """The guide, declaring a ``numpyro.mutable`` site that carries the baselines' history.

    ``numpyro.infer.SVI`` passes mutable state to the loss only when the guide declares a
    mutable site; this wrapper declares one, ``BASELINE_STATE``, holding per latent site (per
    plate element for a local site; one value per site in a subsampled or scaled plate) the
    decaying averages that :class:`expectax.baselines.WeightedLeaveOneOut` and
    :class:`expectax.baselines.DecayingAverage` (what Pyro-style
    ``infer={"baseline": {"use_decaying_avg_baseline": True}}`` means) read. With it the baselines
    work at any particle count, one included::

        svi = SVI(model, expectax.infer.with_baselines(guide), optax.adam(1e-2),
                  loss=expectax.infer.TraceGraph_ELBO(num_particles=1))

    The guide's samples, its return value and its parameters are unchanged (numpyro's own
    ELBOs and ``Predictive`` accept the wrapped guide too).
    """
    import functools

    from numpyro.primitives import mutable

    if not callable(guide):
        raise TypeError(f"with_baselines(guide): guide must be a function, got {guide!r}.")

    @functools.wraps(guide)
    def wrapped(*args, **kwargs):
        with handlers.trace() as tr:
            out = guide(*args, **kwargs)
        mutable(BASELINE_STATE, _history_init(tr))
        return out

    return wrapped


def _history_init(tr) -> dict:
    from expectax import programs

    state = {}
    for name, site in tr.items():
        if site["type"] != "sample" or site.get("is_observed"):
            continue
        scale = site.get("scale")
        pooled = scale is not None and not (isinstance(scale, (int, float)) and scale == 1)
        shape = () if pooled else programs._target_shape(programs._frames(site))
        dtype = jnp.result_type(float)
        state[name] = {
            "count": jnp.zeros((), jnp.int32),
            "wd": jnp.zeros(shape, dtype),
            "w": jnp.zeros(shape, dtype),
        }
    return state


def _draws(guide_tr) -> dict:
    """The guide trace the model replays, without its mutable sites: numpyro's ``scan`` slices
    every site of a replayed trace with ``jnp.shape``, which JAX deprecates for the dict of a
    mutable site (:func:`with_baselines`). Every other site stays, so numpyro's replay still
    refuses a model sample site whose name the guide used for something else."""
    return {n: s for n, s in guide_tr.items() if s["type"] != "mutable"}


def _elbo_tracer(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Callable:
    """``run(...) -> _Run`` for the ELBO program: guide sites sampled, model replayed."""
    from expectax import programs

    def run(params, key, choose, substitutions, provenance=False):
        # numpyro's TraceGraph_ELBO seeds each particle so: the same key, the same samples
        model_seed, guide_seed = jax.random.split(key)
        guide_s = programs._Sampler(
            handlers.seed(handlers.substitute(guide, data=params), rng_seed=guide_seed),
            choose=choose,
            substitutions=substitutions,
            provenance=provenance,
        )
        with handlers.trace() as guide_tr:
            programs._call(guide_s, args, kwargs)
        seeded_model = handlers.seed(model, rng_seed=model_seed)
        model_s = handlers.replay(
            handlers.substitute(seeded_model, data=params), trace=_draws(guide_tr)
        )
        with handlers.trace() as model_tr:
            programs._call(model_s, args, kwargs)
        sites, costs = {}, {}
        for name, site in model_tr.items():
            if site["type"] == "sample":
                value = log_prob(site["fn"], site["value"])
                costs[("model", name)] = (programs._scaled(value, site), programs._frames(site))
        for name, site in guide_tr.items():
            if site["type"] != "sample":
                continue
            fn = site["fn"]
            # ``numpyro.factor`` (or ``obs=``) in a guide is no draw: numpyro's ELBOs count it
            # in log q, so it is only a cost, like the model's observed sites, differentiated
            # pathwise in φ and, through provenance, downstream of the draws it reads
            if not site.get("is_observed"):
                sites[name] = site
                if choose(name, site) != "pathwise":
                    # as numpyro does: the score term carries the guide's dependence on φ; the
                    # direct derivative of −log q_φ has expectation zero and only adds
                    # variance. (Only φ is held: a per-site estimator may still differentiate
                    # in the value.)
                    fn = jax.tree_util.tree_map(jax.lax.stop_gradient, fn)
            value = log_prob(fn, site["value"])
            costs[("guide", name)] = (-programs._scaled(value, site), programs._frames(site))
        flow = any(
            site.get("_control_flow_done") for tr in (model_tr, guide_tr) for site in tr.values()
        )
        return programs._Run(sites, costs, traces=(model_tr, guide_tr), control_flow=flow)

    return run


class TraceGraph_ELBO(_NumpyroTraceGraph):
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
    as numpyro's (it returns ``−ELBO``); pass it as ``loss=`` to ``numpyro.infer.SVI``. It is
    an instance of ``numpyro.infer.TraceGraph_ELBO`` (numpyro's ``isinstance`` checks, e.g.
    SDVI's, accept it), and for the same ``rng_key`` it draws the same samples as numpyro's,
    so the loss value is the same and a user's seeds reproduce their numpyro runs: only the
    gradient differs. With :func:`with_baselines` around the guide, decaying averages of
    earlier steps carried in numpyro's mutable state join the baselines.

    Args:
      num_particles: particles per estimate; the leave-one-out default needs 2 or more (with
        1 particle the default is the plain score function, as in numpyro).
      vectorize_particles: ``True`` (vmap), ``False`` (``lax.map``) or a callable.
      estimators: optional mapping from guide site name to estimator; it overrides the
        ``infer={"estimator": ...}`` of the guide's sites.
      mesh, axis_name: split the particles over the mesh axis ``axis_name`` (as in
        :func:`expectax.program_expectation`): the same loss and gradient, to float
        tolerance, on any number of devices. ``num_particles`` must be a multiple of the axis
        size, and ``vectorize_particles`` ``True`` or ``False`` (per device).
      share_subsample: every particle sees the same minibatch of each subsampled plate
        (``numpyro.plate(..., subsample_size=m)``), drawn once per step, instead of a
        minibatch each (numpyro's draws; the default keeps them). Still unbiased for the
        full-data ELBO; the leave-one-out baseline of a local site then compares draws for
        the *same* data point instead of for other points at the same position. For
        minibatched models with discrete local latents (an amortised guide) it can train far
        better: on the ELBO gallery's semi-supervised VAE, not on its amortised mixture
        (docs/numpyro.md, "Minibatches: share_subsample"). The particles no longer match
        numpyro's samples for the same key.

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
        mesh: jax.sharding.Mesh | None = None,
        axis_name: Any = None,
        share_subsample: bool = False,
    ) -> None:
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        from expectax import programs

        programs._check_particles(num_particles)
        programs._check_estimators(estimators)
        if not isinstance(share_subsample, bool):
            raise ValueError(
                "TraceGraph_ELBO: share_subsample must be True (one minibatch per step for all "
                f"particles) or False (a minibatch per particle, as numpyro), got "
                f"{share_subsample!r}."
            )
        self.share_subsample = share_subsample
        self.estimators = dict(estimators or {})
        # the engine's particle map: True/False/a callable as given (True runs one particle
        # without a vmap), or the mesh's
        self._particle_map = vectorize_particles
        if mesh is not None or axis_name is not None:
            self.vectorize_particles_fn = programs.particles_over(
                mesh, axis_name, num_particles, vectorize_particles
            )
            self._particle_map = self.vectorize_particles_fn

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
            vectorize=self._particle_map,
            debug=False,
        )
        if self.share_subsample:
            rng_key, key_batch = jax.random.split(rng_key)
            model, guide = _SharedSubsample(model, key_batch), _SharedSubsample(guide, key_batch)
        run = _elbo_tracer(model, guide, args, kwargs)
        history = param_map.get(BASELINE_STATE) if isinstance(param_map, Mapping) else None
        if history is None:
            elbo = engine.estimate(run, param_map, rng_key, check=_check_traces)
            return {"loss": -elbo, "mutable_state": None}
        elbo, new = engine.estimate(run, param_map, rng_key, check=_check_traces, history=history)
        return {"loss": -elbo, "mutable_state": {BASELINE_STATE: new}}


class _SharedSubsample(Messenger):
    """Draws every subsampled plate's minibatch from ``key`` (folded with the plate's name), so
    that every particle run under it sees the same minibatch; plates whose indices are already
    set (given, or replayed from the guide) are left alone. Inside numpyro's ``seed``, which
    then draws no key for the plate."""

    def __init__(self, fn: Callable, key: jax.Array) -> None:
        self.key = key
        super().__init__(fn)

    def process_message(self, msg: Any) -> None:
        if msg["type"] == "plate" and msg["value"] is None and msg["kwargs"].get("rng_key") is None:
            name = zlib.crc32(str(msg["name"]).encode())
            msg["kwargs"]["rng_key"] = jax.random.fold_in(self.key, name)


def _check_traces(run: Any) -> None:
    from numpyro.util import _validate_model, check_model_guide_match

    model_tr, guide_tr = run.traces
    check_model_guide_match(model_tr, guide_tr)
    _validate_model(model_tr, plate_warning="strict")


class IWELBO(ELBO):
    r"""The importance-weighted bound with VIMCO for discrete sites and optional DReG.

    .. math::

        \mathcal L_K = \mathbb{E}_{z_{1:K}\sim q_\phi}\Big[\hat L\Big], \qquad
        \hat L = \log \frac1K \sum_{k=1}^K w_k, \quad
        w_k = \frac{p_\theta(x, z_k)}{q_\phi(z_k)} .

    ``K = num_particles``; ``K = 1`` is the ELBO. The gradient estimate is unbiased for
    ``∇ℒ_K``: reparameterisable guide sites are differentiated through their values (the IWAE
    estimator, Burda et al. 2016), the others get VIMCO's score term with a leave-one-out
    learning signal ``L̂ − L̂_{−k}`` per particle (Mnih & Rezende 2016; the same estimator as
    :class:`expectax.VIMCO` for one distribution). With ``dreg=True`` (every guide site
    reparameterisable) the guide's gradient is the doubly-reparameterised estimator of Tucker
    et al. (2019), ``Σ_k w̃_k² ∂log w_k/∂z_k · ∂z_k/∂φ``, whose signal-to-noise ratio does not
    vanish as K grows; the model's is ``Σ_k w̃_k ∇_θ log w_k``. numpyro's ``RenyiELBO`` (α = 0)
    is this bound for reparameterisable guides only.

    With ``plate="data"`` the bound is taken per element of that plate, as a VAE means it:
    ``Σ_i log (1/K) Σ_k w_{ik}``, every site inside the plate (the weights of element i are its
    own sites' log-densities), times the plate's scale when it is subsampled or scaled
    (``numpyro.plate(..., subsample_size=)`` or ``handlers.scale``): then the estimate is
    unbiased for the full data's sum of per-element bounds. Without ``plate`` there is one
    weight per particle for the whole program, and scaled sites are refused (the bound of a
    minibatch is not its share of the full data's bound).

    Args:
      num_particles: ``K ≥ 1``.
      vectorize_particles: as in numpyro's ELBOs.
      dreg: use DReG for the guide's parameters (needs every guide site reparameterisable, and
        no parameter shared by the model and the guide).
      plate: the name of a plate over independent data points, for a bound per element.
      mesh, axis_name: split the K particles over the mesh axis ``axis_name`` (as in
        :func:`expectax.program_expectation`; K a multiple of the axis size): the log-sum-exp
        and the leave-one-out signals over K become collectives, and the loss and gradient
        are those without a mesh, to float tolerance.

    References:
      Burda, Grosse & Salakhutdinov (2016), "Importance weighted autoencoders". Mnih & Rezende
      (2016), "Variational inference for Monte Carlo objectives". Tucker, Lawson, Gu & Maddison
      (2019), "Doubly reparameterized gradient estimators for Monte Carlo objectives".
    """

    can_infer_discrete = True

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool | Callable = True,
        *,
        dreg: bool = False,
        plate: str | None = None,
        mesh: jax.sharding.Mesh | None = None,
        axis_name: Any = None,
    ) -> None:
        super().__init__(num_particles=num_particles, vectorize_particles=vectorize_particles)
        from expectax import programs

        programs._check_particles(num_particles)
        if mesh is not None or axis_name is not None:
            # the K particles' log-weights come back sharded over the axis; the log-sum-exp,
            # the softmax weights and the leave-one-out means over K are reductions over that
            # axis, i.e. collectives
            self.vectorize_particles_fn = programs.particles_over(
                mesh, axis_name, num_particles, vectorize_particles
            )
        if plate is not None and not isinstance(plate, str):
            raise TypeError(f"plate must be the name of a numpyro.plate, got {plate!r}.")
        self.dreg = bool(dreg)
        self.plate = plate

    def loss(self, rng_key, param_map, model, guide, *args, **kwargs) -> jax.Array:
        """``−L̂``, the negative importance-weighted bound; ``jax.grad`` is the estimator."""
        return self.loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)[
            "loss"
        ]

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        import math

        from expectax.estimators.base import magic_box

        k = self.num_particles
        dreg, plate = self.dreg, self.plate
        frozen = jax.tree_util.tree_map(jax.lax.stop_gradient, param_map)
        scales: list[Any] = []

        def term(site, name, fn=None):
            fn = site["fn"] if fn is None else fn
            return _iw_term(log_prob(fn, site["value"]), site, name, plate, scales)

        # one seed for every particle: a subsampled plate draws one minibatch, shared by the K
        # particles (the bound is taken over the same data points); the latent draws come
        # from each particle's own key
        key_particles, key_seed = jax.random.split(rng_key)

        def particle(key_z):
            guide_tr, model_tr = _iw_traces(model, guide, param_map, key_z, key_seed, args, kwargs)
            log_w, log_q_discrete = 0.0, 0.0
            for name, site in guide_tr.items():
                if site["type"] != "sample":
                    continue
                reparam = getattr(site["fn"], "has_rsample", False)
                if dreg and not reparam:
                    raise ValueError(
                        f"IWELBO(dreg=True): guide site {name!r} ({type(site['fn']).__name__}) "
                        "is not reparameterisable; DReG needs every guide site to be. Use "
                        "IWELBO(dreg=False), which serves it with VIMCO."
                    )
                lq = term(site, name)
                log_w = log_w - lq
                if not reparam:
                    log_q_discrete = log_q_discrete + lq
            for name, site in model_tr.items():
                if site["type"] == "sample":
                    log_w = log_w + term(site, name)
            out = {"log_w": log_w, "log_q": log_q_discrete + 0.0 * log_w}
            if dreg:  # log w with φ only through z (the path), and θ only directly
                values = {n: s["value"] for n, s in guide_tr.items() if s["type"] == "sample"}
                path = 0.0
                for name, site in guide_tr.items():
                    if site["type"] == "sample":
                        sg_fn = jax.tree_util.tree_map(jax.lax.stop_gradient, site["fn"])
                        path = path - term(site, name, sg_fn)
                m_path = _model_log_density(model, frozen, values, key_seed, args, kwargs, term)
                sg_values = jax.tree_util.tree_map(jax.lax.stop_gradient, values)
                direct = _model_log_density(
                    model, param_map, sg_values, key_seed, args, kwargs, term
                )
                out["path"], out["direct"] = path + m_path, direct
            return out

        keys = jax.random.split(key_particles, k)
        out = self.vectorize_particles_fn(particle, keys)  # leaves (K,) or (K, B)
        log_w = out["log_w"]
        f_sg = jax.lax.stop_gradient(log_w)
        log_k = math.log(k)
        bound = jax.scipy.special.logsumexp(f_sg, axis=0) - log_k  # per element
        weights = jax.nn.softmax(f_sg, axis=0)
        if dreg:
            surrogate = weights * (out["direct"] - jax.lax.stop_gradient(out["direct"]))
            surrogate += weights**2 * (out["path"] - jax.lax.stop_gradient(out["path"]))
        else:
            surrogate = weights * (log_w - f_sg)
            if k >= 2:
                others = (jnp.sum(f_sg, axis=0) - f_sg) / (k - 1)
                eye = jnp.eye(k, dtype=bool).reshape((k, k) + (1,) * (f_sg.ndim - 1))
                swapped = jnp.where(eye, others[:, None], f_sg[None, :])  # [j, k, ...]
                signal = bound - (jax.scipy.special.logsumexp(swapped, axis=1) - log_k)
            else:
                signal = jnp.broadcast_to(bound, f_sg.shape)
            surrogate += (magic_box(out["log_q"]) - 1.0) * signal
        total = jnp.sum(bound) + jnp.sum(surrogate)
        scale = scales[0] if scales else None
        if plate is not None and scale is not None:
            total = scale * total
        return {"loss": -total, "mutable_state": None}


def _iw_traces(model, guide, params, key_z, key_seed, args, kwargs):
    from expectax import programs

    def choose(name, msg):
        return "pathwise" if getattr(msg["fn"], "has_rsample", False) else "score"

    guide_seed, model_seed = jax.random.split(key_seed)
    guide_s = programs._Sampler(
        handlers.substitute(guide, data=params), key=key_z, choose=choose, substitutions={}
    )
    with handlers.trace() as guide_tr, handlers.seed(rng_seed=guide_seed):
        programs._call(guide_s, args, kwargs)
    model_s = handlers.replay(handlers.substitute(model, data=params), trace=_draws(guide_tr))
    with handlers.trace() as model_tr, handlers.seed(rng_seed=model_seed):
        programs._call(model_s, args, kwargs)
    _check_traces(programs._Run({}, {}, traces=(model_tr, guide_tr)))
    return guide_tr, model_tr


def _model_log_density(model, params, values, key_seed, args, kwargs, term):
    from expectax import programs

    _, model_seed = jax.random.split(key_seed)
    m = handlers.substitute(handlers.substitute(model, data=params), data=values)
    with handlers.trace() as tr, handlers.seed(rng_seed=model_seed):
        programs._call(m, args, kwargs)
    total = 0.0
    for name, site in tr.items():
        if site["type"] == "sample":
            total = total + term(site, name)
    return total


def _iw_term(value, site, name, plate, scales):
    """A site's log-density for the bound: summed (``plate=None``; unscaled sites only) or
    reduced to the named plate's elements (the plate's scale collected in ``scales``)."""
    from expectax import programs

    value = programs._masked(value, site)
    scale = site.get("scale")
    scaled = scale is not None and not (isinstance(scale, (int, float)) and scale == 1)
    if plate is None:
        if scaled:
            raise ValueError(
                f"IWELBO: site {name!r} is in a subsampled or scaled plate (scale {scale}); the "
                "importance-weighted bound of a minibatch is not an unbiased share of the full "
                "bound. Pass plate='<the data plate's name>' for a bound per data point "
                "(IWELBO(K, plate='data')), or use TraceGraph_ELBO."
            )
        return jnp.sum(value)
    frames = programs._frames(site)
    frame = [f for f in frames if f.name == plate]
    if not frame:
        raise ValueError(
            f"IWELBO(plate={plate!r}): site {name!r} is outside the plate {plate!r}; a bound per "
            "element needs every site of model and guide inside it (global latent variables "
            "couple the elements). Use plate=None for one bound over the whole program."
        )
    if scaled and not scales:
        scales.append(scale)  # the plate's scale (the same for every site in it)
    reduced = programs._reduce(value, frames, tuple(frame))
    return jnp.reshape(reduced, (-1,))
