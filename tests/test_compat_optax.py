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


def test_params_must_be_a_list():
    with pytest.raises(TypeError, match="params must be a list"):
        mc.pathwise_jacobians(
            jnp.sum, {"m": MEAN, "s": LOG_SCALE}, mc.multi_normal, jax.random.key(0), 4
        )


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
