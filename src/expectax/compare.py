"""``compare``: which estimator should I use on *my* problem?

Runs every candidate estimator ``repeats`` times on the user's f, p_θ and θ, and reports per
estimator the mean gradient, its bias in standard errors against an exact gradient (when one is
known), per-coordinate variance, signal-to-noise ratio, time per estimate (jitted, after
warm-up), f evaluations per estimate, and work-normalised variance (variance × time).

The recommendation (one rule, :func:`_recommend`, for :func:`compare` and
:func:`compare_programs`) is the unbiased estimator with the lowest variance × evaluations: a
cost with no timing noise, so identical calls recommend the same estimator. Estimators within
the variances' own sampling error of it are reported as tied (another seed may rank them the
other way), and when the measured variance × time ranks another estimator first beyond the
timing noise, the reason says so.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from expectax import diagnostics
from expectax import sharding as _sharding
from expectax.estimators.base import Estimator
from expectax.estimators.pathwise import Pathwise
from expectax.estimators.score_function import ScoreFunction
from expectax.expectation import (
    _build,
    _check_callable,
    _check_dist_fn,
    _check_estimator,
    _check_key,
    expectation,
)

__all__ = ["Comparison", "EstimatorReport", "compare", "compare_programs"]

PyTree = Any

#: |bias z-score| above this (after a Bonferroni correction, see ``_bias_threshold``) marks an
#: estimator as biased on the problem.
BIAS_Z = 4.0

#: Two variances × evaluations are tied when their log-ratio is below this many combined standard
#: errors (the variances' sampling errors, in relative terms); the measured variance × time of
#: another estimator is reported as better only beyond this many combined SEs (variances' and
#: times' errors).
TIE_Z = 2.0

#: Timing: rounds of interleaved blocks of calls (every estimator once per round, so a change
#: of machine load hits all of them alike); the time is the median over rounds of each block's
#: median call, its uncertainty the spread of the rounds.
TIMING_ROUNDS = 8

#: The bias test's floating-point floor, in units of the estimates' machine epsilon: a mean of
#: R float32 estimates carries rounding of order √R·ε, so an estimator with (nearly) zero
#: variance is not called biased for it.
ROUNDING = 64.0

#: Seeds accepted by ``jax.random.key``: a signed 64-bit integer.
SEED_RANGE = (-(2**63), 2**63)


@dataclasses.dataclass
class EstimatorReport:
    """What ``compare`` measured for one estimator. Arrays are over flattened coordinates."""

    name: str
    unbiased_by_design: bool
    error: str | None = None
    mean: np.ndarray | None = None
    variance: np.ndarray | None = None
    standard_error: np.ndarray | None = None
    bias_z: np.ndarray | None = None
    snr: np.ndarray | None = None
    seconds: float | None = None
    seconds_se: float | None = None
    total_variance_se: float | None = None
    evaluations: int | None = None
    work_variance: float | None = None
    evaluation_variance: float | None = None
    nonfinite: int = 0
    nonfinite_values: int = 0
    estimates: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Ran, and every estimate (of the gradient and of E[f]) was finite."""
        return self.error is None and self.nonfinite == 0 and self.nonfinite_values == 0

    @property
    def total_variance(self) -> float:
        return float(np.sum(self.variance)) if self.variance is not None else math.nan

    @property
    def work_variance_rel_se(self) -> float | None:
        """Relative standard error of ``work_variance``: variance's and time's, combined."""
        if self.work_variance is None or self.seconds_se is None or self.total_variance_se is None:
            return None
        rel_v = self.total_variance_se / self.total_variance if self.total_variance > 0 else 0.0
        rel_t = self.seconds_se / self.seconds if self.seconds else 0.0
        return math.hypot(rel_v, rel_t)

    @property
    def evaluation_variance_rel_se(self) -> float | None:
        """Relative standard error of ``evaluation_variance``: the variance's alone (the
        evaluations are counted, not measured)."""
        if self.evaluation_variance is None or self.total_variance_se is None:
            return None
        return self.total_variance_se / self.total_variance if self.total_variance > 0 else 0.0

    def max_abs_z(self) -> float | None:
        if self.bias_z is None:
            return None
        z = np.abs(self.bias_z[np.isfinite(self.bias_z) | np.isinf(self.bias_z)])
        return float(np.max(z)) if z.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        def arr(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(v) for v in np.asarray(a)]

        return {
            "name": self.name,
            "unbiased_by_design": self.unbiased_by_design,
            "error": self.error,
            "mean": arr(self.mean),
            "variance": arr(self.variance),
            "standard_error": arr(self.standard_error),
            "bias_z": arr(self.bias_z),
            "snr": arr(self.snr),
            "seconds_per_estimate": self.seconds,
            "seconds_per_estimate_se": self.seconds_se,
            "f_evaluations_per_estimate": self.evaluations,
            "total_variance": None if self.variance is None else self.total_variance,
            "total_variance_se": self.total_variance_se,
            "work_normalised_variance": self.work_variance,
            "work_normalised_variance_rel_se": self.work_variance_rel_se,
            "evaluation_normalised_variance": self.evaluation_variance,
            "evaluation_normalised_variance_rel_se": self.evaluation_variance_rel_se,
            "nonfinite_gradient_estimates": self.nonfinite,
            "nonfinite_value_estimates": self.nonfinite_values,
        }


