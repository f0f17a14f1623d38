r"""The ELBO gallery: how each ELBO *trains* real models, at equal steps and at equal time.

Models (``benchmarks/gallery_models.py``, plain numpyro; data and initial parameters in
``benchmarks/gallery_data.py``): Pyro's SVI-Part-III coin (a non-reparameterised Beta guide,
at 1, 2 and 8 particles), Pyro's Dirichlet-process mixture (stick-breaking, T = 6, a
Categorical per point of 200), the two-layer sigmoid belief net on all 1,797 binarised digits,
the coal-mining-disasters change point (a Categorical switch year) and spike-and-slab
logistic regression on the breast-cancer data (a Bernoulli inclusion indicator per feature).

Methods (``loss=`` of ``numpyro.infer.SVI``, Adam at a fixed learning rate per model, the same
for every method, the same initial parameters per seed):

- ``numpyro``: ``numpyro.infer.TraceGraph_ELBO(K)``;
- ``expectax``: ``expectax.infer.TraceGraph_ELBO(K)``, its defaults as they are when run;
- the named configurations of :data:`CONFIGS` (``--configs name1,name2``), each a factory
  ``(K, sites) -> (elbo, guide_transform)`` (``sites``: the guide's non-reparameterised sites;
  ``guide_transform`` may wrap the guide, e.g. for stateful baselines);
- ``pyro``: Pyro 1.9 with its decaying-average baseline, trained by ``pyro_gallery.py`` in its
  own environment; its exported parameters are evaluated here, the same way as the others.

The mixtures' ``phi`` is a ``simplex`` param, which numpyro optimises through stick-breaking and
Pyro through a softmax: ``--simplex softmax`` gives every method here Pyro's parameterisation,
``pyro_gallery.py --simplex stickbreaking`` gives Pyro numpyro's (docs/elbo-gallery.md, "Pyro's
simplex parameterisation").

For each model and method, over the seeds: the final −ELBO (exact for the coin, otherwise a
``Trace_ELBO`` estimate with many particles and one evaluation key shared by every method) at
the step budget, and at **equal wall time**: every method gets the time numpyro's
TraceGraph_ELBO needs for the budget, converted to steps with per-step times measured in this
process, interleaved between methods after compilation (on a loaded shared machine: the
minimum over rounds of each round's median). Pyro's per-step time comes from its own process.

Commands (seeds 0-4 for development; the headline uses the held-out seeds 100-104)::

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch==2.13.0 pyro-ppl numpy scikit-learn
    .venv-bench/bin/python benchmarks/pyro_gallery.py --seeds 100-104     # Pyro's runs (JSON)
    .venv/bin/python benchmarks/elbo_gallery.py --seeds 100-104           # the table + figures
    .venv/bin/python benchmarks/elbo_gallery.py --quick                   # a check, ~3 min

The Markdown table and a JSON go to ``benchmarks/results/elbo_gallery[-quick].{md,json}``,
the learning curves to ``docs/img/elbo_gallery[_quick]_{steps,time}.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gallery_data as gdata  # noqa: E402
import gallery_models as gm  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402

ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
IMG = os.path.join(ROOT, "docs", "img")
EVAL_KEY = 20240518  # one evaluation key for every method, seed and checkpoint

# ---------------------------------------------------------------------------------------------
# The configurations: name -> factory (K, sites) -> (elbo, guide_transform)
# ---------------------------------------------------------------------------------------------


def _identity(guide):
    return guide


def _at_every_site(k: int, sites: tuple[str, ...], baseline=None):
    """expectax's ELBO with ``ScoreFunction(baseline=baseline)`` at every non-reparameterised
    guide site, the guide unchanged."""
    import expectax as ex
    from expectax.infer import TraceGraph_ELBO

    est = ex.ScoreFunction(baseline=baseline)
    return TraceGraph_ELBO(k, estimators={s: est for s in sites}), _identity


def _config_none(k: int, sites: tuple[str, ...]):
    """The score function without a baseline at every non-reparameterised guide site."""
    return _at_every_site(k, sites)


def _config_loo(k: int, sites: tuple[str, ...]):
    """The score function with the leave-one-out baseline over the K particles."""
    from expectax import baselines

    return _at_every_site(k, sites, baselines.LeaveOneOut())


def _config_stateful(k: int, sites: tuple[str, ...]):
    """expectax's defaults with the guide wrapped by ``expectax.infer.with_baselines``, so that
    baselines may keep state (decaying averages) in numpyro's mutable state across steps."""
    import expectax.infer
    from expectax.infer import TraceGraph_ELBO

    return TraceGraph_ELBO(k), expectax.infer.with_baselines


def _config_shared(k: int, sites: tuple[str, ...], stateful: bool = False):
    """expectax's defaults with ``share_subsample=True``: the particles of a step share one
    minibatch of each subsampled plate (numpyro: a minibatch per particle);
    ``shared_stateful``: and the guide wrapped by ``expectax.infer.with_baselines``."""
    import expectax.infer
    from expectax.infer import TraceGraph_ELBO

    wrap = expectax.infer.with_baselines if stateful else _identity
    return TraceGraph_ELBO(k, share_subsample=True), wrap


