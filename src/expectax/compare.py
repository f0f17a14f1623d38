"""``compare``: which estimator should I use on *my* problem?

Runs every candidate estimator ``repeats`` times on the user's f, p_θ and θ, and reports per
estimator the mean gradient, its bias in standard errors against an exact gradient (when one is
known), per-coordinate variance, signal-to-noise ratio, time per estimate (jitted, after
warm-up), f evaluations per estimate, and work-normalised variance (variance × time). The
recommendation is the unbiased estimator with the lowest work-normalised variance.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from expectax import diagnostics
from expectax.estimators.base import Estimator
from expectax.estimators.pathwise import Pathwise
from expectax.estimators.score_function import ScoreFunction
from expectax.expectation import _build, _check_estimator, expectation

__all__ = ["Comparison", "EstimatorReport", "compare"]

PyTree = Any

#: |bias z-score| above this (after a Bonferroni correction, see ``_bias_threshold``) marks an
#: estimator as biased on the problem.
BIAS_Z = 4.0


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
            "f_evaluations_per_estimate": self.evaluations,
            "total_variance": None if self.variance is None else self.total_variance,
            "work_normalised_variance": self.work_variance,
            "evaluation_normalised_variance": self.evaluation_variance,
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
            "reason": self.reason,
        }


def _bias_threshold(num_coordinates: int) -> float:
    """|z| threshold: 4 SE for one coordinate, Bonferroni-corrected (two-sided 6e-5) for more."""
    from statistics import NormalDist

    alpha = 2 * (1 - NormalDist().cdf(BIAS_Z))
    return max(BIAS_Z, NormalDist().inv_cdf(1 - alpha / (2 * max(num_coordinates, 1))))


def _time_estimate(fn: Callable[..., Any], params: PyTree, key: jax.Array, budget: float) -> float:
    """Median wall time of one jitted call after warm-up, repeating for about ``budget`` s."""
    keys = jax.random.split(key, 64)
    jax.block_until_ready(fn(params, keys[0]))  # compile
    jax.block_until_ready(fn(params, keys[1]))  # warm
    times: list[float] = []
    start = time.perf_counter()
    i = 2
    while len(times) < 5 or (time.perf_counter() - start < budget and len(times) < 200):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(params, keys[i % 64]))
        times.append(time.perf_counter() - t0)
        i += 1
    return float(np.median(times))


def compare(
    f: Callable[[PyTree, Any], Any],
    dist_fn: Callable[[PyTree], Any] | None,
    params: PyTree,
    estimators: Sequence[Estimator] | None = None,
    *,
    num_samples: int = 16,
    repeats: int = 500,
    exact_grad: PyTree | Callable[[PyTree], PyTree] | None = None,
    key: jax.Array | None = None,
    seed: int = 0,
    time_budget: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> Comparison:
    r"""Measure bias, variance, SNR and cost of each estimator on your problem.

    Each estimator produces ``repeats`` independent gradient estimates, each from
    ``num_samples`` samples (one vmapped, jitted call). For coordinate j:

    .. math::

        \bar g_j = \frac1R \sum_r \hat g_j^{(r)}, \quad
        \mathrm{Var}_j = \frac{1}{R-1}\sum_r (\hat g_j^{(r)} - \bar g_j)^2, \quad
        z_j = \frac{\bar g_j - g_j^\star}{\sqrt{\mathrm{Var}_j / R}}, \quad
        \mathrm{SNR}_j = \frac{|\bar g_j|}{\sqrt{\mathrm{Var}_j}} .

    Work-normalised variance is ``Σ_j Var_j × seconds per estimate``: an estimator twice as slow
    must halve the variance to break even, since you could average two cheaper estimates.
    Evaluation-normalised variance, ``Σ_j Var_j × evaluations of f per estimate``, is the same
    comparison at an equal number of f evaluations, the fair count when f dominates the cost
    (ARM and DisARM evaluate f twice per pair, ``MeasureValued`` 2 per parameter dimension). The
    recommendation is the estimator with the lowest work-normalised variance among those that are
    unbiased by design, produced only finite estimates, and (when ``exact_grad`` is given) show no
    significant bias (|z| below a Bonferroni-corrected 4-SE threshold on every coordinate).

    Args:
      f, dist_fn: as in :func:`expectax.expectation`.
      params: θ at which to compare.
      estimators: the candidates; default ``[ScoreFunction(), Pathwise()]``. An estimator that
        cannot serve the problem (e.g. ``Pathwise`` on a discrete distribution) is reported with
        its error instead of stopping the comparison.
      num_samples: samples per gradient estimate (the N you would train with).
      repeats: independent estimates per estimator (R ≥ 2).
      exact_grad: the exact gradient (a pytree like params, or a function of params), if known.
      key: a ``jax.random`` key; default ``jax.random.key(seed)``.
      seed: used when ``key`` is None.
      time_budget: seconds spent timing each estimator (at least 5 timed calls).
      progress: optional callback receiving a status line per estimator.

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
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(
            f"repeats must be an int ≥ 2 (variances need two estimates); got {repeats!r}."
        )
    estimators = list(estimators) if estimators is not None else [ScoreFunction(), Pathwise()]
    if not estimators:
        raise ValueError("estimators is empty: pass at least one, e.g. [ex.ScoreFunction()].")
    for est in estimators:
        _check_estimator(est)
    key = jax.random.key(seed) if key is None else key
    names, flat = diagnostics.flatten_names(params)
    exact = None
    if exact_grad is not None:
        tree = exact_grad(params) if callable(exact_grad) else exact_grad
        tree = jax.tree_util.tree_map(
            lambda e, p: jnp.broadcast_to(
                jnp.asarray(e, dtype=jnp.result_type(float)), jnp.shape(p)
            ),
            tree,
            params,
        )
        exact = np.asarray(flat(tree))
    threshold = _bias_threshold(len(names))
    dist = None
    reports: list[EstimatorReport] = []
    seen: dict[str, int] = {}
    for i, est in enumerate(estimators):
        name = est.name
        if name in seen:  # keep labels unique
            seen[name] += 1
            name = f"{name}#{seen[name]}"
        else:
            seen[name] = 1
        if progress is not None:
            progress(f"{name}: {repeats} estimates × {num_samples} samples")
        report = EstimatorReport(name=name, unbiased_by_design=bool(est.unbiased))
        reports.append(report)
        sub = jax.random.fold_in(key, i)
        try:
            E = expectation(f, dist_fn, estimator=est, num_samples=num_samples)
            grad_fn = jax.jit(jax.grad(E))
            values, stacked = diagnostics.estimate_value_and_grads(E, params, sub, repeats)
        except (ValueError, TypeError, NotImplementedError) as err:
            report.error = f"{type(err).__name__}: {err}"
            continue
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
            if exact is not None:
                report.bias_z = np.asarray(diagnostics.bias_zscore(good, exact), np.float64)
        report.seconds = _time_estimate(grad_fn, params, jax.random.fold_in(sub, 1), time_budget)
        if dist is None and dist_fn is not None:
            dist = _build(dist_fn, params)
        report.evaluations = int(est.evaluations(num_samples, dist))
        if report.variance is not None:
            report.work_variance = report.total_variance * report.seconds
            report.evaluation_variance = report.total_variance * report.evaluations
    recommended, reason = _recommend(reports, exact is not None, threshold)
    return Comparison(names, reports, exact, num_samples, repeats, recommended, reason, threshold)


