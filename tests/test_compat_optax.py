"""expectax.compat.optax_monte_carlo against the documented semantics of optax 0.2.6.

optax's monte_carlo module is gone from current optax, so nothing here imports it: the
expected values are closed forms (Gaussian moments), checked statistically with standard
errors from the per-sample Jacobians themselves (rows are independent estimates).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_unbiased
from jax.scipy.stats import norm

import expectax.compat.optax_monte_carlo as mc

MEAN = jnp.array([1.0, -0.5, 2.0])
LOG_SCALE = jnp.array([0.2, -0.3, 0.0])
SIGMA2 = np.exp(2 * np.asarray(LOG_SCALE))
WEIGHTS = jnp.array([1.0, 2.0, 3.0])
N = 20_000

ESTIMATORS = {
    "score_function": mc.score_function_jacobians,
    "pathwise": mc.pathwise_jacobians,
    "measure_valued": mc.measure_valued_jacobians,
}

# f, exact d/dmean, exact d/dlog_scale  (x ~ N(μ, σ²), coordinates independent)
FUNCTIONS = {
    "constant": (lambda x: jnp.asarray(3.0), lambda: (0 * MEAN, 0 * MEAN)),
    "linear": (lambda x: jnp.sum(WEIGHTS * x), lambda: (WEIGHTS, 0 * MEAN)),
    "quadratic": (lambda x: jnp.sum(x**2), lambda: (2 * MEAN, 2 * SIGMA2)),
    "weighted": (
        lambda x: jnp.sum(WEIGHTS * x**2),
        lambda: (2 * WEIGHTS * MEAN, 2 * WEIGHTS * SIGMA2),
    ),
}


def _maybe_jit(fn, use_jit, static):
    return jax.jit(fn, static_argnums=static) if use_jit else fn


# --------------------------------------------------------------------------- multi_normal


def test_multi_normal_interface():
    d = mc.multi_normal(MEAN, LOG_SCALE)
    key = jax.random.PRNGKey(0)
    x = d.sample((5,), key)  # optax's order: shape first
    assert x.shape == (5, 3)
    np.testing.assert_array_equal(x, d.sample((5,), key=key))
    expected = jax.random.normal(key, (5, 3)) * jnp.exp(LOG_SCALE) + MEAN
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    lp = d.log_prob(x)
    assert lp.shape == (5,)
    np.testing.assert_allclose(
        lp, norm.logpdf(x, MEAN, jnp.exp(LOG_SCALE)).sum(-1), rtol=1e-5, atol=1e-5
    )
    assert [p.shape for p in d.params] == [(3,), (3,)]
    np.testing.assert_array_equal(d.log_scale, LOG_SCALE)
    assert d.sample((2, 4), jax.random.key(1)).shape == (2, 4, 3)
    # a pytree: it crosses jit
    out = jax.jit(lambda m, s: mc.multi_normal(m, s))(MEAN, LOG_SCALE)
    np.testing.assert_array_equal(out.params[0], MEAN)


def test_multi_normal_sample_needs_key():
    with pytest.raises(TypeError, match="key is missing"):
        mc.multi_normal(MEAN, LOG_SCALE).sample((3,))


# --------------------------------------------------------------------------- estimators


# Every estimator and function under jit; without jit (slower: op by op) for one function each.
CLOSED_FORM_CASES = [(e, f, True) for e in ESTIMATORS for f in FUNCTIONS] + [
    (e, "weighted", False) for e in ESTIMATORS
]


@pytest.mark.parametrize("ename,fname,use_jit", CLOSED_FORM_CASES)
def test_jacobians_closed_forms(ename, fname, use_jit):
    f, exact = FUNCTIONS[fname]
    est = _maybe_jit(ESTIMATORS[ename], use_jit, (0, 2, 4))
    params = [MEAN, LOG_SCALE]
    n = N if use_jit else 2000
    jac = est(f, params, mc.multi_normal, jax.random.PRNGKey(1), n)
    assert isinstance(jac, list) and len(jac) == 2
    assert [j.shape for j in jac] == [(n, 3), (n, 3)]
    assert_unbiased(jac, list(exact()), k=5, bonferroni=True, name=f"{ename}/{fname}")


@pytest.mark.parametrize("ename", ["pathwise", "measure_valued"])
def test_constant_function_has_exactly_zero_jacobians(ename):
    est = jax.jit(ESTIMATORS[ename], static_argnums=(0, 2, 4))
    jac = est(lambda x: 7.0, [MEAN, LOG_SCALE], mc.multi_normal, jax.random.key(0), 8)
    for j in jac:
        np.testing.assert_array_equal(j, 0.0)


def test_tuple_params_give_tuple_jacobians():
    jac = mc.pathwise_jacobians(
        lambda x: jnp.sum(x), (MEAN, LOG_SCALE), mc.multi_normal, jax.random.key(0), 4
    )
    assert isinstance(jac, tuple) and jac[0].shape == (4, 3)


def test_pathwise_matches_hand_written_reparameterisation():
    """Same key, same samples as optax's multi_normal: J_i = ∇f(x_i) and ∇f(x_i) σ ε_i."""
    key = jax.random.PRNGKey(4)
    f = lambda x: jnp.sum(jnp.sin(x) * x)
    jac = mc.pathwise_jacobians(f, [MEAN, LOG_SCALE], mc.multi_normal, key, 6)
    eps = jax.random.normal(key, (6, 3))
    x = eps * jnp.exp(LOG_SCALE) + MEAN
    g = jax.vmap(jax.grad(f))(x)
    np.testing.assert_allclose(jac[0], g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jac[1], g * eps * jnp.exp(LOG_SCALE), rtol=1e-5, atol=1e-6)