def _config_pyroavg(k: int, sites: tuple[str, ...], every_particle: bool = False):
    """Pyro's decaying average (``baselines.DecayingAverage(0.9)``, once per step) at every
    non-reparameterised guide site, the guide wrapped by ``expectax.infer.with_baselines`` to
    carry it through SVI; ``pyroavg_pp``: updated after every particle in turn
    (``every_particle=True``), as Pyro's is with particles not vectorised, and what Pyro's
    ``use_decaying_avg_baseline`` dict means in expectax."""
    import expectax as ex
    import expectax.infer
    from expectax import baselines
    from expectax.infer import TraceGraph_ELBO

    average = baselines.DecayingAverage(0.9, every_particle=every_particle)
    est = ex.ScoreFunction(baseline=average)
    return TraceGraph_ELBO(k, estimators={s: est for s in sites}), expectax.infer.with_baselines


def _config_share1(k: int, sites: tuple[str, ...]):
    """The defaults before 2026-12-07: ``WeightedLeaveOneOut(share=1)``, whose baseline
    shrinks towards 0 in proportion to the other particles' share of their expected squared
    score (the default now shrinks only below a share of 0.03)."""
    from expectax import baselines

    return _at_every_site(k, sites, baselines.WeightedLeaveOneOut(share=1.0))


def _config_noshrink(k: int, sites: tuple[str, ...]):
    """``WeightedLeaveOneOut(share=1e-6)``: the score-weighted leave-one-out baseline that
    (almost) never shrinks towards 0, to separate the default's weighting from its shrinking."""
    from expectax import baselines

    return _at_every_site(k, sites, baselines.WeightedLeaveOneOut(share=1e-6))


def _config_sum6(k: int, sites: tuple[str, ...]):
    """``SumAndSample`` with 6 draws at every site (``infer={"num_samples": 6}`` set by
    ``numpyro.handlers.infer_config``, the guide unchanged): the 5 most probable values summed
    exactly and one sampled from the rest, so exact for a Categorical of at most 6 values (the
    DPM's assignments). Categorical sites only; with costs local to the site's plate the 6
    evaluations of every element share 6 runs of the program per particle."""
    import numpyro

    import expectax as ex
    from expectax.infer import TraceGraph_ELBO

    def transform(guide):
        def config(site):
            return {"num_samples": 6} if site["name"] in sites else {}

        return numpyro.handlers.infer_config(guide, config_fn=config)

    return TraceGraph_ELBO(k, estimators={s: ex.SumAndSample() for s in sites}), transform


#: Named expectax configurations for ``--configs``; extend by adding a factory
#: ``(num_particles, sites) -> (elbo, guide_transform)``. A factory (or its first step) that
#: raises is skipped with a line saying so.
CONFIGS: dict[str, Callable[[int, tuple[str, ...]], tuple[Any, Callable]]] = {
    "none": _config_none,
    "loo": _config_loo,
    "stateful": _config_stateful,
    "pyroavg": _config_pyroavg,
    "share1": _config_share1,
    "noshrink": _config_noshrink,
    "sum6": _config_sum6,
    "pyroavg_pp": functools.partial(_config_pyroavg, every_particle=True),
    "shared": _config_shared,
    "shared_stateful": functools.partial(_config_shared, stateful=True),
}


def _numpyro_elbo(k, sites):
    from numpyro.infer import TraceGraph_ELBO

    return TraceGraph_ELBO(num_particles=k), _identity


def _expectax_elbo(k, sites):
    from expectax.infer import TraceGraph_ELBO

    return TraceGraph_ELBO(num_particles=k), _identity


# ---------------------------------------------------------------------------------------------
# The gallery
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Spec:
    name: str  # row label, e.g. "coin K=2"
    key: str  # the model in gallery_data / pyro_gallery
    model: Callable
    guide: Callable
    args: tuple
    particles: int
    lr: float
    steps: int
    b1: float = 0.9
    exact: Callable | None = None  # params -> -ELBO, when known in closed form
    final_particles: int = 2000  # Trace_ELBO particles for the final -ELBO
    curve_particles: int = 200  # ... for the learning curves
    chunk: int = 100  # particles per vectorised chunk of the evaluation
    sites: tuple[str, ...] = ()
    eval_args: tuple | None = None  # the args of the final -ELBO, when not the training args
    score: tuple[str, Callable] | None = None  # (name, params -> number) at the final steps