def _recommend(
    reports: list[EstimatorReport], have_exact: bool, threshold: float
) -> tuple[str | None, str]:
    eligible: list[EstimatorReport] = []
    for r in reports:
        if not r.ok or r.work_variance is None or not r.unbiased_by_design:
            continue
        z = r.max_abs_z()
        if have_exact and z is not None and z > threshold:
            continue
        eligible.append(r)
    if not eligible:
        return None, (
            "no estimator qualifies: none ran with finite estimates, is unbiased by design "
            "and passed the bias test"
        )
    eligible.sort(key=lambda r: r.work_variance)
    best = eligible[0]
    why = f"lowest variance × time among unbiased estimators ({best.work_variance:.3g}"
    if len(eligible) > 1:
        runner = eligible[1]
        ratio = runner.work_variance / best.work_variance if best.work_variance > 0 else math.inf
        why += f" vs {runner.work_variance:.3g} for {runner.name}, {ratio:.3g}× better"
    why += ")"
    if have_exact:
        why += f"; its bias is within {threshold:.1f} SE of the exact gradient on every coordinate"
    by_evals = min(eligible, key=lambda r: r.evaluation_variance)
    if by_evals is not best:
        why += (
            f"; at an equal number of f evaluations {by_evals.name} is better "
            f"({by_evals.evaluation_variance:.3g} vs {best.evaluation_variance:.3g} variance × "
            "evaluations): prefer it when f is expensive"
        )
    excluded = [r.name for r in reports if r not in eligible]
    if excluded:
        why += f"; not eligible: {', '.join(excluded)}"
    return best.name, why