@dataclasses.dataclass
class Comparison:
    """The result of :func:`compare`: one :class:`EstimatorReport` per estimator."""

    coordinates: list[str]
    reports: list[EstimatorReport]
    exact: np.ndarray | None
    num_samples: int
    repeats: int
    recommended: str | None
    reason: str
    bias_threshold: float
    tied: list[str] = dataclasses.field(default_factory=list)

    def report(self, name: str) -> EstimatorReport:
        for r in self.reports:
            if r.name == name:
                return r
        raise KeyError(f"no estimator named {name!r}; have {[r.name for r in self.reports]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "coordinates": self.coordinates,
            "exact_grad": None if self.exact is None else [float(v) for v in self.exact],
            "num_samples": self.num_samples,
            "repeats": self.repeats,
            "bias_threshold_z": self.bias_threshold,
            "estimators": [r.to_dict() for r in self.reports],
            "recommended": self.recommended,
            "tied_on_evaluation_normalised_variance": self.tied,
            "reason": self.reason,
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as strict JSON (``json.dumps(..., **kwargs)``).

        JSON has no infinity or NaN, so non-finite numbers are written as the strings
        ``"inf"``, ``"-inf"`` and ``"nan"`` (``float()`` reads them back): an SNR of ``"inf"``
        is a coordinate whose estimates have zero variance. Missing values are ``null``.
        """
        import json

        return json.dumps(_json_safe(self.to_dict()), allow_nan=False, **kwargs)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _bias_threshold(num_coordinates: int) -> float:
    """|z| threshold: 4 SE for one coordinate, Bonferroni-corrected (two-sided 6e-5) for more."""
    from statistics import NormalDist

    alpha = 2 * (1 - NormalDist().cdf(BIAS_Z))
    return max(BIAS_Z, NormalDist().inv_cdf(1 - alpha / (2 * max(num_coordinates, 1))))


def _time_estimators(
    fns: list[Callable[..., Any] | None], params: PyTree, key: jax.Array, budget: float
) -> list[tuple[float, float] | None]:
    """Median seconds per call and its standard error, for each jitted ``fn`` (None: skipped).

    After compiling and warming up every function, ``TIMING_ROUNDS`` rounds each time one block
    of calls per function, in an order that rotates from round to round, so that a change of
    machine load during the measurement falls on every estimator alike. A block has about
    ``budget / TIMING_ROUNDS`` seconds of calls (at least one); its time is the median call.
    The result is the median over rounds, with standard error ``1.2533 · sd / √rounds`` of the
    rounds' log-times (the median's asymptotic efficiency), converted back to seconds.
    """
    keys = jax.random.split(key, 64)
    live = [i for i, fn in enumerate(fns) if fn is not None]
    per_call: dict[int, int] = {}
    for i in live:
        fn = fns[i]
        jax.block_until_ready(fn(params, keys[0]))  # compile
        jax.block_until_ready(fn(params, keys[1]))  # warm
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, keys[2]))
        single = max(time.perf_counter() - t0, 1e-7)
        per_call[i] = int(min(500, max(1, round(budget / TIMING_ROUNDS / single))))
    blocks: dict[int, list[float]] = {i: [] for i in live}
    for rnd in range(TIMING_ROUNDS):
        order = live[rnd % len(live) :] + live[: rnd % len(live)] if live else []
        for i in order:
            fn, times = fns[i], []
            for c in range(per_call[i]):
                t0 = time.perf_counter()
                jax.block_until_ready(fn(params, keys[(rnd + c) % 64]))
                times.append(time.perf_counter() - t0)
            blocks[i].append(float(np.median(times)))
    out: list[tuple[float, float] | None] = [None] * len(fns)
    for i in live:
        b = np.asarray(blocks[i])
        median = float(np.median(b))
        rel_se = 1.2533 * float(np.std(np.log(b), ddof=1)) / math.sqrt(len(b))
        out[i] = (median, median * rel_se)
    return out


def _total_variance_se(g: np.ndarray) -> float:
    """Standard error of ``Σ_j Var_j`` from R estimates ``g`` of shape ``(R, P)``.

    ``Σ_j Var_j = Σ_r d_r / (R − 1)`` with ``d_r = ‖g_r − ḡ‖²``; its standard error is
    ``sd(d) · √R / (R − 1)``. This needs no normality and includes the covariance between
    coordinates.
    """
    r = g.shape[0]
    d = np.sum((g - g.mean(axis=0)) ** 2, axis=1)
    return float(np.std(d, ddof=1) * math.sqrt(r) / (r - 1))


def _check_repeats(repeats: Any) -> int:
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)):
        raise TypeError(
            f"repeats must be an int ≥ 2 (independent estimates per estimator); got {repeats!r} "
            f"of type {type(repeats).__name__}. Use e.g. repeats=500."
        )
    if repeats < 2:
        raise ValueError(
            f"repeats must be an int ≥ 2 (variances need two estimates); got {int(repeats)}."
        )
    return int(repeats)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r} of type {type(seed).__name__}.")
    lo, hi = SEED_RANGE
    if not lo <= int(seed) < hi:
        raise ValueError(
            f"seed must be a 64-bit integer (from -2**63 to 2**63 - 1, what jax.random.key "
            f"accepts); got {seed}. Use a smaller seed, e.g. seed % 2**32."
        )
    return int(seed)


def _as_estimators(estimators: Any) -> list[Estimator]:
    if estimators is None:
        return [ScoreFunction(), Pathwise()]
    if isinstance(estimators, Estimator) or (
        isinstance(estimators, type) and issubclass(estimators, Estimator)
    ):
        estimators = [estimators]  # one estimator: compare just it (a class is named below)
    try:
        estimators = list(estimators)
    except TypeError:
        raise TypeError(
            "estimators must be a list of expectax estimators, e.g. [ex.ScoreFunction(), "
            f"ex.Pathwise()]; got {type(estimators).__name__}."
        ) from None
    if not estimators:
        raise ValueError("estimators is empty: pass at least one, e.g. [ex.ScoreFunction()].")
    for est in estimators:
        try:
            _check_estimator(est)
        except TypeError as err:
            raise TypeError(f"estimators: {err}") from None
    return estimators


def _exact_vector(exact_grad: Any, params: PyTree, flat: Callable[[PyTree], Any]) -> np.ndarray:
    if callable(exact_grad):
        try:
            tree = exact_grad(params)
        except Exception as err:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"exact_grad(params) failed with {type(err).__name__}: {err}. Pass a function "
                "of params returning a pytree like params, or the gradient itself."
            ) from err
    else:
        tree = exact_grad
    want = jax.tree_util.tree_structure(params)
    try:
        leaves = want.flatten_up_to(tree)
    except (ValueError, TypeError):
        raise ValueError(
            f"exact_grad must have the structure of params: expected {want}, got "
            f"{jax.tree_util.tree_structure(tree)}. Give one entry per parameter, e.g. "
            '{"mu": -2.0, "sigma": 2.0} for params {"mu": ..., "sigma": ...}.'
        ) from None
    out = []
    for leaf, p in zip(leaves, jax.tree_util.tree_leaves(params), strict=True):
        try:
            value = np.asarray(leaf, dtype=np.float64)
            out.append(np.broadcast_to(value, np.shape(p)))
        except (ValueError, TypeError):
            raise ValueError(
                f"exact_grad: an entry of shape {np.shape(leaf)} does not match its parameter's "
                f"shape {np.shape(p)}; give the exact gradient with the parameter's shape (or a "
                "scalar)."
            ) from None
    return np.asarray(flat(jax.tree_util.tree_unflatten(want, out)), dtype=np.float64)


def _check_problem(f: Any, dist_fn: Any, params: PyTree, num_samples: Any, key: jax.Array) -> Any:
    """The user's f, dist_fn and num_samples, checked once before any estimator runs.

    These mistakes would make every estimator fail alike, so they raise instead of being
    reported per estimator. Returns the distribution at ``params`` (None without dist_fn).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise TypeError(
            f"num_samples must be an int ≥ 1 (samples per gradient estimate), got "
            f"{num_samples!r} of type {type(num_samples).__name__}."
        )
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
    _check_callable(f, "f", "f(params, x) -> scalar", 2)
    if dist_fn is None:
        return None
    _check_dist_fn(dist_fn)
    dist = _build(dist_fn, params)

    def one(p: PyTree, k: jax.Array) -> Any:
        return f(p, _build(dist_fn, p).sample(k))

    try:
        out = jax.eval_shape(one, params, key)
    except (ValueError, TypeError) as err:
        if str(err).startswith("dist_fn("):
            raise
        raise type(err)(
            f"f(params, x) failed on a sample x of dist_fn(params) with {type(err).__name__}: "
            f"{err} (f must take params and one sample, and return a scalar)."
        ) from err
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise TypeError(
            f"f(params, x) failed on a sample x of dist_fn(params) with {type(err).__name__}: "
            f"{err} (f must take params and one sample, and return a scalar)."
        ) from err
    if out is None or isinstance(out, (tuple, list, dict)) or getattr(out, "shape", ()) != ():
        got = type(out).__name__ if not hasattr(out, "shape") else f"shape {out.shape}"
        raise TypeError(
            f"f(params, x) must return a scalar for one sample x, got {got}; reduce it inside "
            "f (e.g. return jnp.sum(...))."
        )
    return dist