def test_score_function_matches_hand_written():
    key = jax.random.PRNGKey(5)
    f = lambda x: jnp.sum(x**3)
    jac = mc.score_function_jacobians(f, [MEAN, LOG_SCALE], mc.multi_normal, key, 6)
    x = mc.multi_normal(MEAN, LOG_SCALE).sample((6,), key)
    scores = jax.vmap(jax.grad(lambda p, x: mc.multi_normal(*p).log_prob(x)), (None, 0))(
        [MEAN, LOG_SCALE], x
    )
    fx = jax.vmap(f)(x)[:, None]
    np.testing.assert_allclose(jac[0], fx * scores[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jac[1], fx * scores[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["score_function", "pathwise"])
@pytest.mark.parametrize(
    "params",
    [
        [MEAN, LOG_SCALE],
        (MEAN, LOG_SCALE),
        jnp.stack([MEAN, LOG_SCALE]),
        [jnp.array([0.7]), LOG_SCALE],  # a mean broadcast over the scale's coordinates
        [MEAN, jnp.array(0.1)],  # one log-scale for all coordinates
    ],
    ids=["list", "tuple", "array", "mean-broadcast", "scale-broadcast"],
)
def test_multi_normal_closed_form_equals_the_generic_route(kind, params):
    """multi_normal's Jacobians are written from ε (the hand-written floor's formulas); they
    must equal the generic route, per_sample_grads with ∇θ log p(x) of numpyro's Normal, on
    the same samples, for every structure of params and a broadcast mean or scale."""
    from expectax import Pathwise, ScoreFunction, per_sample_grads

    f = lambda x: jnp.sum(jnp.sin(x) * x + 0.3 * x**2)
    key = jax.random.key(11)
    jac = ESTIMATORS[kind](f, params, mc.multi_normal, key, 7)
    generic = per_sample_grads(
        lambda _, x: f(x),
        lambda p: mc._gaussian(*p),
        params,
        key,
        estimator=ScoreFunction() if kind == "score_function" else Pathwise(),
        num_samples=7,
    )
    assert type(jac) is type(generic)
    for a, b in zip(
        jax.tree_util.tree_leaves(jac), jax.tree_util.tree_leaves(generic), strict=True
    ):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["score_function", "pathwise"])
@pytest.mark.parametrize(
    "f, match",
    [
        (lambda x: jnp.sum(x) * (1 + 1j), "complex"),
        (lambda x: None, "returned None"),
        (lambda x: jnp.round(jnp.sum(x)).astype(jnp.int32), "int32"),
    ],
    ids=["complex", "none", "integer"],
)
def test_multi_normal_refuses_what_would_be_silently_wrong(kind, f, match):
    """The closed forms keep the generic route's checks on f: complex values and None are
    refused; integer values are refused by the pathwise estimator (their derivative is zero)
    and taken as floats by the score function."""
    params = [MEAN, LOG_SCALE]
    if kind == "score_function" and match == "int32":
        jac = mc.score_function_jacobians(f, params, mc.multi_normal, jax.random.key(0), 4)
        assert jac[0].dtype == jnp.float32
        return
    with pytest.raises(TypeError, match=match):
        ESTIMATORS[kind](f, params, mc.multi_normal, jax.random.key(0), 4)


class _MyGaussian:
    """An optax-style distribution of the user's own: sample(shape, key=...), log_prob."""

    def __init__(self, mean, log_scale):
        self.mean, self.scale = mean, jnp.exp(log_scale)

    def sample(self, shape, key):
        return self.mean + self.scale * jax.random.normal(key, tuple(shape) + self.mean.shape)

    def log_prob(self, x):
        return jnp.sum(norm.logpdf(x, self.mean, self.scale), axis=-1)


@pytest.mark.parametrize("ename", ["score_function", "pathwise"])
def test_custom_builder(ename):
    f, exact = FUNCTIONS["weighted"]
    est = jax.jit(ESTIMATORS[ename], static_argnums=(0, 2, 4))
    jac = est(f, [MEAN, LOG_SCALE], _MyGaussian, jax.random.key(2), N)
    assert [j.shape for j in jac] == [(N, 3), (N, 3)]
    assert_unbiased(jac, list(exact()), k=5, bonferroni=True, name=ename)


@pytest.mark.parametrize("use_jit", [False, True])
def test_measure_valued_rejects_other_builders(use_jit):
    est = _maybe_jit(mc.measure_valued_jacobians, use_jit, (0, 2, 4))
    with pytest.raises(ValueError, match="Unsupported distribution builder"):
        est(lambda x: jnp.sum(x), [MEAN, LOG_SCALE], _MyGaussian, jax.random.key(0), 4)
    wrapped = lambda m, s: mc.multi_normal(m, s)
    with pytest.raises(ValueError, match="only dist_builder=multi_normal"):
        est(lambda x: jnp.sum(x), [MEAN, LOG_SCALE], wrapped, jax.random.key(0), 4)


def test_measure_valued_coupling_off_is_unbiased_too():
    f, exact = FUNCTIONS["quadratic"]
    jac = mc.measure_valued_jacobians(
        f, [MEAN, LOG_SCALE], mc.multi_normal, jax.random.key(3), N, coupling=False
    )
    assert_unbiased(jac, list(exact()), k=5, bonferroni=True)


def test_accepts_optax_multi_normal_if_present():
    utils = pytest.importorskip("optax._src.utils")
    if not hasattr(utils, "multi_normal"):
        pytest.skip("this optax has no multi_normal")
    f, exact = FUNCTIONS["quadratic"]
    jac = mc.measure_valued_jacobians(
        f, [MEAN, LOG_SCALE], utils.multi_normal, jax.random.key(5), N
    )
    assert_unbiased(jac, list(exact()), k=5, bonferroni=True)


# --------------------------------------------------------------------------- delta method


@pytest.mark.parametrize("use_jit", [False, True])
def test_delta_method_quadratic_is_exact(use_jit):
    f = lambda x: jnp.sum(WEIGHTS * x**2)
    cv, expected_cv, update = mc.control_delta_method(f)
    params = [MEAN, LOG_SCALE]
    x = mc.multi_normal(*params).sample((3,), jax.random.key(0))
    h = jnp.stack([_maybe_jit(cv, use_jit, ())(params, s, None) for s in x])
    np.testing.assert_allclose(h, jax.vmap(f)(x), rtol=1e-5)
    exact = np.sum(np.asarray(WEIGHTS) * (np.asarray(MEAN) ** 2 + SIGMA2))
    np.testing.assert_allclose(_maybe_jit(expected_cv, use_jit, ())(params, None), exact, rtol=1e-5)
    assert update(params, x, None) is None


def test_delta_method_expected_value_of_non_polynomial():
    """f = Σ log x²: E[h] = Σ log μ² − σ²/μ², and the sample mean of h agrees within k·SE."""
    f = lambda x: jnp.sum(jnp.log(x**2))
    cv, expected_cv, _ = mc.control_delta_method(f)
    params = [MEAN, LOG_SCALE]
    exact = np.sum(np.log(np.asarray(MEAN) ** 2) - SIGMA2 / np.asarray(MEAN) ** 2)
    np.testing.assert_allclose(expected_cv(params, None), exact, rtol=1e-5)
    x = mc.multi_normal(*params).sample((N,), jax.random.key(1))
    h = jax.vmap(lambda s: cv(params, s, None))(x)
    assert_unbiased(h, exact, k=5)


# --------------------------------------------------------------------------- moving average


def _samples(n=1000):
    return mc.multi_normal(MEAN, LOG_SCALE).sample((n,), jax.random.key(7))


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("decay", [0.9, 0.99])
def test_moving_average_value_and_plain_update(decay, use_jit):
    f = lambda x: jnp.sum(WEIGHTS * x)
    cv, expected_cv, update = mc.moving_avg_baseline(
        f, decay=decay, zero_debias=False, use_decay_early_training_heuristic=False
    )
    update = _maybe_jit(update, use_jit, ())
    x = _samples()
    mean_f = float(jnp.mean(jax.vmap(f)(x)))
    for b in (1.0, 2.0):
        state = (jnp.array(b), 0)
        assert float(cv([MEAN, LOG_SCALE], x[0], state)) == b
        assert float(expected_cv([MEAN, LOG_SCALE], state)) == b
        value, count = update([MEAN, LOG_SCALE], x, state)
        np.testing.assert_allclose(value, decay * b + (1 - decay) * mean_f, rtol=1e-5)
        assert int(count) == 1
    value, count = update([MEAN, LOG_SCALE], x, (jnp.array(1.0), 5))
    np.testing.assert_allclose(value, decay * 1.0 + (1 - decay) * mean_f, rtol=1e-5)
    assert int(count) == 6


@pytest.mark.parametrize("use_jit", [False, True])
def test_moving_average_early_training_heuristic(use_jit):
    f = lambda x: jnp.sum(WEIGHTS * x)
    update = mc.moving_avg_baseline(
        f, decay=0.99, zero_debias=False, use_decay_early_training_heuristic=True
    )[2]
    update = _maybe_jit(update, use_jit, ())
    x = _samples()
    mean_f = float(jnp.mean(jax.vmap(f)(x)))
    for i, b in [(0, 1.0), (1, 2.0), (100, 3.0)]:
        step_decay = min(0.99, (1 + i) / (10 + i))  # 0.1, 2/11, then 0.99
        value, count = update([MEAN, LOG_SCALE], x, (jnp.array(b), i))
        np.testing.assert_allclose(value, step_decay * b + (1 - step_decay) * mean_f, rtol=1e-5)
        assert int(count) == i + 1


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("decay", [0.9, 0.99])
def test_moving_average_zero_debias(decay, use_jit):
    f = lambda x: jnp.sum(WEIGHTS * x)
    x = _samples()
    mean_f = float(jnp.mean(jax.vmap(f)(x)))
    plain = mc.moving_avg_baseline(f, decay, False, False)[2]
    debiased = _maybe_jit(mc.moving_avg_baseline(f, decay, True, False)[2], use_jit, ())
    np.testing.assert_allclose(
        plain([], x, (jnp.array(0.0), 0))[0], (1 - decay) * mean_f, rtol=1e-5
    )
    # From zero, the first debiased average is the mean of f itself.
    np.testing.assert_allclose(debiased([], x, (jnp.array(0.0), 0))[0], mean_f, rtol=1e-5)
    # Later steps divide the new average by 1 − β^(i+1).
    value = debiased([], x, (jnp.array(2.0), 3))[0]
    expected = (decay * 2.0 + (1 - decay) * mean_f) / (1 - decay**4)
    np.testing.assert_allclose(value, expected, rtol=1e-5)


# --------------------------------------------------------------------------- control variates


_cv_jac = functools.partial(jax.jit, static_argnums=(0, 1, 2, 4, 6, 8, 9))(
    mc.control_variates_jacobians
)


@pytest.mark.parametrize(
    "ename,estimate", [(e, False) for e in ESTIMATORS] + [("score_function", True)]
)
def test_delta_control_variate_quadratic_has_no_variance(ename, estimate):
    """For quadratic f the Taylor expansion is f itself: every row is the exact gradient."""
    f, exact = FUNCTIONS["quadratic"]
    jac, state = _cv_jac(
        f,
        mc.control_delta_method,
        ESTIMATORS[ename],
        [MEAN, LOG_SCALE],
        mc.multi_normal,
        jax.random.PRNGKey(1),
        100,
        None,
        estimate,
        20,
    )
    assert state is None
    assert [j.shape for j in jac] == [(100, 3), (100, 3)]
    for j, e in zip(jac, exact(), strict=True):
        np.testing.assert_allclose(j, np.broadcast_to(e, j.shape), rtol=1e-3, atol=1e-3)


CUBIC_CASES = [
    ("score_function", False, True),
    ("pathwise", True, True),
    ("measure_valued", False, True),
    ("measure_valued", True, True),
]


@pytest.mark.parametrize("ename,estimate,use_jit", CUBIC_CASES)
def test_delta_control_variate_cubic(ename, estimate, use_jit):
    """f = x³ in one dimension: ∂μ = 3μ² + 3σ², ∂log σ = 6 μ σ².

    The rows of one call share the control variate's averaged terms (and the estimated
    coefficient), so they are not independent: the estimates are the means of R independent
    calls.
    """
    mean, log_scale = jnp.array([1.0]), jnp.array([0.5])
    s2 = float(np.exp(1.0))
    cvj = _cv_jac if use_jit else mc.control_variates_jacobians
    n, repeats = 200, (400 if use_jit else 100)

    def one(key):
        jac, state = cvj(
            lambda x: jnp.sum(x**3),
            mc.control_delta_method,
            ESTIMATORS[ename],
            [mean, log_scale],
            mc.multi_normal,
            key,
            n,
            None,
            estimate,
            20,
        )
        assert state is None
        assert [j.shape for j in jac] == [(n, 1), (n, 1)]
        return [j.mean(0) for j in jac]

    keys = jax.random.split(jax.random.PRNGKey(2), repeats)
    means = jax.vmap(one)(keys)
    exact = [jnp.array([3.0 + 3.0 * s2]), jnp.array([6.0 * s2])]
    assert_unbiased(means, exact, k=5, bonferroni=True, name=ename)


def test_moving_average_control_variate_state_and_unbiasedness():
    """The baseline uses the state it is given (never the current samples) and returns the
    state updated with this call's samples; with two samples per call a baseline that had
    already seen them (optax's order) would be visibly biased."""
    f, exact = FUNCTIONS["weighted"]
    cv = functools.partial(mc.moving_avg_baseline, decay=0.99, zero_debias=True)
    params = [MEAN, LOG_SCALE]
    state = (jnp.array(0.0), 0)
    key = jax.random.PRNGKey(3)
    jac, new_state = mc.control_variates_jacobians(
        f, cv, mc.score_function_jacobians, params, mc.multi_normal, key, 2, state
    )
    x = mc.multi_normal(*params).sample((2,), key)
    expected_state = cv(f)[2](params, x, state)
    np.testing.assert_allclose(new_state[0], expected_state[0], rtol=1e-6)
    assert int(new_state[1]) == 1

    def one(key):
        return mc.control_variates_jacobians(
            f, cv, mc.score_function_jacobians, params, mc.multi_normal, key, 2, state
        )[0]

    jacs = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(4), 10_000))
    jacs = [j.reshape(-1, 3) for j in jacs]  # 20 000 independent per-sample estimates
    assert_unbiased(jacs, list(exact()), k=5, bonferroni=True)


