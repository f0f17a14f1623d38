"""compare(): the right recommendation, ties, the bias test, non-finite reporting, errors.

The command line is tested in test_cli.py.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import expectax as ex
from expectax import diagnostics
from expectax.compare import EstimatorReport, _recommend, _total_variance_se
from expectax.estimators.base import pytree_dataclass

F = lambda p, x: (x - 2.0) ** 2  # noqa: E731
DIST = lambda p: dist.Normal(p["mu"], p["sigma"])  # noqa: E731
PARAMS = {"mu": jnp.array(1.0), "sigma": jnp.array(1.0)}
EXACT = {"mu": -2.0, "sigma": 2.0}  # d/dμ (μ−2)² + σ² and d/dσ


def PROGRAM(theta):  # noqa: N802 - a constant of the tests
    with numpyro.plate("units", 3):
        b = numpyro.sample("b", dist.Bernoulli(logits=theta))
    z = numpyro.sample("z", dist.Normal(theta[0], 1.0))
    return (jnp.sum(b * jnp.array([1.0, 2.0, 3.0])) - 2.5) ** 2 + z**2


@pytree_dataclass
class Inflated(ex.Pathwise):
    """A deliberately broken estimator: the pathwise gradient scaled by 1.2."""

    def terms(self, ctx, key, num_samples):
        t = super().terms(ctx, key, num_samples)
        return jax.lax.stop_gradient(t) + 1.2 * (t - jax.lax.stop_gradient(t))


def test_recommends_pathwise_on_smooth_gaussian():
    result = ex.compare(F, DIST, PARAMS, num_samples=8, repeats=400, exact_grad=EXACT)
    assert result.recommended == "Pathwise"
    assert "lowest variance × evaluations" in result.reason
    sf, pw = result.report("ScoreFunction"), result.report("Pathwise")
    # The exact per-estimate variances: pathwise ∂μ: Var(2(x−2))/N = 4σ²/N; the score
    # function's is larger. Check the pathwise value within sampling error of the variance.
    n, r = 8, 400
    exact_var_mu = 4.0 / n
    se_var = exact_var_mu * np.sqrt(2.0 / (r - 1))  # Gaussian estimates: Var(s²) = 2σ⁴/(R−1)
    assert abs(pw.variance[0] - exact_var_mu) < 5 * se_var
    assert sf.total_variance > pw.total_variance
    assert pw.evaluations == n and pw.seconds > 0 and pw.work_variance > 0
    assert np.all(np.abs(pw.bias_z) < result.bias_threshold)


def test_flags_a_biased_estimator_and_never_recommends_it():
    result = ex.compare(
        F,
        DIST,
        PARAMS,
        [ex.ScoreFunction(), Inflated()],
        num_samples=8,
        repeats=400,
        exact_grad=EXACT,
    )
    bad = result.report("Inflated")
    assert bad.max_abs_z() > result.bias_threshold
    assert result.recommended == "ScoreFunction"
    assert "not eligible: Inflated" in result.reason


def test_inapplicable_estimator_is_reported_not_fatal():
    result = ex.compare(
        lambda p, b: jnp.sum(b),
        lambda p: dist.Bernoulli(logits=p),
        jnp.zeros(3),
        num_samples=4,
        repeats=50,
    )
    assert "ScoreFunction" in result.report("Pathwise").error
    assert result.recommended == "ScoreFunction"


def test_nonfinite_estimates_are_reported():
    f_nan = lambda p, x: jnp.where(x > 2.5, jnp.nan, x**2)  # noqa: E731
    result = ex.compare(f_nan, DIST, PARAMS, [ex.Pathwise()], num_samples=4, repeats=100)
    report = result.report("Pathwise")
    assert report.nonfinite_values > 0 and not report.ok
    assert result.recommended is None
    # finite values, NaN gradients: d/dx sqrt(max(x, 0)) is 0 · ∞ for x < 0
    f_bad_grad = lambda p, x: jnp.sqrt(jnp.maximum(x, 0.0))  # noqa: E731
    result = ex.compare(f_bad_grad, DIST, PARAMS, [ex.Pathwise()], num_samples=2, repeats=50)
    report = result.report("Pathwise")
    assert report.nonfinite > 0 and report.nonfinite_values == 0 and not report.ok


def test_invalid_parameter_values_are_named():
    with pytest.raises(ValueError, match="rejected the parameter values.*scale must be positive"):
        ex.compare(F, DIST, {"mu": jnp.array(0.0), "sigma": jnp.array(-1.0)}, repeats=2)


def test_bad_repeats():
    with pytest.raises(ValueError, match="repeats must be an int ≥ 2"):
        ex.compare(F, DIST, PARAMS, repeats=1)


def test_flatten_names_nested():
    names, flat = diagnostics.flatten_names({"a": jnp.zeros((2, 2)), "b": (jnp.zeros(()),)})
    assert names == ["a[0,0]", "a[0,1]", "a[1,0]", "a[1,1]", "b.0"]
    out = flat({"a": jnp.ones((5, 2, 2)), "b": (jnp.ones((5,)),)})
    assert out.shape == (5, 5)


def test_gradient_moments_match_per_sample_grads(key):
    est = ex.ScoreFunction()
    moments = diagnostics.gradient_moments(
        F, DIST, PARAMS, key, estimator=est, num_samples=400, chunk_size=100
    )
    keys = jax.random.split(key, 4)
    grads = [ex.per_sample_grads(F, DIST, PARAMS, k, estimator=est, num_samples=100) for k in keys]
    stacked = jax.tree_util.tree_map(lambda *g: jnp.concatenate(g), *grads)
    for name in ("mu", "sigma"):
        np.testing.assert_allclose(moments.mean[name], stacked[name].mean(), rtol=1e-4)
        np.testing.assert_allclose(moments.variance[name], stacked[name].var(ddof=1), rtol=1e-3)


def test_array_diagnostics(strict_ranks):
    g = {"a": jnp.array([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0]])}
    np.testing.assert_allclose(diagnostics.variance(g)["a"], [1.0, 0.0])
    np.testing.assert_allclose(diagnostics.snr(g)["a"][0], 2.0)
    assert float(diagnostics.snr(g)["a"][1]) == np.inf  # zero variance
    z = diagnostics.bias_zscore(g, {"a": jnp.array([1.0, 2.0])})["a"]
    np.testing.assert_allclose(z, [np.sqrt(3.0), 0.0])
    assert float(diagnostics.work_normalised_variance({"a": 2.0}, 0.5)["a"]) == 1.0


def test_reason_names_the_winner_by_time_only_when_it_differs_beyond_the_noise():
    # MeasureValued spends 5 evaluations of f per sample here; per evaluation, pathwise wins.
    result = ex.compare(
        F,
        DIST,
        PARAMS,
        [ex.Pathwise(), ex.MeasureValued()],
        num_samples=8,
        repeats=300,
        exact_grad=EXACT,
    )
    pw, mv = result.report("Pathwise"), result.report("MeasureValued")
    assert mv.evaluations == 5 * pw.evaluations
    assert pw.evaluation_variance < mv.evaluation_variance
    assert result.recommended == "Pathwise"  # on evaluations, whatever the timing said
    if "by measured variance × time MeasureValued is better" in result.reason:
        assert mv.work_variance < pw.work_variance


# ----------------------------------------------------------------------------- the rule


def _report(name, work, rel, evals_var, evaluations=16, rel_time=0.0):
    """A report with the given variance × time and variance × evaluations; ``rel`` is the
    variance's relative SE, ``rel_time`` the time's."""
    variance = evals_var / evaluations
    seconds = work / variance
    return EstimatorReport(
        name=name,
        unbiased_by_design=True,
        variance=np.array([variance]),
        seconds=seconds,
        seconds_se=rel_time * seconds,
        total_variance_se=rel * variance,
        evaluations=evaluations,
        work_variance=work,
        evaluation_variance=evals_var,
    )


def test_the_recommendation_is_on_evaluations_and_timing_cannot_change_it():
    # A has the lower variance × evaluations; B is 10 % faster per unit of variance. Whatever
    # the timing noise (±1 % or ±50 %), A is recommended: only the reason changes.
    for rel_time in (0.01, 0.5):
        a = _report("A", 1.1e-4, 0.01, 20.0, rel_time=rel_time)
        b = _report("B", 1.0e-4, 0.01, 100.0, evaluations=80, rel_time=rel_time)
        name, reason, tied = _recommend([a, b], have_exact=False, threshold=4.0)
        assert name == "A" and tied == ["A"]
        assert reason.startswith("lowest variance × evaluations among unbiased estimators")
        assert "5× better, beyond 2 standard errors" in reason
        beyond = "by measured variance × time B is better" in reason
        assert beyond == (rel_time == 0.01)  # named only beyond the timing noise


def test_variances_within_their_sampling_error_are_reported_as_tied():
    # variance × evaluations 20 vs 21, each ±8 %: log(1.05) < 2·√2·0.08, a tie (another seed
    # may rank them the other way); the lower one is still recommended, deterministically
    a, b = _report("A", 1e-4, 0.08, 21.0), _report("B", 1e-4, 0.08, 20.0)
    name, reason, tied = _recommend([a, b], have_exact=False, threshold=4.0)
    assert name == "B" and tied == ["B", "A"]
    assert "tied, within 2 standard errors" in reason
    # the order of the reports does not matter
    assert _recommend([b, a], have_exact=False, threshold=4.0)[0] == "B"


def test_identical_calls_recommend_alike_for_compare_and_compare_programs():
    """The same key gives the same estimates, so the same recommendation (issue 18 item 9: a
    program comparison used to flip between DisARM and RLOO with the timing noise)."""
    runs = [
        ex.compare(
            F,
            DIST,
            PARAMS,
            [ex.Pathwise(), ex.MeasureValued()],
            num_samples=4,
            repeats=50,
            time_budget=0.01,
        )
        for _ in range(2)
    ]
    assert runs[0].recommended == runs[1].recommended == "Pathwise"
    assert runs[0].tied == runs[1].tied
    runs = [
        ex.compare_programs(
            PROGRAM,
            jnp.zeros(3),
            {"RLOO": None, "DisARM": {"b": ex.DisARM()}},
            num_particles=4,
            repeats=50,
            time_budget=0.01,
        )
        for _ in range(3)
    ]
    assert len({r.recommended for r in runs}) == 1
    evals = [[r.evaluation_variance for r in run.reports] for run in runs]
    assert evals[0] == evals[1] == evals[2]


def test_total_variance_standard_error_is_calibrated():
    # Gaussian estimates, P independent unit-variance coordinates: Var(Σ s²_j) = 2P/(R−1).
    rng = np.random.default_rng(0)
    r, p, trials = 200, 3, 400
    g = rng.standard_normal((trials, r, p))
    totals = g.var(axis=1, ddof=1).sum(axis=1)
    ses = np.array([_total_variance_se(x) for x in g])
    exact_se = math.sqrt(2 * p / (r - 1))
    # the spread of the totals over trials, and the mean estimated SE, both match the exact SE
    # (SE of a standard deviation from `trials` draws: sd/√(2(trials−1)))
    assert abs(totals.std(ddof=1) - exact_se) < 5 * exact_se / math.sqrt(2 * (trials - 1))
    assert abs(ses.mean() - exact_se) < 5 * ses.std(ddof=1) / math.sqrt(trials)


def test_default_problem_recommends_pathwise():
    problem = ex.problems.get_problem("gaussian-quadratic")
    result = ex.compare(
        problem.f,
        problem.dist_fn,
        problem.params,
        list(problem.estimators),
        exact_grad=problem.exact_grad,
    )
    # pathwise and measure-valued are close in variance × time on this cheap f, but measure-
    # valued evaluates f 5× as often: pathwise has the lowest variance × evaluations
    assert result.recommended == "Pathwise"
    assert result.tied == ["Pathwise"]
    for r in result.reports:
        assert r.seconds_se > 0 and r.total_variance_se > 0
        assert r.work_variance_rel_se >= r.total_variance_se / r.total_variance


def test_to_json_is_strict_json_with_inf_as_a_string():
    # f ignores k, so ∂E/∂k is exactly 0 in every estimate: zero variance, SNR ∞
    params = {"mu": jnp.array(1.0), "k": jnp.array(0.0)}
    result = ex.compare(
        lambda p, x: x**2, lambda p: dist.Normal(p["mu"], 1.0), params, ex.Pathwise(), repeats=20
    )
    assert math.isinf(result.report("Pathwise").snr[0])  # leaves sorted: k first

    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    payload = json.loads(result.to_json(), parse_constant=refuse)
    assert payload["estimators"][0]["snr"][0] == "inf"
    assert float(payload["estimators"][0]["snr"][0]) == math.inf


# ----------------------------------------------------------------------------- mistakes


def test_a_single_estimator_is_accepted():
    result = ex.compare(F, DIST, PARAMS, ex.Pathwise(), num_samples=4, repeats=20)
    assert [r.name for r in result.reports] == ["Pathwise"]


def test_no_estimator_could_run_is_said():
    result = ex.compare(
        lambda p, b: jnp.sum(b),
        lambda p: dist.Bernoulli(logits=p),
        jnp.zeros(3),
        [ex.Pathwise()],
        num_samples=4,
        repeats=20,
    )
    assert result.recommended is None
    assert "no estimator could run" in result.reason


def _raise_type_error(p, x):
    return x + "a"


CATALOGUE = [
    # (what, kwargs overriding the good call, exception, message)
    ("num_samples 0", {"num_samples": 0}, ValueError, "num_samples must be at least 1, got 0"),
    ("num_samples float", {"num_samples": 2.5}, TypeError, "num_samples must be an int ≥ 1"),
    ("num_samples str", {"num_samples": "16"}, TypeError, "num_samples must be an int ≥ 1"),
    ("f raises", {"f": _raise_type_error}, TypeError, r"f\(params, x\) failed on a sample"),
    ("f one argument", {"f": lambda x: x}, TypeError, "taking 2 positional arguments"),
    ("f not callable", {"f": 3.0}, TypeError, "f must be a function"),
    ("f returns None", {"f": lambda p, x: None}, TypeError, "must return a scalar.*NoneType"),
    ("f returns tuple", {"f": lambda p, x: (x, x)}, TypeError, "must return a scalar.*tuple"),
    (
        "f returns vector",
        {"f": lambda p, x: jnp.stack([x, x])},
        TypeError,
        r"must return a scalar for one sample x, got shape \(2,\)",
    ),
    (
        "dist_fn fails",
        {"dist_fn": lambda p: dist.Normal(p["nope"], 1.0)},
        TypeError,
        r"dist_fn\(params\) failed with KeyError",
    ),
    (
        "dist_fn not a distribution",
        {"dist_fn": lambda p: p["mu"]},
        TypeError,
        r"dist_fn\(params\) must return a distribution",
    ),
    (
        "exact_grad structure",
        {"exact_grad": {"mu": -2.0}},
        ValueError,
        "exact_grad must have the structure of params",
    ),
    (
        "exact_grad shape",
        {"exact_grad": {"mu": [1.0, 2.0], "sigma": 2.0}},
        ValueError,
        r"exact_grad: an entry of shape \(2,\) does not match its parameter's shape \(\)",
    ),
    (
        "exact_grad raises",
        {"exact_grad": lambda p: p["nope"]},
        ValueError,
        r"exact_grad\(params\) failed with KeyError",
    ),
    ("estimator class", {"estimators": ex.Pathwise}, TypeError, r"ex\.Pathwise\(\) with paren"),
    ("estimators int", {"estimators": 42}, TypeError, "estimators must be a list"),
    ("estimators empty", {"estimators": []}, ValueError, "estimators is empty"),
    ("estimator str", {"estimators": ["score"]}, TypeError, "estimators: estimator must be"),
    ("huge seed", {"seed": 10**30}, ValueError, "seed must be a 64-bit integer"),
    ("float seed", {"seed": 1.5}, TypeError, "seed must be an int"),
    ("repeats 1", {"repeats": 1}, ValueError, "repeats must be an int ≥ 2"),
]


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [c[1:] for c in CATALOGUE],
    ids=[c[0] for c in CATALOGUE],
)
def test_mistakes_raise_a_clear_error(overrides, error, message):
    kwargs = {"f": F, "dist_fn": DIST, "params": PARAMS, "num_samples": 4, "repeats": 10}
    kwargs.update(overrides)
    with pytest.raises(error, match=message):
        ex.compare(**kwargs)


# ------------------------------------------------------------ mistakes in compare_programs


def _raising_program(theta):
    numpyro.sample("b", dist.Bernoulli(logits=theta))
    raise KeyError("no such column")


def _enumerated_program(theta):
    b = numpyro.sample("b", dist.Bernoulli(logits=theta), infer={"enumerate": "parallel"})
    return jnp.sum(b)


PROGRAM_MISTAKES = [
    # (what, program, configurations, exception, message)
    (
        "unknown site",
        PROGRAM,
        {"mine": {"c": ex.DisARM()}},
        ValueError,
        r"^configurations\['mine'\]: .*sites \['c'\] that the program does not draw",
    ),
    (
        "estimator class",
        PROGRAM,
        {"mine": {"b": ex.DisARM}},
        TypeError,
        r"^configurations\['mine'\]: site 'b' has the class DisARM.*\{'b': ex.DisARM\(\)\}",
    ),
    (
        "DisARM on a Normal",
        PROGRAM,
        {"mine": {"z": ex.DisARM()}},
        ValueError,
        r"^configurations\['mine'\]: site 'z' \(Normal\): DisARM serves Bernoulli",
    ),
    (
        "program raises",
        _raising_program,
        None,
        TypeError,
        r"^program _raising_program\(params\) raised KeyError: 'no such column'$",
    ),
    (
        "enumerated site",
        _enumerated_program,
        None,
        ValueError,
        r"^configurations\['defaults'\]: site 'b' has infer=\{'enumerate'.*TraceEnum_ELBO",
    ),
    (
        "estimator as a string",
        PROGRAM,
        {"mine": {"b": "disarm"}},
        TypeError,
        r"site 'b' has the string 'disarm', not an estimator; pass an instance such as "
        r"ex.DisARM\(\)",
    ),
    (
        "configuration not a mapping",
        PROGRAM,
        {"mine": ex.DisARM()},
        TypeError,
        r"^configurations\['mine'\] must be a mapping \{site: estimator\}.*got a DisARM",
    ),
    (
        "configurations a string",
        PROGRAM,
        "disarm",
        TypeError,
        r"^configurations must be a mapping.*got the string 'disarm'",
    ),
    (
        "list entry a class",
        PROGRAM,
        [None, {"b": ex.ARM}],
        TypeError,
        r"^configurations\[1\]: site 'b' has the class ARM",
    ),
]


@pytest.mark.parametrize(
    ("program", "configurations", "error", "message"),
    [c[1:] for c in PROGRAM_MISTAKES],
    ids=[c[0] for c in PROGRAM_MISTAKES],
)
def test_compare_programs_mistakes_raise_at_once(program, configurations, error, message):
    """Before anything is measured: a good configuration first would otherwise be compiled,
    run and timed before the mistake in the second showed (in its row, not as an error)."""
    configs = configurations
    if isinstance(configurations, dict):
        configs = {"good": {"b": ex.DisARM()}} | configurations
    with pytest.raises(error, match=message) as info:
        ex.compare_programs(program, jnp.zeros(3), configs, num_particles=2, repeats=2)
    assert "\n" not in str(info.value)


def test_compare_programs_bad_key():
    with pytest.raises(TypeError, match="key must be a jax.random key"):
        ex.compare_programs(PROGRAM, jnp.zeros(3), key=3, num_particles=2, repeats=2)