def gallery(quick: bool) -> list[Spec]:
    """The models, K, learning rates and step budgets (``quick``: a tenth of the steps)."""
    flips = jnp.asarray(gdata.COIN_FLIPS)
    points = jnp.asarray(gdata.dpm_data())
    digits = jnp.asarray(gdata.digits_data())
    counts = jnp.asarray(gdata.COAL_COUNTS)
    x, y = (jnp.asarray(a) for a in gdata.breast_cancer_data())
    sbn_model, sbn_guide = gm.sbn(np.asarray(digits))
    ssvae = tuple(jnp.asarray(a) for a in gdata.ssvae_data())
    models = {
        "coin": dict(
            model=gm.coin_model, guide=gm.coin_guide, args=(flips,), exact=gm.coin_exact_neg_elbo
        ),
        "dpm": dict(model=gm.dpm_model, guide=gm.dpm_guide, args=(points,)),
        "sbn": dict(
            model=sbn_model,
            guide=sbn_guide,
            args=(digits, digits.shape[0]),
            final_particles=500,
            curve_particles=50,
            chunk=25,
        ),
        "coal": dict(model=gm.coal_model, guide=gm.coal_guide, args=(counts,)),
        "spike": dict(model=gm.spike_model, guide=gm.spike_guide, args=(x, y)),
        "gmm": dict(model=gm.gmm_model, guide=gm.gmm_guide, args=(jnp.asarray(gdata.iris_data()),)),
        "bmm": dict(model=gm.bmm_model, guide=gm.bmm_guide, args=(digits,), chunk=25),
        "mixreg": dict(
            model=gm.mixreg_model,
            guide=gm.mixreg_guide,
            args=tuple(jnp.asarray(a) for a in gdata.diabetes_data()),
        ),
        "outlier": dict(
            model=gm.outlier_model,
            guide=gm.outlier_guide,
            args=tuple(jnp.asarray(a) for a in gdata.diabetes_data()),
        ),
        "hmm": dict(model=gm.hmm_model, guide=gm.hmm_guide, args=(counts,)),
        "amix": dict(
            model=gm.amix_model,
            guide=gm.amix_guide,
            args=(digits, gdata.AMIX_BATCH),
            eval_args=(digits, None),  # the full-data ELBO, not a minibatch's estimate of it
            chunk=25,
        ),
        "ssvae": dict(
            model=gm.ssvae_model,
            guide=gm.ssvae_guide,
            args=(*ssvae[:3], gdata.SSVAE_BATCH),
            eval_args=(*ssvae[:3], None),  # every unlabelled image
            chunk=25,
            score=(
                "classifier accuracy on the unlabelled images",
                jax.jit(lambda p: gm.ssvae_accuracy(p, ssvae[2], ssvae[3])),
            ),
        ),
    }
    specs = [
        Spec(name=name, key=key, particles=k, lr=lr, b1=b1, steps=steps, **models[key])
        for name, key, k, lr, b1, steps in gdata.GALLERY
        if not quick or name in gdata.QUICK_ROWS
    ]
    for s in specs:
        s.sites = nonreparam_sites(s)
        if quick:
            s.steps = gdata.quick_steps(s.steps)
            s.final_particles = min(s.final_particles, 400 if s.key != "sbn" else 100)
            s.curve_particles = min(s.curve_particles, 100 if s.key != "sbn" else 25)
    return specs


def initial_params(model: str, seed: int) -> dict[str, jax.Array]:
    """``gallery_data.initial_params`` (Pyro's port starts from the same values), with a
    mixture's ``phi`` as ``phi_logits = log(phi)`` when the guides use Pyro's softmax
    parameterisation (``--simplex softmax``): the same starting probabilities."""
    init = {k: jnp.asarray(v) for k, v in gdata.initial_params(model, seed).items()}
    if gm.SIMPLEX == "softmax" and "phi" in init:
        init["phi_logits"] = jnp.log(init.pop("phi"))
    return init


def nonreparam_sites(spec: Spec) -> tuple[str, ...]:
    init = initial_params(spec.key, 0)
    guide = handlers.substitute(handlers.seed(spec.guide, 0), data=init)
    tr = handlers.trace(guide).get_trace(*spec.args)
    return tuple(n for n, s in tr.items() if s["type"] == "sample" and not s["fn"].has_rsample)


# ---------------------------------------------------------------------------------------------
# Training, timing, evaluation
# ---------------------------------------------------------------------------------------------


class Runner:
    """One method on one model: ``svi.update`` steps in one jitted ``fori_loop`` (compiled once,
    used for training every seed and for timing)."""

    def __init__(self, spec: Spec, method: str, factory: Callable, seeds: list[int]):
        self.spec, self.method = spec, method
        elbo, transform = factory(spec.particles, spec.sites)
        self.svi = SVI(
            spec.model, transform(spec.guide), optax.adam(spec.lr, b1=spec.b1), loss=elbo
        )
        self.states = [
            self.svi.init(
                jax.random.key(seed),
                *spec.args,
                init_params=initial_params(spec.key, seed),
            )
            for seed in seeds
        ]
        svi, args = self.svi, spec.args

        def run(state, n):
            return jax.lax.fori_loop(0, n, lambda i, s: svi.update(s, *args)[0], state)

        self.run = jax.jit(run)
        self.get_params = jax.jit(svi.get_params)
        t0 = time.perf_counter()
        jax.block_until_ready(self.run(self.states[0], 1))
        self.compile_s = time.perf_counter() - t0
        self.step_s: float = math.nan
        self.cpu_step_s: float = math.nan
        self.done = 0  # steps taken by self.states

    def advance(self, n: int) -> None:
        if n > 0:
            self.states = [self.run(s, n) for s in self.states]
            self.done += n

    def params(self) -> list[dict]:
        return [self.get_params(s) for s in self.states]