def test_baseline_reduces_score_function_variance():
    f = lambda x: jnp.sum(WEIGHTS * x**2) + 50.0
    cv = functools.partial(mc.moving_avg_baseline, zero_debias=False)
    params = [MEAN, LOG_SCALE]
    plain = mc.score_function_jacobians(f, params, mc.multi_normal, jax.random.key(0), 2000)
    f_mean = float(jnp.sum(WEIGHTS * (MEAN**2 + SIGMA2)) + 50.0)
    with_b, _ = mc.control_variates_jacobians(
        f,
        cv,
        mc.score_function_jacobians,
        params,
        mc.multi_normal,
        jax.random.key(0),
        2000,
        (jnp.array(f_mean), 10),
    )
    assert float(jnp.var(with_b[0], 0).sum()) < 0.1 * float(jnp.var(plain[0], 0).sum())


# --------------------------------------------------------------------------- optax 0.2.6 agreement
#
# Same key ⇒ same numbers as optax 0.2.6, for every kind of builder an old program may pass.
# OPTAX_026 below holds optax 0.2.6's own Jacobians for these cases, produced by running this
# file with optax 0.2.6 installed next to expectax (optax is never a dependency of expectax):
#
#   python3 -m venv /tmp/optax026 && /tmp/optax026/bin/pip install optax==0.2.6 jax numpyro
#   PYTHONPATH=src /tmp/optax026/bin/python tests/test_compat_optax.py
#
# (jax 0.10.2, CPU.) test_matches_recorded_optax_numbers checks expectax against them without
# optax; test_matches_optax_026_side_by_side reruns optax itself when it is importable.

