"""A catalogue of hostile inputs: one parametrised test per family of mistakes (issue 13, item 9).

Each family either raises a clear error (its message pinned with ``pytest.raises(match=...)``)
or, where the library used to return a silently wrong number, is checked statistically against
the exact answer: ``|mean − exact| < 5 SE`` with the standard error from the samples and fixed
keys.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import expectax as ex
from expectax.expectation import debug_errors

KEY = jax.random.key(0)


def _mean_se(jac):
    """Mean and standard error over the leading (sample) axis of per-sample gradients."""
    jac = np.asarray(jac, dtype=np.float64)
    return jac.mean(axis=0), jac.std(axis=0, ddof=1) / np.sqrt(jac.shape[0])


def _assert_close(jac, exact, k=5.0):
    mean, se = _mean_se(jac)
    assert np.all(np.abs(mean - exact) < k * se + 1e-6), (mean, se, exact)


# ------------------------------------------------------------ 1. a support that depends on θ

SUPPORT_CASES = {
    "uniform-high": lambda t: dist.Uniform(0.0, t),
    "uniform-low": lambda t: dist.Uniform(t - 2.0, 1.0),
    "pareto-scale": lambda t: dist.Pareto(t, 3.0),
    "uniform-to_event": lambda t: dist.Uniform(jnp.zeros(2), t * jnp.ones(2)).to_event(1),
}
SCORE_ESTIMATORS = {
    "sf": ex.ScoreFunction(),
    "sf-loo": ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut()),
    "vimco": ex.VIMCO(),
}


@pytest.mark.parametrize("case", list(SUPPORT_CASES))
@pytest.mark.parametrize("est", list(SCORE_ESTIMATORS))
@pytest.mark.parametrize("how", ["grad", "jit-grad", "grad-jit", "jacfwd", "per-sample"])
def test_support_depending_on_theta_is_refused(case, est, how):
    dist_fn, estimator = SUPPORT_CASES[case], SCORE_ESTIMATORS[est]
    f = lambda p, x: jnp.sum(x)
    theta = jnp.array(1.5)
    match = r"support of .* depends on the parameters.*Leibniz.*Pathwise"
    with pytest.raises(ValueError, match=match):
        if how == "per-sample":
            ex.per_sample_grads(f, dist_fn, theta, KEY, estimator=estimator, num_samples=4)
            return
        E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=4)
        fn = {
            "grad": jax.grad(E),
            "jit-grad": jax.jit(jax.grad(E)),
            "grad-jit": jax.grad(jax.jit(E)),
            "jacfwd": jax.jacfwd(E),
        }[how]
        fn(theta, KEY)


def test_fixed_support_and_values_still_work():
    """A support that does not move with θ, or no derivative at all, is not refused."""
    E = ex.expectation(
        lambda p, x: p * x,
        lambda p: dist.Uniform(0.0, 2.0),
        estimator=ex.ScoreFunction(),
        num_samples=8,
    )
    assert np.isfinite(jax.grad(E)(jnp.array(1.0), KEY))
    E = ex.expectation(
        lambda p, x: x, lambda p: dist.Uniform(0.0, p), estimator=ex.ScoreFunction(), num_samples=8
    )
    assert np.isfinite(jax.jit(E)(jnp.array(1.0), KEY))  # a value needs no derivative
    E = ex.expectation(
        lambda p, x: x * p,
        lambda p: dist.Exponential(p),
        estimator=ex.ScoreFunction(),
        num_samples=8,
    )
    assert np.all(np.isfinite(jax.hessian(E)(jnp.array(1.0), KEY)))  # positive: a fixed support


def test_uniform_theta_by_pathwise_is_right():
    """The fix the error recommends: d/dθ E_{U(0, θ)}[x] = 1/2 (the score function gave −1/2)."""
    jac = ex.per_sample_grads(
        lambda p, x: x,
        lambda p: dist.Uniform(0.0, p),
        jnp.array(1.0),
        KEY,
        estimator=ex.Pathwise(),
        num_samples=4000,
    )
    _assert_close(jac, 0.5)


# ------------------------------------------------------------ 2. invalid parameters

NORMAL = lambda p: dist.Normal(p["mu"], p["sigma"])
BAD_NORMAL = {"mu": jnp.array(0.5), "sigma": jnp.array(-1.0)}
BAD_CASES = {
    "normal-negative-scale": (NORMAL, BAD_NORMAL, ex.ScoreFunction()),
    "bernoulli-probs-above-1": (
        lambda p: dist.Bernoulli(probs=p).to_event(1),
        jnp.array([0.5, 1.2]),
        ex.ScoreFunction(),
    ),
    "normal-pathwise": (NORMAL, BAD_NORMAL, ex.Pathwise()),
    "bernoulli-disarm": (
        lambda p: dist.Bernoulli(probs=p).to_event(1),
        jnp.array([-0.1, 0.5]),
        ex.DisARM(),
    ),
    # rejection samplers fed the guard's NaN parameters (they must end, and give NaN)
    "gamma-pathwise": (lambda p: dist.Gamma(p, 1.0), jnp.array(-1.0), ex.Pathwise()),
    "poisson-score": (lambda p: dist.Poisson(p), jnp.array(-2.0), ex.ScoreFunction()),
}
SQ = lambda p, x: jnp.sum((x - 1.0) ** 2)


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("how", ["value", "grad"])
def test_invalid_parameters_eager(case, how):
    dist_fn, params, estimator = BAD_CASES[case]
    E = ex.expectation(SQ, dist_fn, estimator=estimator, num_samples=4)
    with pytest.raises(ValueError, match=r"rejected the parameter values.*Check the values"):
        (jax.grad(E) if how == "grad" else E)(params, KEY)


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("how", ["jit-value", "jit-grad", "eager-grad"])
def test_invalid_parameters_debug_under_jit(case, how):
    dist_fn, params, estimator = BAD_CASES[case]
    E = ex.expectation(SQ, dist_fn, estimator=estimator, num_samples=4, debug=True)
    fn = {"jit-value": jax.jit(E), "jit-grad": jax.jit(jax.grad(E)), "eager-grad": jax.grad(E)}[how]
    match = r"^expectax debug check: dist_fn\(params\) built \w+ with \w+ outside its constraint"
    if how == "eager-grad":  # numpyro sees the values and says so first
        match = match + "|^dist_fn\\(params\\) rejected the parameter values"
    with pytest.raises(ValueError, match=match):
        with debug_errors():
            jax.block_until_ready(fn(params, KEY))


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_invalid_parameters_without_debug_under_jit_are_nan(case, chunk_size):
    """Nothing can raise inside jit without debug=True: the value and every gradient
    coordinate are NaN, never the finite, plausible numbers the magic box used to give."""
    dist_fn, params, estimator = BAD_CASES[case]
    E = ex.expectation(SQ, dist_fn, estimator=estimator, num_samples=4, chunk_size=chunk_size)
    assert np.isnan(jax.jit(E)(params, KEY))
    grads = jax.jit(jax.grad(E))(params, KEY)
    assert all(np.all(np.isnan(g)) for g in jax.tree_util.tree_leaves(grads)), grads


@pytest.mark.parametrize("case", ["normal-negative-scale", "bernoulli-probs-above-1"])
def test_invalid_parameters_per_sample_grads_under_jit_are_nan(case):
    dist_fn, params, estimator = BAD_CASES[case]
    jac = jax.jit(
        lambda p: ex.per_sample_grads(SQ, dist_fn, p, KEY, estimator=estimator, num_samples=4)
    )(params)
    assert all(np.all(np.isnan(g)) for g in jax.tree_util.tree_leaves(jac)), jac


def test_invalid_parameters_nan_only_where_invalid_under_vmap():
    E = ex.expectation(SQ, NORMAL, estimator=ex.ScoreFunction(), num_samples=4)
    batch = {"mu": jnp.array([0.5, 0.5]), "sigma": jnp.array([1.0, -1.0])}
    grads = jax.vmap(jax.grad(E), in_axes=(0, None))(batch, KEY)
    assert np.all(np.isfinite(grads["mu"][0])) and np.isnan(grads["mu"][1])


NAN_CASES = {
    # a discrete distribution's sampling swallows NaN (NaN logits still draw integers): the
    # guard keeps checking its real parameters; a continuous one's NaN reaches the samples
    "categorical-logits": (lambda p: dist.Categorical(logits=p), jnp.array([jnp.nan, 0.0, 1.0])),
    "bernoulli-logits": (lambda p: dist.Bernoulli(logits=p), jnp.array(jnp.nan)),
    "normal-loc": (lambda p: dist.Normal(p, 1.0), jnp.array(jnp.nan)),
}


@pytest.mark.parametrize("case", list(NAN_CASES))
def test_nan_real_parameters_under_jit_are_nan(case):
    dist_fn, params = NAN_CASES[case]
    E = ex.expectation(SQ, dist_fn, estimator=ex.ScoreFunction(), num_samples=4)
    assert np.isnan(jax.jit(E)(params, KEY))
    assert np.all(np.isnan(jax.jit(jax.grad(E))(params, KEY)))


def test_user_validation_setting_is_respected():
    E = ex.expectation(SQ, NORMAL, estimator=ex.ScoreFunction(), num_samples=4)
    numpyro.enable_validation(False)
    try:
        assert np.isnan(E(BAD_NORMAL, KEY)) or np.isfinite(E(BAD_NORMAL, KEY))  # no error
    finally:
        numpyro.enable_validation(True)
    with pytest.raises(ValueError, match="rejected the parameter values"):
        jax.grad(E)(BAD_NORMAL, KEY)  # traced by grad, still checked by numpyro


# ------------------------------------------------------------ 3. debug errors under jit

DEBUG_CASES = {
    "nan-f": (lambda p, x: jnp.log(x - 100.0), "f\\(params, x\\) produced NaN"),
    "nan-gradient": (lambda p, x: jnp.sqrt(p["c"] * x**2), "the gradient with respect to params"),
}


@pytest.mark.parametrize("case", list(DEBUG_CASES))
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_debug_raises_floating_point_error(case, jit, chunk_size):
    f, match = DEBUG_CASES[case]
    params = {"mu": jnp.array(0.5), "sigma": jnp.array(1.0), "c": jnp.array(0.0)}
    E = ex.expectation(
        f, NORMAL, estimator=ex.Pathwise(), num_samples=8, chunk_size=chunk_size, debug=True
    )
    fn = jax.grad(E)
    if jit:
        fn = jax.jit(fn)
    with pytest.raises(FloatingPointError, match="^expectax debug check: " + match):
        with debug_errors():
            jax.block_until_ready(fn(params, KEY))


# ------------------------------------------------------------ 4. chunking coupled samples

COUPLED = {
    "vimco": (ex.VIMCO(), lambda p: dist.Normal(p, 1.0), jnp.array(0.0), 8, 2),
    "unordered-set": (ex.UnorderedSet(), lambda p: dist.Categorical(logits=p), jnp.zeros(6), 4, 2),
    "sum-and-sample": (ex.SumAndSample(), lambda p: dist.Categorical(logits=p), jnp.zeros(6), 4, 2),
}


@pytest.mark.parametrize("case", list(COUPLED))
def test_chunking_coupled_estimators_is_refused(case):
    estimator, dist_fn, params, n, chunk = COUPLED[case]
    f = lambda p, x: jnp.sin(x)
    match = r"combines all num_samples=\d+ samples into one estimate.*chunk_size=None"
    with pytest.raises(ValueError, match=match):
        ex.expectation(f, dist_fn, estimator=estimator, num_samples=n, chunk_size=chunk)
    with pytest.raises(ValueError, match=match):
        ex.per_sample_grads(
            f, dist_fn, params, KEY, estimator=estimator, num_samples=n, chunk_size=chunk
        )
    E = ex.expectation(f, dist_fn, estimator=estimator, num_samples=n, chunk_size=n)
    assert np.isfinite(E(params, KEY))  # one chunk of all samples is the estimator itself


def test_leave_one_out_chunks_stay_unbiased():
    """LeaveOneOut within a chunk is still unbiased: d/dμ E[x²] = 2μ."""
    est = ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut())
    jac = ex.per_sample_grads(
        lambda p, x: x**2,
        lambda p: dist.Normal(p, 1.0),
        jnp.array(0.7),
        KEY,
        estimator=est,
        num_samples=4000,
        chunk_size=4,
    )
    _assert_close(jac, 1.4)


# ------------------------------------------------------------ 5. f's output type

BERN = lambda p: dist.Bernoulli(logits=p)
GAUSS = lambda p: dist.Normal(p, 1.0)
DIFFERENTIATING = {
    "pathwise": (ex.Pathwise(), GAUSS),
    "gumbel-softmax": (ex.GumbelSoftmax(), BERN),
    "straight-through": (ex.StraightThrough(), BERN),
    "rebar": (ex.REBAR(), BERN),
    "relax": (ex.RELAX(), BERN),
}
NOT_DIFFERENTIATING = {
    "score-function": (ex.ScoreFunction(), GAUSS),
    "measure-valued": (ex.MeasureValued(), GAUSS),
    "arm": (ex.ARM(), BERN),
    "disarm": (ex.DisARM(), BERN),
    "vimco": (ex.VIMCO(), BERN),
}


@pytest.mark.parametrize("case", list(DIFFERENTIATING))
@pytest.mark.parametrize("kind", ["int", "bool"])
def test_integer_f_refused_where_f_is_differentiated(case, kind):
    estimator, dist_fn = DIFFERENTIATING[case]
    dtype = jnp.int32 if kind == "int" else bool
    E = ex.expectation(
        lambda p, x: (x > 0.5).astype(dtype), dist_fn, estimator=estimator, num_samples=4
    )
    with pytest.raises(TypeError, match=r"returned (int32|bool) values, but .* differentiates f"):
        jax.grad(E)(jnp.array(0.3), KEY)


@pytest.mark.parametrize("case", list(DIFFERENTIATING) + list(NOT_DIFFERENTIATING))
def test_complex_f_refused_everywhere(case):
    estimator, dist_fn = (DIFFERENTIATING | NOT_DIFFERENTIATING)[case]
    E = ex.expectation(lambda p, x: x + 1j * x, dist_fn, estimator=estimator, num_samples=4)
    with pytest.raises(TypeError, match=r"returned complex values.*imaginary part"):
        jax.grad(E)(jnp.array(0.3), KEY)


@pytest.mark.parametrize("case", list(NOT_DIFFERENTIATING))
def test_integer_f_converted_where_f_is_not_differentiated(case):
    estimator, dist_fn = NOT_DIFFERENTIATING[case]
    E = ex.expectation(
        lambda p, x: (x > 0.5).astype(jnp.int32), dist_fn, estimator=estimator, num_samples=4
    )
    assert np.isfinite(jax.grad(E)(jnp.array(0.3), KEY))


def test_integer_f_score_function_is_right():
    """d/dμ P(x > 0) for x ~ N(μ, 1) is φ(μ), with f returning a bool."""
    mu = 0.3
    jac = ex.per_sample_grads(
        lambda p, x: x > 0.0,
        GAUSS,
        jnp.array(mu),
        KEY,
        estimator=ex.ScoreFunction(),
        num_samples=20000,
    )
    _assert_close(jac, np.exp(-(mu**2) / 2) / np.sqrt(2 * np.pi))


@pytest.mark.parametrize(
    "f,match",
    [
        (lambda p, x: None, r"returned None.*forget its `return`"),
        (lambda p, x: (x, x**2), r"returned a tuple.*one scalar"),
        (lambda p, x: [x], r"returned a list"),
        (lambda p, x: jnp.stack([x, x]), r"must return a scalar for each sample"),
    ],
    ids=["none", "tuple", "list", "vector"],
)
def test_f_returning_the_wrong_thing(f, match):
    E = ex.expectation(f, GAUSS, estimator=ex.ScoreFunction(), num_samples=4)
    with pytest.raises(TypeError, match=match):
        E(jnp.array(0.3), KEY)


# ------------------------------------------------------------ 6. Bernoulli probs at 0 or 1

C = jnp.array([0.2, 0.5, 0.9])
F_BOUNDARY = lambda p, x: jnp.sum((x - C) ** 2)
BOUNDARY = jnp.array([1.0, 0.5, 0.0])
PROBS_DIST = lambda p: dist.Bernoulli(probs=p).to_event(1)


def _exact_grad(probs):
    """∇ of Σ_x p(x) f(x) by enumerating {0, 1}³ (∂/∂p_j = E[f | x_j=1] − E[f | x_j=0])."""

    def mean(p):
        total = 0.0
        for x in itertools.product([0.0, 1.0], repeat=3):
            x = jnp.array(x)
            total = total + jnp.prod(jnp.where(x == 1, p, 1 - p)) * F_BOUNDARY(None, x)
        return total

    return np.asarray(jax.grad(mean)(probs))


def test_exact_gradient_of_the_boundary_case():
    np.testing.assert_allclose(_exact_grad(BOUNDARY), [0.6, 0.0, -0.8], atol=1e-6)


SAMPLING = {
    "score-function": ex.ScoreFunction(),
    "score-function-loo": ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut()),
    "arm": ex.ARM(),
    "disarm": ex.DisARM(),
    "rebar": ex.REBAR(),
}


@pytest.mark.parametrize("case", list(SAMPLING))
def test_bernoulli_boundary_is_not_a_silent_zero(case):
    """No sampling estimator can see the outcome of probability 0: the coordinate is
    non-finite (and debug=True says why), never a plausible 0."""
    E = ex.expectation(F_BOUNDARY, PROBS_DIST, estimator=SAMPLING[case], num_samples=64)
    g = np.asarray(jax.grad(E)(BOUNDARY, KEY))
    assert not np.isfinite(g[0]) and not np.isfinite(g[2]), g
    Ed = ex.expectation(
        F_BOUNDARY, PROBS_DIST, estimator=SAMPLING[case], num_samples=64, debug=True
    )
    with pytest.raises(FloatingPointError, match=r"gradient with respect to params.*MeasureValued"):
        with debug_errors():
            jax.block_until_ready(jax.jit(jax.grad(Ed))(BOUNDARY, KEY))


def test_bernoulli_boundary_measure_valued_is_exact():
    E = ex.expectation(F_BOUNDARY, PROBS_DIST, estimator=ex.MeasureValued(), num_samples=16)
    np.testing.assert_allclose(jax.grad(E)(BOUNDARY, KEY), [0.6, 0.0, -0.8], atol=1e-5)


@pytest.mark.parametrize("case", ["score-function", "disarm"])
def test_bernoulli_probs_score_is_exact_inside(case):
    """The exact probs score (no clamping) stays unbiased inside (0, 1), close to the edge too."""
    probs = jnp.array([0.9, 0.5, 1e-3])
    jac = ex.per_sample_grads(
        F_BOUNDARY, PROBS_DIST, probs, KEY, estimator=SAMPLING[case], num_samples=20000
    )
    _assert_close(jac, _exact_grad(probs))


W = jnp.array([1.0, -2.0, 3.0])
F_CATEGORY = lambda p, x: W[x]
CATEGORICAL_PROBS = lambda p: dist.Categorical(probs=p)


@pytest.mark.parametrize("jit", [False, True])
def test_categorical_probs_zero_is_not_a_silent_zero(jit):
    """∂/∂p_0 of Σ_k p_k W[k] is W[0] = 1, but category 0 is never drawn: NaN, not 0."""
    E = ex.expectation(F_CATEGORY, CATEGORICAL_PROBS, estimator=ex.ScoreFunction(), num_samples=64)
    grad = jax.jit(jax.grad(E)) if jit else jax.grad(E)
    g = np.asarray(grad(jnp.array([0.0, 0.5, 0.5]), KEY))
    assert np.isnan(g[0]) and np.all(np.isfinite(g[1:])), g


def test_categorical_probs_score_is_exact_inside():
    """The probs score 1[x = k]/p_k is exact (no clamping), close to the edge too."""
    probs = jnp.array([0.2, 0.799, 1e-3])
    jac = ex.per_sample_grads(
        F_CATEGORY, CATEGORICAL_PROBS, probs, KEY, estimator=ex.ScoreFunction(), num_samples=20000
    )
    _assert_close(jac, np.asarray(W))


# ------------------------------------------------------------ 7. arguments refused up front


@pytest.mark.parametrize(
    "temperature",
    [0.0, -1.0, jnp.array(-1.0), np.array([0.5, -0.1])],
    ids=["0", "-1", "arr", "vec"],
)
def test_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match=r"temperature must be > 0"):
        ex.GumbelSoftmax(temperature=temperature)


def test_traced_temperature_is_fine():
    def value(t):
        E = ex.expectation(
            lambda p, z: z, BERN, estimator=ex.GumbelSoftmax(temperature=t), num_samples=4
        )
        return E(jnp.array(0.0), KEY)

    assert np.isfinite(jax.jit(value)(jnp.array(0.5)))


@pytest.mark.parametrize("chunk_size", [None, 10**11])
def test_sample_batch_too_large_for_memory(chunk_size):
    """28 TB of samples fit on no machine; the error names a chunk_size that does."""
    E = ex.expectation(
        lambda p, x: jnp.sum(x),
        GAUSS,
        estimator=ex.ScoreFunction(),
        num_samples=10**12,
        chunk_size=chunk_size,
    )
    with pytest.raises(ValueError, match=r"GiB for one batch.*Use chunk_size=\d+"):
        E(jnp.zeros(7), KEY)


@pytest.mark.parametrize(
    "f,dist_fn,match",
    [
        (lambda x: x, GAUSS, r"f must be a function f\(params, x\).*2 positional arguments"),
        (lambda p, x, y: x, GAUSS, r"2 positional arguments"),
        (lambda p, x: x, lambda: dist.Normal(0.0, 1.0), r"dist_fn must be .*1 positional"),
    ],
    ids=["f-one-arg", "f-three-args", "dist_fn-no-arg"],
)
def test_wrong_arity(f, dist_fn, match):
    with pytest.raises(TypeError, match=match):
        ex.expectation(f, dist_fn, estimator=ex.ScoreFunction(), num_samples=4)
    with pytest.raises(TypeError, match=match):
        ex.per_sample_grads(
            f, dist_fn, jnp.array(0.0), KEY, estimator=ex.ScoreFunction(), num_samples=4
        )


INT_PARAM_CASES = {
    "arm-probs": (ex.ARM(), lambda p: dist.Bernoulli(probs=p).to_event(1), jnp.array([1, 0])),
    "disarm-logits": (
        ex.DisARM(),
        lambda p: dist.Bernoulli(logits=p).to_event(1),
        jnp.array([1, 0]),
    ),
    "rebar": (ex.REBAR(), lambda p: dist.Bernoulli(logits=p).to_event(1), jnp.array([1, 0])),
    "disarm-categorical": (ex.DisARM(), lambda p: dist.Categorical(logits=p), jnp.array([1, 0, 2])),
    "unordered-set": (
        ex.UnorderedSet(),
        lambda p: dist.Categorical(logits=p),
        jnp.array([1, 0, 2]),
    ),
    "mvd-normal": (ex.MeasureValued(), lambda p: dist.Normal(p, 1).to_event(1), jnp.array([1, 0])),
    "mvd-poisson": (ex.MeasureValued(), lambda p: dist.Poisson(p).to_event(1), jnp.array([3, 1])),
    "mvd-bernoulli": (
        ex.MeasureValued(),
        lambda p: dist.Bernoulli(probs=p).to_event(1),
        jnp.array([1, 0]),
    ),
}


@pytest.mark.parametrize("case", list(INT_PARAM_CASES))
def test_integer_params_give_a_value(case):
    estimator, dist_fn, params = INT_PARAM_CASES[case]
    E = ex.expectation(lambda p, x: jnp.sum(x * 1.0), dist_fn, estimator=estimator, num_samples=2)
    assert np.isfinite(E(params, KEY))


@pytest.mark.parametrize("estimator", [ex.ScoreFunction(qmc=True), ex.Pathwise(qmc=True)])
def test_qmc_past_sobol_dimensions(estimator):
    E = ex.expectation(lambda p, x: jnp.sum(x), GAUSS, estimator=estimator, num_samples=4)
    with pytest.raises(ValueError, match=r"scipy's Sobol sequence supports at most 21201"):
        E(jnp.zeros(21202), KEY)


@pytest.mark.parametrize(
    "x_shape, probs_shape", [((), (3,)), ((4,), (3,)), ((), (2, 3)), ((5, 2), (2, 3))]
)
def test_categorical_probs_log_prob_derivative_broadcasts(x_shape, probs_shape):
    """The rule's derivative in probs is 1[x = j] / p_j for every broadcast of x against the
    probabilities' batch, in reverse and forward mode."""
    from expectax.estimators.base import _categorical_probs_log_prob

    rng = np.random.default_rng(3)
    probs = jnp.asarray(rng.dirichlet(np.ones(3), size=probs_shape[:-1]), jnp.float32)
    x = jnp.asarray(rng.integers(0, 3, size=x_shape))
    grad = jax.grad(lambda p: jnp.sum(_categorical_probs_log_prob(x, p)))(probs)
    onehot = np.asarray(jax.nn.one_hot(x, 3))
    expected = onehot / np.asarray(probs)
    expected = expected.reshape((-1,) + probs.shape).sum(0) if x.ndim > probs.ndim - 1 else expected
    np.testing.assert_allclose(grad, np.broadcast_to(expected, probs.shape), rtol=1e-6)
    tangent = jnp.asarray(rng.normal(size=probs_shape), jnp.float32)
    _, jvp = jax.jvp(lambda p: _categorical_probs_log_prob(x, p), (probs,), (tangent,))
    np.testing.assert_allclose(
        jvp, np.sum(onehot / np.asarray(probs) * np.asarray(tangent), -1), rtol=1e-6
    )