def time_steps(runners: list[Runner], rounds: int, calls: int, call_s: float = 0.02) -> int:
    """Per-step time of each runner (single seed, after compilation): ``rounds`` interleaved
    rounds of ``calls`` calls of ``n`` steps each, ``n`` chosen so that one call of the first
    runner (numpyro) takes about ``call_s``; the minimum over rounds of each round's median
    (many short rounds, so that every method meets the machine's quiet moments). The process's
    CPU time per step is kept beside it (``cpu_step_s``). Returns ``n``."""
    states = {id(r): r.states[0] for r in runners}
    first = runners[0]
    n, per_step = 5, math.inf
    for _ in range(4):  # warm up, then size the calls by the fastest of three
        t0 = time.perf_counter()
        states[id(first)] = jax.block_until_ready(first.run(states[id(first)], n))
        per_step = min(per_step, (time.perf_counter() - t0) / n)
    n = int(np.clip(round(call_s / max(per_step, 1e-7)), 5, 5000))
    for r in runners:
        states[id(r)] = jax.block_until_ready(r.run(states[id(r)], n))
    wall = {id(r): [] for r in runners}
    cpu = {id(r): [] for r in runners}
    for _ in range(rounds):
        for r in runners:
            ts, cs = [], []
            for _ in range(calls):
                t0, c0 = time.perf_counter(), time.process_time()
                states[id(r)] = jax.block_until_ready(r.run(states[id(r)], n))
                ts.append((time.perf_counter() - t0) / n)
                cs.append((time.process_time() - c0) / n)
            wall[id(r)].append(float(np.median(ts)))
            cpu[id(r)].append(float(np.median(cs)))
    for r in runners:
        r.step_s = min(wall[id(r)])
        r.cpu_step_s = min(cpu[id(r)])
    return n