AGREE_KEY = 42
AGREE_N = 4


def agree_f(x):
    return jnp.sum(jnp.sin(x) * x)


class KeyGaussian:
    """A distribution of the user's own, optax 0.2.x style: ``sample(shape, key)``."""

    def __init__(self, mean, log_scale):
        self.mean, self.scale = mean, jnp.exp(log_scale)

    def sample(self, shape, key):
        return self.mean + self.scale * jax.random.normal(key, tuple(shape) + self.mean.shape)

    def log_prob(self, x):
        return jnp.sum(norm.logpdf(x, self.mean, self.scale), axis=-1)


class SeedGaussian(KeyGaussian):
    """The same distribution with the older ``sample(sample_shape, seed=...)`` (TFP style)."""

    def sample(self, sample_shape, seed):
        return super().sample(sample_shape, seed)


def agreement_cases(multi_normal):
    """name -> (builder, params), with ``multi_normal`` optax's or expectax's."""

    def wrapped(mean, log_scale):  # a program's own builder around multi_normal
        return multi_normal(mean, log_scale)

    def mean_only(mean):  # params=jnp.array([.3]) unpacks to one scalar mean
        return multi_normal(mean, jnp.zeros_like(mean))

    return {
        "multi_normal-list": (multi_normal, [MEAN, LOG_SCALE]),
        "multi_normal-array": (multi_normal, jnp.stack([MEAN, LOG_SCALE])),
        "wrapper-list": (wrapped, [MEAN, LOG_SCALE]),
        "wrapper-single-array": (mean_only, jnp.array([0.3])),
        "class-key-tuple": (KeyGaussian, (MEAN, LOG_SCALE)),
        # optax 0.2.6 calls sample(..., key=): its numbers for the seed= class are those of the
        # key= twin (older optax called sample(..., seed=) with the same draw).
        "class-seed-tuple": (SeedGaussian, (MEAN, LOG_SCALE)),
    }