def compare(
    f: Callable[[PyTree, Any], Any],
    dist_fn: Callable[[PyTree], Any] | None,
    params: PyTree,
    estimators: Sequence[Estimator] | Estimator | None = None,
    *,
    num_samples: int = 16,
    repeats: int = 500,
    exact_grad: PyTree | Callable[[PyTree], PyTree] | None = None,
    key: jax.Array | None = None,
    seed: int = 0,
    time_budget: float = 0.5,
    progress: Callable[[str], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: Any = None,
) -> Comparison:
    r"""Measure bias, variance, SNR and cost of each estimator on your problem.

    Each estimator produces ``repeats`` independent gradient estimates, each from
    ``num_samples`` samples (one vmapped, jitted call). For coordinate j:

    .. math::

        \bar g_j = \frac1R \sum_r \hat g_j^{(r)}, \quad
        \mathrm{Var}_j = \frac{1}{R-1}\sum_r (\hat g_j^{(r)} - \bar g_j)^2, \quad
        z_j = \frac{\bar g_j - g_j^\star}{\sqrt{\mathrm{Var}_j / R}}, \quad
        \mathrm{SNR}_j = \frac{|\bar g_j|}{\sqrt{\mathrm{Var}_j}} .

    Evaluation-normalised variance, ``Σ_j Var_j × evaluations of f per estimate``, compares
    the estimators at an equal number of f evaluations, the fair count when f dominates the cost
    (ARM and DisARM evaluate f twice per pair, ``MeasureValued`` 2 per parameter dimension).
    Work-normalised variance, ``Σ_j Var_j × seconds per estimate``, is the same comparison at
    equal measured time (an estimator twice as slow must halve the variance to break even).

    The recommendation is the estimator with the lowest variance × evaluations among those
    that are unbiased by design, produced only finite estimates, and (when ``exact_grad`` is
    given) show no significant bias (|z| below a Bonferroni-corrected 4-SE threshold on every
    coordinate). Evaluations are counted, not timed, so the recommendation has no timing noise:
    identical calls (the same key) recommend the same estimator, on any machine load.
    Estimators whose variance × evaluations is within ``TIE_Z = 2`` standard errors of the
    variances' sampling error (of the log-ratio) are reported as *tied* (another seed may rank
    them the other way). Time is measured too (interleaved timing rounds, with its standard
    error), and when variance × time ranks another estimator first beyond ``TIE_Z`` combined
    standard errors, the reason names it: prefer it when f is cheap and the estimators' own
    work dominates. :func:`compare_programs` uses the same rule.

    Mistakes that would make every estimator fail (``num_samples`` not an int ≥ 1, ``f`` or
    ``dist_fn`` raising, a wrong ``exact_grad`` structure) raise ``TypeError``/``ValueError``
    at once; an estimator that cannot serve the problem is reported in its row.

    Args:
      f, dist_fn: as in :func:`expectax.expectation`.
      params: θ at which to compare.
      estimators: the candidates (a list, or one estimator); default
        ``[ScoreFunction(), Pathwise()]``. An estimator that cannot serve the problem (e.g.
        ``Pathwise`` on a discrete distribution) is reported with its error instead of stopping
        the comparison.
      num_samples: samples per gradient estimate (the N you would train with).
      repeats: independent estimates per estimator (R ≥ 2).
      exact_grad: the exact gradient (a pytree like params, or a function of params), if known.
      key: a ``jax.random`` key; default ``jax.random.key(seed)``.
      seed: used when ``key`` is None (a 64-bit integer).
      time_budget: about the seconds spent timing each estimator (at least one call in each of
        ``TIMING_ROUNDS = 8`` rounds).
      progress: optional callback receiving a status line per estimator.
      mesh: a ``jax.sharding.Mesh`` to split the ``repeats`` independent estimates over its
        axis ``axis_name`` (``repeats`` a multiple of the axis size): estimate r still gets
        the r-th key, so the estimates, and the mean, variance, SNR and bias z-scores computed
        from them, are the numbers without a mesh (to float tolerance). The timing (seconds
        per estimate) stays that of one estimate on one device. See ``docs/scale.md``.
      axis_name: the mesh axis the repeats are split over (may be omitted for a 1-D mesh).

    Returns:
      A :class:`Comparison`.

    Example:
      >>> import jax.numpy as jnp, expectax as ex
      >>> import numpyro.distributions as dist
      >>> result = ex.compare(lambda p, x: (x - 2.0) ** 2,
      ...                     lambda p: dist.Normal(p["mu"], p["sigma"]),
      ...                     {"mu": jnp.array(1.0), "sigma": jnp.array(1.0)},
      ...                     exact_grad={"mu": -2.0, "sigma": 2.0})
      >>> result.recommended
      'Pathwise'
    """
    repeats = _check_repeats(repeats)
    split = _repeats_over(mesh, axis_name, repeats)
    estimators = _as_estimators(estimators)
    key = jax.random.key(_check_seed(seed)) if key is None else key
    _check_key(key)
    dist = _check_problem(f, dist_fn, params, num_samples, key)
    candidates = [
        _Candidate(
            est.name,
            bool(est.unbiased),
            lambda est=est: expectation(f, dist_fn, estimator=est, num_samples=num_samples),
            lambda E, est=est: int(est.evaluations(num_samples, dist)),
        )
        for est in estimators
    ]
    return _measure(
        candidates,
        params,
        key,
        repeats,
        exact_grad,
        time_budget,
        progress,
        f"{repeats} estimates × {num_samples} samples",
        num_samples,
        split,
    )


def _repeats_over(mesh: Any, axis_name: Any, repeats: int) -> tuple[Any, Any] | None:
    """``(mesh, axis_name)`` checked for splitting ``repeats`` estimates, or None."""
    if mesh is None:
        if axis_name is not None:
            raise ValueError(f"axis_name={axis_name!r} needs mesh=<a jax.sharding.Mesh>.")
        return None
    mesh, axis_name, _ = _sharding.check_split_axis(mesh, axis_name, repeats, "repeats")
    return mesh, axis_name


def _estimates(
    E: Callable[..., Any], params: PyTree, key: jax.Array, repeats: int, split: Any
) -> tuple[Any, PyTree]:
    """``repeats`` independent values and gradients of E (keys ``split(key, repeats)``), over
    the mesh axis when ``split`` is ``(mesh, axis_name)``."""
    if split is None:
        return diagnostics.estimate_value_and_grads(E, params, key, repeats)
    mesh, axis_name = split
    keys = jax.random.split(key, repeats)
    run = jax.jit(
        lambda p, k: _sharding.sharded_repeats(
            jax.value_and_grad(E), p, k, mesh=mesh, axis_name=axis_name
        )
    )
    return run(params, keys)


@dataclasses.dataclass
class _Candidate:
    """One row of a comparison: how to build its estimate and count its evaluations."""

    name: str
    unbiased: bool
    build: Callable[[], Callable[..., Any]]  # () -> E(params, key)
    evaluations: Callable[[Callable[..., Any]], int]  # E -> evaluations per estimate


def _measure(
    candidates: list[_Candidate],
    params: PyTree,
    key: jax.Array,
    repeats: int,
    exact_grad: Any,
    time_budget: float,
    progress: Callable[[str], None] | None,
    what: str,
    num_samples: int,
    split: tuple[Any, Any] | None = None,
) -> Comparison:
    """The comparison's measurements and recommendation, shared by every kind of problem."""
    names, flat = diagnostics.flatten_names(params)
    exact = None if exact_grad is None else _exact_vector(exact_grad, params, flat)
    threshold = _bias_threshold(len(names))
    reports: list[EstimatorReport] = []
    grad_fns: list[Callable[..., Any] | None] = []
    seen: dict[str, int] = {}
    for i, cand in enumerate(candidates):
        name = cand.name
        if name in seen:  # keep labels unique
            seen[name] += 1
            name = f"{name}#{seen[name]}"
        else:
            seen[name] = 1
        if progress is not None:
            progress(f"{name}: {what}")
        report = EstimatorReport(name=name, unbiased_by_design=cand.unbiased)
        reports.append(report)
        grad_fns.append(None)
        sub = jax.random.fold_in(key, i)
        try:
            E = cand.build()
            values, stacked = _estimates(E, params, sub, repeats, split)
        except (ValueError, TypeError, NotImplementedError) as err:
            # the problem passed the checks before: this estimator cannot serve it (e.g.
            # Pathwise on a discrete distribution); report it in its row.
            report.error = f"{type(err).__name__}: {err}"
            continue
        grad_fns[-1] = jax.jit(jax.grad(E))
        g = np.asarray(flat(stacked), dtype=np.float64)
        finite_rows = np.all(np.isfinite(g), axis=1)
        report.nonfinite = int(np.sum(~finite_rows))
        report.nonfinite_values = int(np.sum(~np.isfinite(np.asarray(values))))
        report.estimates = g
        good = g[finite_rows]
        if good.shape[0] >= 2:
            report.mean = good.mean(axis=0)
            report.variance = np.asarray(diagnostics.variance(good), np.float64)
            report.standard_error = np.asarray(diagnostics.standard_error(good), np.float64)
            report.snr = np.asarray(diagnostics.snr(good), np.float64)
            report.total_variance_se = _total_variance_se(good)
            if exact is not None:
                rounding = ROUNDING * float(np.finfo(_leaf_dtype(stacked)).eps)
                z = diagnostics.bias_zscore(good, exact, rounding=rounding)
                report.bias_z = np.asarray(z, np.float64)
        report.evaluations = cand.evaluations(E)
        if report.variance is not None:
            report.evaluation_variance = report.total_variance * report.evaluations
    if progress is not None and any(fn is not None for fn in grad_fns):
        progress(f"timing {sum(fn is not None for fn in grad_fns)} estimators (interleaved)")
    timings = _time_estimators(grad_fns, params, jax.random.fold_in(key, 2**31), time_budget)
    for report, timing in zip(reports, timings, strict=True):
        if timing is None:
            continue
        report.seconds, report.seconds_se = timing
        if report.variance is not None:
            report.work_variance = report.total_variance * report.seconds
    recommended, reason, tied = _recommend(reports, exact is not None, threshold)
    return Comparison(
        names, reports, exact, num_samples, repeats, recommended, reason, threshold, tied
    )


def compare_programs(
    program: Callable[..., Any],
    params: PyTree,
    configurations: Mapping[str, Mapping[str, Estimator] | None]
    | Sequence[Mapping[str, Estimator] | None]
    | None = None,
    *,
    num_particles: int = 8,
    repeats: int = 300,
    exact_grad: PyTree | Callable[[PyTree], PyTree] | None = None,
    key: jax.Array | None = None,
    seed: int = 0,
    time_budget: float = 0.5,
    progress: Callable[[str], None] | None = None,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: Any = None,
) -> Comparison:
    r""":func:`compare` for a stochastic program: one row per configuration of site estimators.

    Each configuration is a mapping from site name to estimator, as in
    :func:`expectax.program_expectation` (``None`` or ``{}``: the defaults). The rows report the
    same quantities as :func:`compare`, with evaluations counted as runs of the program per
    estimate (a particle's run, plus the re-runs a per-site estimator such as ``DisARM`` makes:
    two per particle and site, or one per plate element when the site's downstream cost is not
    local to its plate). The recommendation follows :func:`compare`'s rule: the lowest
    variance × evaluations (here runs of the program) among unbiased configurations, so
    identical calls recommend alike; time is measured and reported beside it.

    Mistakes in a configuration raise ``TypeError``/``ValueError`` at once, before anything is
    measured, naming the configuration: a site the program does not draw, an estimator class
    instead of an instance (``ex.DisARM`` for ``ex.DisARM()``), an estimator given by name (a
    string), an estimator that cannot serve its site (``DisARM`` on a ``Normal``), a site marked
    ``infer={"enumerate": ...}``; so does a program that raises (with its name and message).

    Args:
      program: ``program(params, *args, **kwargs)`` (see :mod:`expectax.programs`).
      params: θ at which to compare.
      configurations: a mapping ``{label: {site: estimator}}`` or a list of ``{site:
        estimator}`` mappings (labelled by their contents); default: the defaults alone.
      num_particles: particles per estimate (the N you would train with).
      repeats, exact_grad, key, seed, time_budget, progress: as in :func:`compare`.
      args, kwargs: extra arguments passed to the program.
      mesh, axis_name: split the repeats over the mesh axis, as in :func:`compare`.

    Example:
      >>> import jax.numpy as jnp, numpyro, expectax as ex
      >>> import numpyro.distributions as dist
      >>> def program(theta):
      ...     with numpyro.plate("units", 3):
      ...         b = numpyro.sample("b", dist.Bernoulli(logits=theta))
      ...     return jnp.sum((b - 0.45) ** 2)
      >>> result = ex.compare_programs(
      ...     program, jnp.zeros(3),
      ...     {"RLOO": None, "DisARM": {"b": ex.DisARM()}}, num_particles=4, repeats=100)
    """
    from expectax.programs import _check_particles, program_expectation

    repeats = _check_repeats(repeats)
    split = _repeats_over(mesh, axis_name, repeats)
    if not callable(program):
        raise TypeError(f"program must be a function of params; got {type(program).__name__}.")
    num_particles = _check_particles(num_particles)
    configurations = _check_configurations(configurations)
    key = jax.random.key(_check_seed(seed)) if key is None else key
    _check_key(key)
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(
            f"kwargs must be a mapping of keyword arguments; got {type(kwargs).__name__}."
        )
    args = tuple(args)
    kwargs = dict(kwargs or {})
    _check_program_runs(program, params, key, args, kwargs)

    def build(config):
        E = program_expectation(program, num_particles=num_particles, estimators=config)

        def bound(p, k):
            return E(p, k, *args, **kwargs)

        bound.engine = E.engine
        return bound

    for label, config in configurations.items():
        _check_configuration(label, lambda config=config: build(config), params, key)

    candidates = [
        _Candidate(
            label,
            all(bool(e.unbiased) for e in (config or {}).values()),
            lambda config=config: build(config),
            lambda E: E.engine.evaluations(),
        )
        for label, config in configurations.items()
    ]
    return _measure(
        candidates,
        params,
        key,
        repeats,
        exact_grad,
        time_budget,
        progress,
        f"{repeats} estimates × {num_particles} particles",
        num_particles,
        split,
    )


def _config_label(config: Mapping[str, Estimator] | None) -> str:
    if not config:
        return "defaults"
    return ", ".join(f"{site}: {est.name}" for site, est in config.items())


def _describe(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__name__}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"a {type(value).__name__}"


def _check_configurations(configurations: Any) -> dict[str, Mapping[str, Estimator] | None]:
    """``{label: {site: estimator} or None}``, every estimator an instance; or a clear error."""
    if configurations is None:
        return {"defaults": None}
    if isinstance(configurations, Mapping):
        items = [
            (label, config, f"configurations[{label!r}]")
            for label, config in configurations.items()
        ]
    else:
        bad = isinstance(configurations, (str, bytes, Estimator, type))
        try:
            listed = [] if bad else list(configurations)
        except TypeError:
            bad = True
        if bad:
            raise TypeError(
                "configurations must be a mapping {label: {site: estimator}} or a list of "
                f"{{site: estimator}} mappings; got {_describe(configurations)}. Write e.g. "
                "{'DisARM': {'z': ex.DisARM()}, 'defaults': None}."
            )
        items = [(None, config, f"configurations[{i}]") for i, config in enumerate(listed)]
    if not items:
        raise ValueError("configurations is empty: pass at least one (None: the defaults).")
    out: dict[str, Mapping[str, Estimator] | None] = {}
    for label, config, where in items:
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(
                f"{where} must be a mapping {{site: estimator}} (None or {{}}: the defaults); "
                f"got {_describe(config)}. Name the site it is for, e.g. {{'z': ex.DisARM()}}."
            )
        for site, est in (config or {}).items():
            if not isinstance(site, str):
                raise TypeError(
                    f"{where}: site names are strings (the names given to numpyro.sample); "
                    f"got {site!r}."
                )
            if isinstance(est, str):
                raise TypeError(
                    f"{where}: site {site!r} has {_describe(est)}, not an estimator; pass an "
                    f"instance{_suggest(est)} (names as strings are read only by "
                    "'expectax compare --problem file.py:name')."
                )
            if isinstance(est, type) and issubclass(est, Estimator):
                raise TypeError(
                    f"{where}: site {site!r} has the class {est.__name__}, not an estimator "
                    f"instance: write {{{site!r}: ex.{est.__name__}()}} with parentheses."
                )
            try:
                _check_estimator(est)
            except TypeError as err:
                raise TypeError(f"{where}: site {site!r}: {err}") from None
        out[_config_label(config) if label is None else str(label)] = config
    return out


#: Names an estimator is known by (the command line's ``--estimator`` names, the class names
#: in lower case), for a suggestion when one is given as a string.
_NAMES = {
    "score": "ex.ScoreFunction()",
    "reinforce": "ex.ScoreFunction()",
    "rloo": "ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut())",
    "pathwise": "ex.Pathwise()",
    "reparam": "ex.Pathwise()",
    "measure-valued": "ex.MeasureValued()",
    "st": "ex.StraightThrough()",
    "gumbel-softmax": "ex.GumbelSoftmax()",
}


def _suggest(name: str) -> str:
    import difflib

    import expectax

    known = dict(_NAMES)
    for attr in expectax.__all__:
        obj = getattr(expectax, attr)
        if isinstance(obj, type) and issubclass(obj, Estimator) and obj is not Estimator:
            known[attr.lower()] = f"ex.{attr}()"
    match = difflib.get_close_matches(name.strip().lower(), list(known), n=1, cutoff=0.6)
    return f" such as {known[match[0]]}" if match else ", e.g. ex.DisARM() or ex.ScoreFunction()"


def _check_program_runs(
    program: Callable[..., Any], params: PyTree, key: jax.Array, args: tuple, kwargs: dict
) -> None:
    """Trace the program once (no compilation): an error of its own is named at once."""
    from numpyro import handlers

    def run(p: PyTree, k: jax.Array) -> Any:
        with handlers.trace(), handlers.seed(rng_seed=k):
            return program(p, *args, **kwargs)

    try:
        jax.eval_shape(run, params, key)
    except jax.errors.ConcretizationTypeError:
        return  # Python control flow on a traced value: the engine explains it (below)
    except Exception as err:  # noqa: BLE001 - the user's program: re-raised with its name
        name = getattr(program, "__name__", type(program).__name__)
        message = str(err).strip().split("\n")[0]
        kind = type(err) if isinstance(err, (ValueError, TypeError)) else TypeError
        raise kind(
            f"program {name}(params{', *args' if args else ''}{', **kwargs' if kwargs else ''})"
            f" raised {type(err).__name__}: {message}"
        ) from err


def _check_configuration(
    label: str, build: Callable[[], Callable[..., Any]], params: PyTree, key: jax.Array
) -> None:
    """Trace one configuration's gradient (no compilation), so that a mistake in it (a site the
    program does not draw, an estimator that cannot serve its site, an enumerated site) raises
    at once, naming the configuration, instead of after the other rows were measured."""
    try:
        jax.eval_shape(jax.value_and_grad(build()), params, key)
    except (ValueError, TypeError, NotImplementedError) as err:
        message = str(err).strip().split("\n")[0]
        raise type(err)(f"configurations[{label!r}]: {message}") from err


def _leaf_dtype(tree: PyTree) -> Any:
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if np.issubdtype(x.dtype, np.floating)]
    return leaves[0].dtype if leaves else np.float32