class Evaluator:
    """``−ELBO`` of constrained parameters: exact, or a ``Trace_ELBO`` estimate with a fixed key."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self._fns: dict[int, Callable] = {}

    def _fn(self, particles: int) -> Callable:
        if particles not in self._fns:
            spec = self.spec
            chunk = min(spec.chunk, particles)
            n = max(1, particles // chunk)
            elbo = Trace_ELBO(num_particles=chunk)

            def f(params):
                keys = jax.random.split(jax.random.key(EVAL_KEY), n)
                args = spec.args if spec.eval_args is None else spec.eval_args
                losses = jax.lax.map(
                    lambda k: elbo.loss(k, params, spec.model, spec.guide, *args), keys
                )
                return jnp.mean(losses), jnp.std(losses) / math.sqrt(max(n - 1, 1))

            self._fns[particles] = jax.jit(f)
        return self._fns[particles]

    def __call__(self, params_by_seed: list[dict], particles: int) -> tuple[np.ndarray, float]:
        """(−ELBO per seed, the largest evaluation SE)."""
        if self.spec.exact is not None:
            vals = [float(self.spec.exact(p, *self.spec.args)) for p in params_by_seed]
            return np.asarray(vals), 0.0
        f = self._fn(particles)
        out = [tuple(map(float, f(p))) for p in params_by_seed]
        return np.asarray([o[0] for o in out]), max(o[1] for o in out)


def mean_se(v: np.ndarray) -> tuple[float, float]:
    v = np.asarray(v, np.float64)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se


def scores(spec: Spec, params_by_seed: list[dict]) -> dict:
    """``{"score": [value per seed]}`` for a model with a :attr:`Spec.score`, else ``{}``."""
    if spec.score is None:
        return {}
    return {"score": [float(spec.score[1](p)) for p in params_by_seed]}


def train_and_evaluate(
    r: Runner, ev: Evaluator, eq_steps: int, n_seeds: int, curve_points: int
) -> dict:
    """Train to max(budget, equal-time steps), evaluating on a grid, at the budget and at the
    equal-time step count."""
    spec = r.spec
    last = max(spec.steps, eq_steps)
    grid = sorted(
        {int(round(spec.steps * i / curve_points)) for i in range(curve_points + 1)}
        | set(range(0, last + 1, max(1, spec.steps // curve_points)))
        | {spec.steps, eq_steps}
    )
    grid = [g for g in grid if g <= last]
    curve, finals = [], {}
    t0 = time.perf_counter()
    for g in grid:
        r.advance(g - r.done)
        params = r.params()
        final = g in (spec.steps, eq_steps)
        vals, ev_se = ev(params, spec.final_particles if final else spec.curve_particles)
        curve.append({"step": g, "values": vals.tolist()})
        score = scores(spec, params) if final else {}  # once, where the two budgets meet
        if g == spec.steps:
            finals["equal_steps"] = {"values": vals.tolist(), "eval_se": ev_se, **score}
        if g == eq_steps:
            finals["equal_time"] = {"values": vals.tolist(), "eval_se": ev_se, "steps": g, **score}
    return {"curve": curve, **finals, "train_eval_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------
# Pyro's results (benchmarks/pyro_gallery.py)
# ---------------------------------------------------------------------------------------------


def pyro_rows(path: str, spec: Spec, ev: Evaluator, seeds: list[int], numpyro_step_s: float):
    """Pyro's exported parameters for ``spec``, evaluated like the others: ``(rows, None)``, or
    ``(None, why not)``."""
    if not os.path.exists(path):
        return None, f"no {os.path.relpath(path, ROOT)}"
    with open(path) as f:
        blob = json.load(f)
    run = blob.get("models", {}).get(spec.name)
    if run is None:
        return None, f"{spec.name} not in {os.path.relpath(path, ROOT)}"
    if [int(s) for s in run["seeds"]] != seeds or int(run["steps"]) != spec.steps:
        return None, (
            f"{os.path.relpath(path, ROOT)} has {spec.name} for seeds {run['seeds']} and "
            f"{run['steps']} steps, not seeds {seeds} and {spec.steps} steps"
        )
    ckpts = {int(k): v for k, v in run["checkpoints"].items()}
    step_s = float(run["step_s"])
    eq = spec.steps * numpyro_step_s / step_s
    eq_ckpt = max((g for g in ckpts if g <= eq), default=0)
    curve, out = [], {"step_s": step_s, "pyro": blob.get("versions", {})}
    out["pyro_settings"] = blob.get("settings", {})
    for g in sorted(ckpts):
        params = [
            {k: jnp.asarray(np.asarray(v, np.float32)) for k, v in p.items()} for p in ckpts[g]
        ]
        final = g in (spec.steps, eq_ckpt)
        vals, ev_se = ev(params, spec.final_particles if final else spec.curve_particles)
        curve.append({"step": g, "values": vals.tolist()})
        score = scores(spec, params) if final else {}  # once, where the two budgets meet
        if g == spec.steps:
            out["equal_steps"] = {"values": vals.tolist(), "eval_se": ev_se, **score}
        if g == eq_ckpt:
            out["equal_time"] = {
                "values": vals.tolist(),
                "eval_se": ev_se,
                "steps": g,
                "exact_steps": eq,
                **score,
            }
    out["curve"] = curve
    return out, None


def earlier_pyro_rows(path: str, spec: Spec, seeds: list[int]):
    """Pyro's rows of ``spec`` from an earlier run's JSON (``--pyro-rows-from``), already
    evaluated with the same evaluation key: ``(rows, None)``, or ``(None, why not)``. For
    re-running expectax's side after a change to expectax, which leaves Pyro's runs as they were
    (their equal-time point stays the one computed with that run's numpyro time)."""
    with open(path) as f:
        blob = json.load(f)
    rel = os.path.relpath(path, ROOT)
    if [int(s) for s in blob["meta"]["seeds"]] != seeds:
        return None, f"{rel} is for seeds {blob['meta']['seeds']}, not {seeds}"
    res = blob["results"].get(spec.name)
    if res is None or "pyro" not in res["methods"] or int(res["spec"]["steps"]) != spec.steps:
        return None, f"{rel} has no Pyro rows for {spec.name} at {spec.steps} steps"
    return res["methods"]["pyro"], None


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def fmt(v: tuple[float, float], digits: int) -> str:
    m, se = v
    if math.isnan(se):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {se:.{digits}f}"


def digits_for(values: list[float]) -> int:
    spread = max(values) - min(values) if values else 1.0
    scale = max(abs(v) for v in values) if values else 1.0
    if scale < 20 or spread < 0.05:
        return 4
    return 1 if scale > 1000 else 2


def goal_check(rows: dict) -> str:
    """Issue 18's goal: expectax's defaults at or below the best of numpyro and Pyro (within the
    standard error of the difference over seeds)."""
    if "expectax" not in rows:
        return ""
    parts = []
    for key, label in (("equal_steps", "equal steps"), ("equal_time", "equal time")):
        refs = {m: mean_se(rows[m][key]["values"]) for m in ("numpyro", "pyro") if m in rows}
        if not refs or key not in rows["expectax"]:
            continue
        ref_name, ref = min(refs.items(), key=lambda kv: kv[1][0])
        mine = mean_se(rows["expectax"][key]["values"])
        diff = mine[0] - ref[0]
        se = math.sqrt(np.nan_to_num(mine[1]) ** 2 + np.nan_to_num(ref[1]) ** 2)
        verdict = "met" if diff <= se else "missed"
        parts.append(f"{label} {verdict} (expectax − {ref_name} = {diff:+.4g} ± {se:.2g})")
    return "defaults vs the best of numpyro and Pyro: " + "; ".join(parts) if parts else ""


def _machine(meta: dict) -> str:
    """How loaded the machine was while timing (runs before the load was recorded: loaded)."""
    load = meta.get("load")
    if load is None:
        return "**on a loaded shared 2-core machine**"
    return (
        f"on a 2-core machine with load average {load[0]:.1f} at the start and {load[1]:.1f} at "
        "the end of the run (the run itself accounts for 1 to 2)"
    )


def markdown(results: dict, meta: dict) -> str:
    lines = [
        f"# ELBO gallery{' (quick)' if meta['quick'] else ''}",
        "",
        f"Seeds {meta['seeds']}; final −ELBO mean ± s.e. over seeds (lower is better); "
        "coin exact, the others a `Trace_ELBO` estimate with the stated particles and one "
        "evaluation key shared by all methods. Equal time: each method gets the wall time "
        "numpyro's TraceGraph_ELBO needed for the step budget; per-step times measured "
        f"interleaved in one process after compilation, {_machine(meta)} "
        f"({meta['device']}); Pyro's per-step time measured in its own process and its "
        "equal-time value read at its last checkpoint within that time.",
        "",
        "| model | K | lr | steps | method | −ELBO, equal steps | −ELBO, equal time "
        "| steps in equal time | ms / step | × numpyro |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in results.items():
        spec = m["spec"]
        rows = m["methods"]
        vals = [
            v
            for r in rows.values()
            for key in ("equal_steps", "equal_time")
            if key in r
            for v in r[key]["values"]
        ]
        d = digits_for(vals)
        t_np = rows.get("numpyro", {}).get("step_s", math.nan)
        best = {
            key: min(mean_se(r[key]["values"])[0] for r in rows.values() if key in r)
            for key in ("equal_steps", "equal_time")
        }

        def cell(r, key, d=d, best=best):
            if key not in r:
                return "–"
            v = mean_se(r[key]["values"])
            return f"**{fmt(v, d)}**" if v[0] == best[key] else fmt(v, d)

        for meth, r in rows.items():
            es, et = cell(r, "equal_steps"), cell(r, "equal_time")
            n_et = r.get("equal_time", {}).get("steps", "–")
            ms = 1e3 * r["step_s"]
            ratio = r["step_s"] / t_np
            lines.append(
                f"| {name} | {spec['particles']} | {spec['lr']:g} | {spec['steps']} | {meth} "
                f"| {es} | {et} | {n_et} | {ms:.3g} | {ratio:.2f} |"
            )
    lines += ["", "Lowest mean per model and column in bold.", ""]
    for name, m in results.items():
        goal = goal_check(m["methods"])
        if goal:
            lines.append(f"- {name}: {goal}")
    lines.append("")
    for name, m in results.items():
        label = m["spec"].get("score")
        for key, when in (("equal_steps", "equal steps"), ("equal_time", "equal time")):
            cells = [
                f"{meth} {fmt(mean_se(r[key]['score']), 3)}"
                for meth, r in m["methods"].items()
                if "score" in r.get(key, {})
            ]
            if label and cells:
                lines.append(f"- {name}: {label}, {when}: " + "; ".join(cells))
    for name, m in results.items():
        ev = max(
            (r.get("equal_steps", {}).get("eval_se", 0.0) for r in m["methods"].values()),
            default=0.0,
        )
        init = mean_se(m["initial"])
        lines.append(
            f"- {name}: initial −ELBO {init[0]:.4g}; evaluation: "
            + (
                "exact"
                if m["spec"]["exact"]
                else f"{m['spec']['final_particles']} particles, largest evaluation s.e. {ev:.3g}"
            )
        )
    if meta.get("skipped"):
        lines.append("")
        for s in meta["skipped"]:
            lines.append(f"- skipped: {s}")
    if meta.get("pyro_note"):
        lines += ["", f"- {meta['pyro_note']}"]
    settings = [
        m["pyro"].get("pyro_settings", {})
        for m in (r["methods"] for r in results.values())
        if "pyro" in m
    ]
    if any(not st.get("baseline") and "baseline" in st for st in settings):
        lines += ["", "- Pyro ran without its baseline (`pyro_gallery.py --no-baseline`)."]
    if any(st.get("simplex") == "stickbreaking" for st in settings):
        lines += [
            "",
            "- Pyro's mixture guides hold `phi` through the stick-breaking bijection, numpyro's "
            "parameterisation of a simplex param (`pyro_gallery.py --simplex stickbreaking`).",
        ]
    if meta.get("simplex") == "softmax":
        lines += [
            "",
            "- The mixtures' guides hold `phi` as `softmax(phi_logits)`, Pyro's parameterisation "
            "of a simplex param (`--simplex softmax`), not numpyro's stick-breaking one.",
        ]
    if meta.get("pyro_rows_from"):
        lines += [
            "",
            f"- Pyro's rows are those of `{meta['pyro_rows_from']}` (the same seeds and "
            "evaluation key; Pyro's runs do not depend on expectax)",
        ]
    lines += ["", f"Total run time {meta['total_s'] / 60:.1f} min.", ""]
    return "\n".join(lines)


STYLES = {"numpyro": "-", "expectax": "-", "pyro": "-"}


def figures(results: dict, prefix: str) -> list[str]:
    """One panel per model, −ELBO (mean ± s.e. over seeds) vs steps and vs seconds. The y-axis
    shows the last 90 % of the step budget (the first drop is cut off), and methods whose
    curves coincide (the same samples and estimator) are told apart by their dashes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    cols = min(4, len(names))  # one row of panels for a run of a few models
    rows_n = math.ceil(len(names) / cols)
    dashes = ["--", "-.", ":", (0, (5, 1, 1, 1))]
    paths = []
    for axis in ("steps", "time"):
        width = 4.2 * max(cols, 2)  # room for the title over a single panel
        fig, axes = plt.subplots(rows_n, cols, figsize=(width, 3.4 * rows_n), squeeze=False)
        for ax, name in zip(axes.flat, names, strict=False):
            m = results[name]
            budget_steps = m["spec"]["steps"]
            top, lo = -math.inf, math.inf
            for i, (meth, r) in enumerate(m["methods"].items()):
                steps = np.array([c["step"] for c in r["curve"]], float)
                vals = np.array([c["values"] for c in r["curve"]], float)
                mean = vals.mean(axis=1)
                se = (
                    vals.std(axis=1, ddof=1) / math.sqrt(vals.shape[1])
                    if vals.shape[1] > 1
                    else 0 * mean
                )
                x = steps if axis == "steps" else steps * r["step_s"]
                keep = x > 0 if axis == "time" else np.ones_like(x, bool)  # log axis: no step 0
                ls = STYLES.get(meth, dashes[i % len(dashes)])
                (line,) = ax.plot(x[keep], mean[keep], label=meth, lw=1.4, ls=ls)
                ax.fill_between(
                    x[keep],
                    (mean - se)[keep],
                    (mean + se)[keep],
                    color=line.get_color(),
                    alpha=0.15,
                )
                late = (steps >= 0.1 * budget_steps) & (steps <= budget_steps)
                if late.any():
                    top = max(top, float((mean + se)[late].max()))
                lo = min(lo, float((mean - se).min()))
            if axis == "time":
                budget = budget_steps * m["methods"]["numpyro"]["step_s"]
                ax.axvline(budget, color="grey", ls=":", lw=1)
                ax.set_xscale("log")
            if math.isfinite(top) and top > lo:
                pad = 0.05 * (top - lo)
                ax.set_ylim(lo - pad, top + pad)
            title = name if "K=" in name else f"{name} (K={m['spec']['particles']})"
            ax.set_title(title)
            ax.set_xlabel("step" if axis == "steps" else "seconds (measured time per step; log)")
            ax.set_ylabel("−ELBO")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=8)
        fig.suptitle(
            "ELBO gallery: −ELBO (mean ± s.e. over seeds) vs "
            + ("step" if axis == "steps" else "wall time (dotted: numpyro's budget)")
        )
        fig.tight_layout()
        path = f"{prefix}_{axis}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def parse_seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def merge_pyro(blob: dict, pyro_path: str) -> None:
    """Pyro's rows, evaluated as in a full run, added to an earlier run's results (the Pyro
    script runs in its own environment and may finish after the numpyro/expectax run)."""
    seeds = [int(s) for s in blob["meta"]["seeds"]]
    specs = {s.name: s for s in gallery(bool(blob["meta"]["quick"]))}
    missing = []
    for name, res in blob["results"].items():
        spec = specs[name]
        t_np = res["methods"]["numpyro"]["step_s"]
        rows, why = pyro_rows(pyro_path, spec, Evaluator(spec), seeds, t_np)
        if rows is None:
            missing.append(why)
        else:
            res["methods"]["pyro"] = rows
            print(f"  merged pyro into {name}", flush=True)
    blob["meta"]["pyro_note"] = ("no Pyro rows: " + "; ".join(missing)) if missing else None
    blob["meta"]["pyro_rows_from"] = None  # they are this merge's now


def figure_prefix(stem: str, quick: bool) -> str:
    """The figures' path prefix: the docs' names for the default output, else the output's own
    name (a run with ``--out`` never overwrites the headline figures)."""
    name = os.path.basename(stem)
    if name == "elbo_gallery" + ("-quick" if quick else ""):
        name = "elbo_gallery" + ("_quick" if quick else "")
    return os.path.join(IMG, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 seeds, a tenth of the steps")
    ap.add_argument("--seeds", default=None, help="e.g. 100-104 (headline) or 0-4 (development)")
    ap.add_argument("--configs", default="none,loo", help=f"from {sorted(CONFIGS)}; '' for none")
    ap.add_argument(
        "--models",
        default=None,
        help="comma-separated subset of the row names' models: coin,dpm,sbn,coal,spike,gmm,bmm",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="every model's step budget instead of the gallery's (e.g. a longer run; Pyro's rows "
        "then need a Pyro run of the same budget)",
    )
    ap.add_argument("--curve-points", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=20, help="interleaved timing rounds")
    ap.add_argument(
        "--pyro", default=None, help="Pyro's JSON (default: results/pyro_gallery[-quick].json)"
    )
    ap.add_argument(
        "--pyro-rows-from",
        default=None,
        help="take Pyro's evaluated rows from an earlier run's JSON (same seeds) instead of --pyro",
    )
    ap.add_argument("--out", default=None, help="output stem (default results/elbo_gallery)")
    ap.add_argument(
        "--simplex",
        choices=("stickbreaking", "softmax"),
        default="stickbreaking",
        help="how the mixtures' guides parameterise phi: numpyro's simplex param (default) or "
        "Pyro's softmax of free logits (then Pyro's rows only through --pyro-rows-from: its "
        "exported phi does not fit these guides)",
    )
    ap.add_argument(
        "--from-json",
        default=None,
        help="rewrite the table and figures of an earlier run's JSON (no training)",
    )
    ap.add_argument(
        "--merge-pyro",
        action="store_true",
        help="with --from-json: evaluate Pyro's exported run (--pyro) and add its rows",
    )
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            blob = json.load(f)
        stem = (
            args.from_json[: -len(".json")] if args.from_json.endswith(".json") else args.from_json
        )
        if args.merge_pyro:
            merge_pyro(blob, args.pyro or os.path.join(RESULTS, "pyro_gallery.json"))
            with open(stem + ".json", "w") as f:
                json.dump(blob, f)
        md = markdown(blob["results"], blob["meta"])
        print(md)
        with open(stem + ".md", "w") as f:
            f.write(md)
        paths = figures(blob["results"], figure_prefix(stem, blob["meta"]["quick"]))
        print("wrote", stem + ".md", *paths)
        return
    gm.SIMPLEX = args.simplex
    seeds = parse_seeds(args.seeds or ("0-1" if args.quick else "100-104"))
    suffix = "-quick" if args.quick else ""
    out = args.out or os.path.join(RESULTS, "elbo_gallery" + suffix)
    pyro_path = args.pyro or os.path.join(RESULTS, "pyro_gallery" + suffix + ".json")
    curve_points = 10 if args.quick else args.curve_points
    rounds = 8 if args.quick else args.rounds
    names = [c for c in args.configs.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        ap.error(f"--configs: unknown {unknown}; known: {sorted(CONFIGS)}")
    methods = {"numpyro": _numpyro_elbo, "expectax": _expectax_elbo}
    methods.update({n: CONFIGS[n] for n in names})
    specs = gallery(args.quick)
    if args.models:
        keep = set(args.models.split(","))
        specs = [s for s in specs if s.key in keep]
    if args.steps is not None:
        if args.steps < 1:
            ap.error(f"--steps: a positive step budget, got {args.steps}")
        for s in specs:
            s.steps = args.steps
    os.makedirs(RESULTS, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    results, skipped, pyro_missing, timing = {}, [], [], {}
    device = f"{jax.devices()[0].platform}, {os.cpu_count()} cores, jax {jax.__version__}"
    for spec in specs:
        print(
            f"\n== {spec.name}: K={spec.particles}, lr={spec.lr}, {spec.steps} steps, "
            f"seeds {seeds}, non-reparameterised guide sites {spec.sites}",
            flush=True,
        )
        runners = []
        for meth, factory in methods.items():
            try:
                r = Runner(spec, meth, factory, seeds)
            except Exception as err:  # noqa: BLE001 - a config the library cannot build yet
                msg = f"{meth} on {spec.name}: {type(err).__name__}: {str(err).splitlines()[0]}"
                print("  skipped " + msg, flush=True)
                skipped.append(msg)
                continue
            print(f"  {meth}: compiled in {r.compile_s:.1f} s", flush=True)
            runners.append(r)
        n_time = time_steps(runners, rounds, calls=3)
        timing[spec.name] = {"steps_per_call": n_time, "rounds": rounds, "calls": 3}
        t_np = next(r.step_s for r in runners if r.method == "numpyro")
        ev = Evaluator(spec)
        init_params = [initial_params(spec.key, s) for s in seeds]
        initial, _ = ev(init_params, spec.final_particles)
        rows = {}
        for r in runners:
            eq = (
                spec.steps
                if r.method == "numpyro"
                else int(min(4 * spec.steps, round(spec.steps * t_np / r.step_s)))
            )
            res = train_and_evaluate(r, ev, eq, len(seeds), curve_points)
            res["step_s"], res["compile_s"] = r.step_s, r.compile_s
            res["cpu_step_s"] = r.cpu_step_s
            rows[r.method] = res
            es, et = mean_se(res["equal_steps"]["values"]), mean_se(res["equal_time"]["values"])
            print(
                f"  {r.method:>10}: {1e3 * r.step_s:.3f} ms/step ({r.step_s / t_np:.2f}x), "
                f"-ELBO {es[0]:.4f} ± {es[1]:.4f} at {spec.steps} steps, {et[0]:.4f} ± "
                f"{et[1]:.4f} at {eq} steps (equal time); {res['train_eval_s']:.0f} s",
                flush=True,
            )
        if args.pyro_rows_from:
            pyro, why = earlier_pyro_rows(args.pyro_rows_from, spec, seeds)
        elif args.simplex == "softmax" and "phi" in gdata.initial_params(spec.key, 0):
            pyro, why = (
                None,
                f"{spec.name}: --simplex softmax takes Pyro's rows from --pyro-rows-from",
            )
        else:
            pyro, why = pyro_rows(pyro_path, spec, ev, seeds, t_np)
        if pyro is None:
            pyro_missing.append(why)
        else:
            rows["pyro"] = pyro
            es, et = mean_se(pyro["equal_steps"]["values"]), mean_se(pyro["equal_time"]["values"])
            print(
                f"  {'pyro':>10}: {1e3 * pyro['step_s']:.3f} ms/step "
                f"({pyro['step_s'] / t_np:.2f}x), "
                f"-ELBO {es[0]:.4f} ± {es[1]:.4f} at {spec.steps} steps, {et[0]:.4f} ± "
                f"{et[1]:.4f} at {pyro['equal_time']['steps']} steps (equal time)",
                flush=True,
            )
        results[spec.name] = {
            "spec": {
                "key": spec.key,
                "particles": spec.particles,
                "lr": spec.lr,
                "b1": spec.b1,
                "steps": spec.steps,
                "exact": spec.exact is not None,
                "final_particles": spec.final_particles,
                "curve_particles": spec.curve_particles,
                "sites": list(spec.sites),
                "score": spec.score[0] if spec.score else None,
            },
            "initial": initial.tolist(),
            "methods": rows,
        }
    pyro_note = None
    if pyro_missing:
        pyro_note = (
            "no Pyro rows: " + "; ".join(dict.fromkeys(pyro_missing)) + ": run "
            "benchmarks/pyro_gallery.py with the same --quick/--seeds first"
        )
        print(pyro_note)
    meta = {
        "quick": args.quick,
        "seeds": seeds,
        "device": device,
        "skipped": skipped,
        "pyro_note": pyro_note,
        "total_s": time.perf_counter() - t_start,
        "load": [load_start, os.getloadavg()[0]],
        "timing": timing,
        "configs": names,
        "simplex": args.simplex,
        "pyro_rows_from": args.pyro_rows_from and os.path.relpath(args.pyro_rows_from, ROOT),
    }
    md = markdown(results, meta)
    print("\n" + md)
    with open(out + ".md", "w") as f:
        f.write(md)
    with open(out + ".json", "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    os.makedirs(IMG, exist_ok=True)
    paths = figures(results, figure_prefix(out, args.quick))
    print("wrote", out + ".md", out + ".json", *paths)


if __name__ == "__main__":
    main()