AGREE_ESTIMATORS = ("score_function", "pathwise")


def case_jacobians(monte_carlo, multi_normal, case, n=AGREE_N, key=AGREE_KEY):
    name, est = case.split("/")
    builder, params = agreement_cases(multi_normal)[name]
    if name == "class-seed-tuple" and monte_carlo.__name__.startswith("optax"):
        builder = KeyGaussian
    return getattr(monte_carlo, f"{est}_jacobians")(
        agree_f, params, builder, jax.random.PRNGKey(key), n
    )


AGREE_CASES = [f"{c}/{e}" for c in agreement_cases(mc.multi_normal) for e in AGREE_ESTIMATORS]


def agreement_numbers(monte_carlo, multi_normal):
    return {
        case: jax.tree_util.tree_map(
            lambda a: [float(f"{v:.9g}") for v in np.ravel(a)],
            case_jacobians(monte_carlo, multi_normal, case),
        )
        for case in AGREE_CASES
    }


# fmt: off
OPTAX_026 = (
{'class-key-tuple/pathwise': ([1.37168407, -0.305452764, -0.773640215, 1.37152314, -1.0491271,
                               -0.536384583, -1.23969817, 0.119765893, -1.47066832,
                               -0.230049759, -1.26198912, -3.13804936],
                              [-0.0474209487, -0.105704911, -0.228767693, 0.257217377,
                               0.0963998437, -0.116354249, 2.18173671, 0.0670634806,
                               -0.76682061, -0.255742848, 0.359467596, -3.5768218]),
 'class-key-tuple/score_function': ([-0.0587676205, 1.59906983, 0.749885917, 0.402489036,
                                     -0.536042988, 0.694513738, -2.3504703, 2.03289914,
                                     1.03887939, 1.76642859, -1.23030615, 2.70190406],
                                    [-2.53391194, -1.98256993, -2.31419992, -3.1261735,
                                     -3.15240216, -3.0510006, 2.14413309, -0.854112625,
                                     -1.45076263, -0.406746894, -2.02001548, 0.709235072]),
 'class-seed-tuple/pathwise': ([1.37168407, -0.305452764, -0.773640215, 1.37152314, -1.0491271,
                                -0.536384583, -1.23969817, 0.119765893, -1.47066832,
                                -0.230049759, -1.26198912, -3.13804936],
                               [-0.0474209487, -0.105704911, -0.228767693, 0.257217377,
                                0.0963998437, -0.116354249, 2.18173671, 0.0670634806,
                                -0.76682061, -0.255742848, 0.359467596, -3.5768218]),
 'class-seed-tuple/score_function': ([-0.0587676205, 1.59906983, 0.749885917, 0.402489036,
                                      -0.536042988, 0.694513738, -2.3504703, 2.03289914,
                                      1.03887939, 1.76642859, -1.23030615, 2.70190406],
                                     [-2.53391194, -1.98256993, -2.31419992, -3.1261735,
                                      -3.15240216, -3.0510006, 2.14413309, -0.854112625,
                                      -1.45076263, -0.406746894, -2.02001548, 0.709235072]),
 'multi_normal-array/pathwise': [1.37168407, -0.305452764, -0.773640215, -0.0474209487,
                                 -0.105704911, -0.228767693, 1.37152314, -1.0491271,
                                 -0.536384583, 0.257217377, 0.0963998437, -0.116354249,
                                 -1.23969817, 0.119765893, -1.47066832, 2.18173671,
                                 0.0670634806, -0.76682061, -0.230049759, -1.26198912,
                                 -3.13804936, -0.255742848, 0.359467596, -3.5768218],
 'multi_normal-array/score_function': [-0.0587676205, 1.59906983, 0.749885917, -2.53391194,
                                       -1.98256993, -2.31419992, 0.402489036, -0.536042988,
                                       0.694513738, -3.1261735, -3.15240216, -3.0510006,
                                       -2.3504703, 2.03289914, 1.03887939, 2.14413309,
                                       -0.854112625, -1.45076263, 1.76642859, -1.23030615,
                                       2.70190406, -0.406746894, -2.02001548, 0.709235072],
 'multi_normal-list/pathwise': [[1.37168407, -0.305452764, -0.773640215, 1.37152314, -1.0491271,
                                 -0.536384583, -1.23969817, 0.119765893, -1.47066832,
                                 -0.230049759, -1.26198912, -3.13804936],
                                [-0.0474209487, -0.105704911, -0.228767693, 0.257217377,
                                 0.0963998437, -0.116354249, 2.18173671, 0.0670634806,
                                 -0.76682061, -0.255742848, 0.359467596, -3.5768218]],
 'multi_normal-list/score_function': [[-0.0587676205, 1.59906983, 0.749885917, 0.402489036,
                                       -0.536042988, 0.694513738, -2.3504703, 2.03289914,
                                       1.03887939, 1.76642859, -1.23030615, 2.70190406],
                                      [-2.53391194, -1.98256993, -2.31419992, -3.1261735,
                                       -3.15240216, -3.0510006, 2.14413309, -0.854112625,
                                       -1.45076263, -0.406746894, -2.02001548, 0.709235072]],
 'wrapper-list/pathwise': [[1.37168407, -0.305452764, -0.773640215, 1.37152314, -1.0491271,
                            -0.536384583, -1.23969817, 0.119765893, -1.47066832, -0.230049759,
                            -1.26198912, -3.13804936],
                           [-0.0474209487, -0.105704911, -0.228767693, 0.257217377,
                            0.0963998437, -0.116354249, 2.18173671, 0.0670634806, -0.76682061,
                            -0.255742848, 0.359467596, -3.5768218]],
 'wrapper-list/score_function': [[-0.0587676205, 1.59906983, 0.749885917, 0.402489036,
                                  -0.536042988, 0.694513738, -2.3504703, 2.03289914, 1.03887939,
                                  1.76642859, -1.23030615, 2.70190406],
                                 [-2.53391194, -1.98256993, -2.31419992, -3.1261735,
                                  -3.15240216, -3.0510006, 2.14413309, -0.854112625,
                                  -1.45076263, -0.406746894, -2.02001548, 0.709235072]],
 'wrapper-single-array/pathwise': [0.530093908, 1.24633479, 1.05418658, 0.845847726],
 'wrapper-single-array/score_function': [-0.00206378917, 0.248722389, 0.0988368019,
                                         0.0305132177]}
)
# fmt: on


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(tree)])