def _log_ratio_sigma(a_rel: float | None, b_rel: float | None) -> float:
    return math.hypot(a_rel or 0.0, b_rel or 0.0)


def _within(best: float, other: float, sigma: float) -> bool:
    """Whether ``other`` (≥ ``best``) is within TIE_Z standard errors ``sigma`` of the log-ratio."""
    if best <= 0:
        return other <= 0
    return math.log(other / best) <= TIE_Z * sigma


def _tied(best: EstimatorReport, other: EstimatorReport) -> bool:
    """Whether ``other``'s variance × evaluations is within TIE_Z SEs of ``best``'s (the
    variances' sampling error: a different seed could rank them the other way)."""
    sigma = _log_ratio_sigma(best.evaluation_variance_rel_se, other.evaluation_variance_rel_se)
    return _within(best.evaluation_variance, other.evaluation_variance, sigma)


def _tied_on_time(best: EstimatorReport, other: EstimatorReport) -> bool:
    """Whether ``other``'s variance × time is within TIE_Z combined SEs of ``best``'s."""
    sigma = _log_ratio_sigma(best.work_variance_rel_se, other.work_variance_rel_se)
    return _within(best.work_variance, other.work_variance, sigma)


def _pm(value: float, rel: float | None) -> str:
    return f"{value:.3g}" + ("" if rel is None else f" ± {rel * value:.2g}")