def _assert_like_params(jac, params, n):
    """optax returned jax.jacfwd's structure: a list for a list, a tuple for a tuple, an array
    for an array, each leaf with a leading axis of num_samples."""
    if isinstance(params, (list, tuple)):
        assert type(jac) is type(params) and len(jac) == len(params)
    else:
        assert isinstance(jac, jax.Array)
    for j, p in zip(jax.tree_util.tree_leaves(jac), jax.tree_util.tree_leaves(params), strict=True):
        assert j.shape == (n, *jnp.shape(p))


@pytest.mark.parametrize("case", AGREE_CASES)
def test_matches_recorded_optax_numbers(case):
    jac = case_jacobians(mc, mc.multi_normal, case)
    _assert_like_params(jac, agreement_cases(mc.multi_normal)[case.split("/")[0]][1], AGREE_N)
    np.testing.assert_allclose(_flat(jac), _flat(OPTAX_026[case]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", AGREE_CASES)
def test_matches_recorded_optax_numbers_under_jit(case):
    name, est = case.split("/")
    builder, params = agreement_cases(mc.multi_normal)[name]
    fun = jax.jit(getattr(mc, f"{est}_jacobians"), static_argnums=(0, 2, 4))
    jac = fun(agree_f, params, builder, jax.random.PRNGKey(AGREE_KEY), AGREE_N)
    np.testing.assert_allclose(_flat(jac), _flat(OPTAX_026[case]), rtol=1e-5, atol=1e-6)


def _optax_026():
    """optax's monte_carlo module, present up to optax 0.2.6 (not in CI)."""
    try:
        from optax import monte_carlo
        from optax._src import utils
    except ImportError:
        return None
    return monte_carlo, utils


@pytest.mark.skipif(_optax_026() is None, reason="needs optax<=0.2.6 (optax.monte_carlo)")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("n", [AGREE_N, 1000])
@pytest.mark.parametrize("case", AGREE_CASES)
def test_matches_optax_026_side_by_side(case, n):
    monte_carlo, utils = _optax_026()
    theirs = case_jacobians(monte_carlo, utils.multi_normal, case, n=n, key=7)
    ours = case_jacobians(mc, mc.multi_normal, case, n=n, key=7)
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    np.testing.assert_allclose(_flat(ours), _flat(theirs), rtol=1e-5, atol=1e-5)
    if case.startswith("multi_normal-list"):  # optax's own multi_normal passed to expectax
        name, est = case.split("/")
        mixed = getattr(mc, f"{est}_jacobians")(
            agree_f, [MEAN, LOG_SCALE], utils.multi_normal, jax.random.PRNGKey(7), n
        )
        np.testing.assert_allclose(_flat(mixed), _flat(theirs), rtol=1e-5, atol=1e-5)


def test_issue_program_single_array_params():
    """The old public program: params=jnp.array([.3]) and a builder wrapping multi_normal."""

    def dist_builder(mean):
        return mc.multi_normal(mean, jnp.zeros_like(mean))

    jac = mc.score_function_jacobians(
        lambda x: x**2, jnp.array([0.3]), dist_builder, jax.random.PRNGKey(0), N
    )
    assert isinstance(jac, jax.Array) and jac.shape == (N, 1)
    assert_unbiased(jac, np.array([0.6]), k=5)  # d/dμ E[x²] = 2μ


# --------------------------------------------------------------------------- other builders


def numpyro_builder(mean, log_scale):
    import numpyro.distributions as dist

    return dist.Normal(mean, jnp.exp(log_scale)).to_event(1)


@pytest.mark.parametrize("ename", ["score_function", "pathwise"])
def test_builder_returning_numpyro_distribution(ename):
    """optax called sample((n,), key=...) and failed on numpyro's sample(key, shape); expectax
    builds through the native path, whose samples are multi_normal's for the same key."""
    f, exact = FUNCTIONS["weighted"]
    est = jax.jit(ESTIMATORS[ename], static_argnums=(0, 2, 4))
    jac = est(f, [MEAN, LOG_SCALE], numpyro_builder, jax.random.key(2), N)
    assert isinstance(jac, list) and [j.shape for j in jac] == [(N, 3), (N, 3)]
    assert_unbiased(jac, list(exact()), k=5, bonferroni=True, name=ename)
    same = est(f, [MEAN, LOG_SCALE], mc.multi_normal, jax.random.key(2), N)
    np.testing.assert_allclose(_flat(jac), _flat(same), rtol=1e-4, atol=1e-4)


class StoppedGaussian(KeyGaussian):
    def sample(self, shape, key):
        return jax.lax.stop_gradient(super().sample(shape, key))


class IntegerBernoulli:
    def __init__(self, probs):
        self.probs = probs

    def sample(self, shape, key):
        return jax.random.bernoulli(key, self.probs, tuple(shape) + self.probs.shape).astype(int)

    def log_prob(self, x):
        return jnp.sum(x * jnp.log(self.probs) + (1 - x) * jnp.log1p(-self.probs), axis=-1)


class FloatBernoulli(IntegerBernoulli):
    """Float samples (0.0/1.0) with no path to the parameters."""

    def sample(self, shape, key):
        return super().sample(shape, key).astype(jnp.float32)


class NoRsample(KeyGaussian):
    has_rsample = False


class TFPStyle(KeyGaussian):
    reparameterization_type = "NOT_REPARAMETERIZED"


def numpyro_bernoulli(probs):
    import numpyro.distributions as dist

    return dist.Bernoulli(probs=probs).to_event(1)


PROBS = [jnp.array([0.2, 0.7])]
NOT_REPARAMETERISED = [
    ("stop_gradient", StoppedGaussian, [MEAN, LOG_SCALE], "do not depend differentiably"),
    ("integer", IntegerBernoulli, PROBS, "returns int32 values"),
    ("float-bernoulli", FloatBernoulli, PROBS, "do not depend differentiably"),
    ("has_rsample", NoRsample, [MEAN, LOG_SCALE], "has_rsample is False"),
    ("tfp", TFPStyle, [MEAN, LOG_SCALE], "reparameterization_type NOT_REPARAMETERIZED"),
    ("numpyro", numpyro_bernoulli, PROBS, "has_rsample is False"),
]


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize(
    "builder,params,match",
    [c[1:] for c in NOT_REPARAMETERISED],
    ids=[c[0] for c in NOT_REPARAMETERISED],
)
def test_pathwise_refuses_non_reparameterisable_builders(builder, params, match, use_jit):
    """optax 0.2.6 returned Jacobians of exactly zero for these; refuse, and say what to use."""
    est = _maybe_jit(mc.pathwise_jacobians, use_jit, (0, 2, 4))
    with pytest.raises(ValueError, match=match) as info:
        est(lambda x: jnp.sum(x * 1.0), params, builder, jax.random.key(0), 4)
    assert "score_function_jacobians" in str(info.value)
    # the score function serves them all
    jac = mc.score_function_jacobians(
        lambda x: jnp.sum(x * 1.0), params, builder, jax.random.key(0), 4
    )
    assert all(j.shape[0] == 4 for j in jax.tree_util.tree_leaves(jac))


def test_pathwise_still_accepts_constant_functions_of_reparameterised_samples():
    """A zero Jacobian from f itself (a constant) is right, not a refused builder."""
    jac = mc.pathwise_jacobians(lambda x: 7.0, [MEAN, LOG_SCALE], KeyGaussian, jax.random.key(0), 8)
    for j in jac:
        np.testing.assert_array_equal(j, 0.0)


# --------------------------------------------------------------------------- plain mistakes


def _call(fn_name, *args):
    return getattr(mc, fn_name)(*args)


def _native_f(params, x):
    return jnp.sum(x)


KEY = jax.random.key(0)
P = [MEAN, LOG_SCALE]
MISTAKES = [
    # (id, arguments, message)
    (
        "numpyro-instance-as-builder",
        lambda d: (jnp.sum, P, d.Normal(0.0, 1.0), KEY, 4),
        r"dist_builder must be a function .*got a Normal distribution itself",
    ),
    (
        "multi_normal-instance-as-builder",
        lambda d: (jnp.sum, P, mc.multi_normal(MEAN, LOG_SCALE), KEY, 4),
        r"got a MultiNormalDiagFromLogScale distribution itself",
    ),
    (
        "native-f(params,x)",
        lambda d: (_native_f, P, mc.multi_normal, KEY, 4),
        r"function must take one sample, f\(x\); it has 2 required arguments \(params, x\)",
    ),
    (
        "native-argument-order",
        lambda d: (jnp.sum, numpyro_builder, P, KEY, 4),
        r"params must be the parameters .*got the function numpyro_builder",
    ),
    (
        "rng-and-num_samples-swapped",
        lambda d: (jnp.sum, P, mc.multi_normal, 4, KEY),
        r"rng must be one jax.random key.*argument order is \(function, params",
    ),
    (
        "num_samples-not-int",
        lambda d: (jnp.sum, P, mc.multi_normal, KEY, 4.0),
        r"num_samples must be a Python int, got float",
    ),
    (
        "num_samples-zero",
        lambda d: (jnp.sum, P, mc.multi_normal, KEY, 0),
        r"num_samples must be at least 1",
    ),
    (
        "dict-params",
        lambda d: (jnp.sum, {"m": MEAN, "s": LOG_SCALE}, mc.multi_normal, KEY, 4),
        r"a dict would pass its keys",
    ),
    (
        "0-d-params",
        lambda d: (jnp.sum, jnp.array(0.3), KeyGaussian, KEY, 4),
        r"got a 0-d array. Wrap it",
    ),
    (
        "multi_normal-three-params",
        lambda d: (jnp.sum, [MEAN, LOG_SCALE, MEAN], mc.multi_normal, KEY, 4),
        r"multi_normal takes params=\[mean, log_scale\].*3 element",
    ),
    (
        "builder-arity",
        lambda d: (jnp.sum, [MEAN], KeyGaussian, KEY, 4),
        r"dist_builder\(\*params\) failed: .*called with 1 argument",
    ),
    (
        "builder-returns-array",
        lambda d: (jnp.sum, P, lambda m, s: m + s, KEY, 4),
        r"must return a distribution with sample\(shape, key\) and log_prob\(x\); got ArrayImpl",
    ),
    (
        "builder-not-callable",
        lambda d: (jnp.sum, P, "multi_normal", KEY, 4),
        r"dist_builder must be a function building a distribution",
    ),
]


@pytest.mark.parametrize("fn_name", ["score_function_jacobians", "pathwise_jacobians"])
@pytest.mark.parametrize("make_args,match", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_plain_mistakes_raise_clear_type_errors(fn_name, make_args, match):
    import numpyro.distributions as dist

    args = make_args(dist)
    expected = ValueError if "at least 1" in match else TypeError
    with pytest.raises(expected, match=match):
        _call(fn_name, *args)


@pytest.mark.parametrize("fn_name", ["score_function_jacobians", "pathwise_jacobians"])
def test_vector_valued_function_is_refused_for_custom_builders(fn_name):
    with pytest.raises(TypeError, match=r"function must return a scalar .* shape \(3,\)"):
        _call(fn_name, lambda x: x**2, P, KeyGaussian, KEY, 4)


def test_missing_argument_names_it():
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'num_samples'"):
        mc.score_function_jacobians(jnp.sum, P, mc.multi_normal, KEY)


def test_control_variates_and_measure_valued_check_their_inputs_too():
    import numpyro.distributions as dist

    with pytest.raises(TypeError, match="got a Normal distribution itself"):
        mc.control_variates_jacobians(
            jnp.sum,
            mc.control_delta_method,
            mc.pathwise_jacobians,
            P,
            dist.Normal(0.0, 1.0),
            KEY,
            4,
        )
    with pytest.raises(TypeError, match="params must be a list"):
        mc.control_variates_jacobians(
            jnp.sum,
            mc.control_delta_method,
            mc.pathwise_jacobians,
            jnp.stack(P),
            mc.multi_normal,
            KEY,
            4,
        )
    with pytest.raises(ValueError, match=r"params must be \[mean, log_scale\]"):
        mc.measure_valued_jacobians(jnp.sum, [MEAN], mc.multi_normal, KEY, 4)
    with pytest.raises(TypeError, match="num_samples must be a Python int"):
        mc.measure_valued_jacobians(jnp.sum, P, mc.multi_normal, KEY, None)


def test_control_variates_with_a_custom_builder_draw_as_optax():
    """control_variates_jacobians updates the state with builder(*params).sample((n,), key=rng)."""
    f = lambda x: jnp.sum(WEIGHTS * x)
    cv = functools.partial(mc.moving_avg_baseline, decay=0.9, zero_debias=False)
    key = jax.random.PRNGKey(3)
    state = (jnp.array(1.0), 0)
    _, new_state = mc.control_variates_jacobians(
        f, cv, mc.score_function_jacobians, [MEAN, LOG_SCALE], KeyGaussian, key, 5, state
    )
    x = KeyGaussian(MEAN, LOG_SCALE).sample((5,), key)
    expected = cv(f)[2]([MEAN, LOG_SCALE], x, state)
    np.testing.assert_allclose(new_state[0], expected[0], rtol=1e-6)


if __name__ == "__main__":  # needs optax 0.2.6; see the command above OPTAX_026
    import pprint
    import sys
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from optax import monte_carlo
    from optax._src import utils

    if "--compare" not in sys.argv:  # the numbers pasted into OPTAX_026
        pprint.pprint(agreement_numbers(monte_carlo, utils.multi_normal), width=96, compact=True)
        raise SystemExit
    # --compare: expectax against optax side by side, max |ours − optax| / max |optax| per case
    print(f"jax {jax.__version__}; key {7}; relative difference = max|Δ| / max|optax|")
    worst = 0.0
    for n in (AGREE_N, 1000):
        for case in AGREE_CASES:
            ours = _flat(case_jacobians(mc, mc.multi_normal, case, n=n, key=7))
            theirs = _flat(case_jacobians(monte_carlo, utils.multi_normal, case, n=n, key=7))
            rel = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
            worst = max(worst, rel)
            print(f"n={n:<5} {case:<38} {rel:.1e}")
    print(f"largest: {worst:.1e}")