def _pm_evals(r: EstimatorReport) -> str:
    return _pm(r.evaluation_variance, r.evaluation_variance_rel_se)


def _pm_time(r: EstimatorReport) -> str:
    return _pm(r.work_variance, r.work_variance_rel_se)


def _recommend(
    reports: list[EstimatorReport], have_exact: bool, threshold: float
) -> tuple[str | None, str, list[str]]:
    """The one recommendation rule of :func:`compare` and :func:`compare_programs`.

    Among the eligible estimators (unbiased by design, only finite estimates, no significant
    bias against ``exact_grad``), the lowest variance × evaluations: a cost with no timing
    noise, so identical calls (same key) recommend the same estimator. The measured
    variance × time is reported beside it; when it ranks another estimator first beyond the
    timing noise, the reason says so (prefer that one when f, or the program, is cheap).
    Returns ``(name, reason, tied)``, ``tied`` the eligible estimators whose variance ×
    evaluations is within ``TIE_Z`` standard errors of the best's (the recommended first).
    """
    eligible: list[EstimatorReport] = []
    for r in reports:
        if not r.ok or r.evaluation_variance is None or not r.unbiased_by_design:
            continue
        z = r.max_abs_z()
        if have_exact and z is not None and z > threshold:
            continue
        eligible.append(r)
    if not eligible:
        if all(r.error is not None for r in reports):
            return None, "no estimator could run on this problem (see each one's error)", []
        return (
            None,
            "no estimator qualifies: none ran with finite estimates, is unbiased by design "
            "and passed the bias test",
            [],
        )
    # ties in the (deterministic) value are broken by the order of the candidates
    eligible.sort(key=lambda r: r.evaluation_variance)
    best = eligible[0]
    tied = [best] + [r for r in eligible[1:] if _tied(best, r)]
    why = f"lowest variance × evaluations among unbiased estimators ({_pm_evals(best)}"
    if len(eligible) > 1:
        runner = eligible[1]
        value = best.evaluation_variance
        ratio = runner.evaluation_variance / value if value > 0 else math.inf
        if runner in tied:
            why += (
                f" vs {_pm_evals(runner)} for {runner.name}: tied, within {TIE_Z:g} standard "
                "errors of the variances' sampling error, so another seed may rank them the "
                "other way"
            )
        else:
            why += (
                f" vs {_pm_evals(runner)} for {runner.name}, {ratio:.3g}× better, beyond "
                f"{TIE_Z:g} standard errors"
            )
    why += "; a cost free of timing noise, so identical calls recommend alike)"
    timed = [r for r in eligible if r.work_variance is not None]
    if best.work_variance is not None and timed:
        fastest = min(timed, key=lambda r: r.work_variance)
        if fastest is not best and not _tied_on_time(fastest, best):
            ratio = (
                best.work_variance / fastest.work_variance if fastest.work_variance else math.inf
            )
            why += (
                f"; by measured variance × time {fastest.name} is better ({_pm_time(fastest)} "
                f"vs {_pm_time(best)}, {ratio:.3g}×, beyond the timing noise): prefer it when f "
                "(or the program) is cheap and the estimator's own work dominates"
            )
    if have_exact:
        why += f"; its bias is within {threshold:.1f} SE of the exact gradient on every coordinate"
    excluded = [r.name for r in reports if r not in eligible]
    if excluded:
        why += f"; not eligible: {', '.join(excluded)}"
    return best.name, why, [r.name for r in tied]
