"""Baselines for the score-function estimator: unbiased gradients AND Hessians, lower variance."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased, estimates

import expectax as ex
from expectax import baselines as B

OFFSET = 10.0  # a large constant in f: what baselines are for


def f(p, x):
    return (x - 1.0) ** 2 + 0.3 * x**3 + OFFSET


def dist_fn(p):
    return dist.Normal(p["mu"], p["sigma"])


def exact_mean(p):
    mu, s = p["mu"], p["sigma"]
    return (mu - 1.0) ** 2 + s**2 + 0.3 * (mu**3 + 3 * mu * s**2) + OFFSET


PARAMS = {"mu": jnp.array(0.5), "sigma": jnp.array(1.2)}
EXACT_GRAD = jax.grad(exact_mean)(PARAMS)
EXACT_HESS = jax.hessian(exact_mean)(PARAMS)
R = 2000
N = 4


def _ma():
    ma = B.MovingAverage(0.8)
    state = ma.init()
    for v in (9.0, 12.0, 14.0):
        _, state = ma.update(state, jnp.array(v))
    return ma.with_state(state)


BASELINES = {
    "constant": B.Constant(12.0),
    "moving_average": _ma(),
    "leave_one_out": B.LeaveOneOut(),
    "optimal": B.Optimal(),
}


@pytest.fixture(scope="module")
def grad_and_hess():
    out = {}
    for name, b in [("none", None), *BASELINES.items()]:
        E = ex.expectation(f, dist_fn, estimator=ex.ScoreFunction(baseline=b), num_samples=N)

        def both(p, k, E=E):
            return jax.grad(E)(p, k), jax.hessian(E)(p, k)

        out[name] = estimates(both, PARAMS, jax.random.key(7), R)
    return out


@pytest.mark.parametrize("name", list(BASELINES))
def test_gradient_and_hessian_unbiased(grad_and_hess, name):
    grads, hess = grad_and_hess[name]
    assert_unbiased(grads, EXACT_GRAD, k=5, bonferroni=True, name=f"{name} gradient")
    assert_unbiased(hess, EXACT_HESS, k=5, bonferroni=True, name=f"{name} Hessian")


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_reduce_gradient_variance(grad_and_hess, name):
    plain = grad_and_hess["none"][0]
    grads = grad_and_hess[name][0]
    for k in ("mu", "sigma"):
        # With f ≈ 10 + O(1) the plain variance is dominated by the offset; each baseline
        # removes most of it (F-test margin: a factor 2 at R = 2000 is > 20 standard errors).
        assert np.var(grads[k]) < 0.5 * np.var(plain[k]), (name, k)


def test_optimal_is_best_per_coordinate(grad_and_hess):
    opt = grad_and_hess["optimal"][0]
    for name in ("constant", "leave_one_out"):
        other = grad_and_hess[name][0]
        for k in ("mu", "sigma"):
            assert np.var(opt[k]) < np.var(other[k]) * 1.1, (name, k)


def test_optimal_matches_theoretical_minimum_variance():
    """Per-sample variance with b* ≈ E[f s²]/E[s²] equals Var[(f − b*) s] by quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    mu, s = 0.5, 1.2
    x = mu + s * z
    fx = (x - 1.0) ** 2 + 0.3 * x**3 + OFFSET
    score = {"mu": (x - mu) / s**2, "sigma": ((x - mu) ** 2 - s**2) / s**3}
    est = ex.ScoreFunction(baseline=B.Optimal(num_samples=20000))
    psg = ex.per_sample_grads(
        f, dist_fn, PARAMS, jax.random.key(3), estimator=est, num_samples=20000
    )
    for k, sc in score.items():
        b = np.sum(w * fx * sc**2) / np.sum(w * sc**2)
        g = (fx - b) * sc
        theory = np.sum(w * g**2) - np.sum(w * g) ** 2
        sample = np.asarray(psg[k], np.float64)
        var = sample.var(ddof=1)
        m4 = np.mean((sample - sample.mean()) ** 4)
        se = np.sqrt((m4 - var**2) / sample.size)
        assert abs(var - theory) < 5 * se, (k, var, theory, se)


def test_per_sample_grads_mean_matches_grad():
    for b in BASELINES.values():
        est = ex.ScoreFunction(baseline=b)
        E = ex.expectation(f, dist_fn, estimator=est, num_samples=N)
        g = jax.grad(E)(PARAMS, jax.random.key(1))
        psg = ex.per_sample_grads(
            f, dist_fn, PARAMS, jax.random.key(1), estimator=est, num_samples=N
        )
        for k in g:
            np.testing.assert_allclose(psg[k].mean(0), g[k], rtol=1e-4, atol=1e-4)


def test_optimal_vector_parameters_and_control_variate():
    """Per-coordinate b on a 3-d mean-field Gaussian, combined with the delta method."""
    from expectax.control_variates import DeltaMethod

    def fv(p, x):
        return jnp.sum(jnp.sin(x)) + 5.0

    def dfn(p):
        return dist.Normal(p["mu"], p["sigma"]).to_event(1)

    p = {"mu": jnp.array([0.1, -0.4, 0.8]), "sigma": jnp.array([0.5, 1.0, 1.5])}

    def exact(p):
        return jnp.sum(jnp.sin(p["mu"]) * jnp.exp(-0.5 * p["sigma"] ** 2)) + 5.0

    est = ex.ScoreFunction(baseline=B.Optimal(), control_variate=DeltaMethod())
    E = ex.expectation(fv, dfn, estimator=est, num_samples=8)
    grads = estimates(jax.grad(E), p, jax.random.key(11), 1000)
    assert_unbiased(grads, jax.grad(exact)(p), k=5, bonferroni=True)


def test_moving_average_state_semantics():
    ma = B.MovingAverage(0.5)
    state = ma.init()
    b, state = ma.update(state, jnp.array([2.0, 4.0]))
    assert float(b) == 0.0  # the first batch sees no baseline
    b, state = ma.update(state, jnp.array(10.0))
    assert float(b) == pytest.approx(3.0)  # zero-debiased: exactly the first batch's mean
    assert float(ma.value(state)) == pytest.approx((0.25 * 3.0 + 0.5 * 10.0) / 0.75)


def test_moving_average_training_loop_under_jit():
    ma = B.MovingAverage(0.9)

    @jax.jit
    def step(params, est, key):
        E = ex.expectation(f, dist_fn, estimator=est, num_samples=16)
        value, grads = jax.value_and_grad(E)(params, key)
        params = jax.tree_util.tree_map(lambda a, g: a - 0.01 * g, params, grads)
        return params, est.baseline.advance(value)

    est = ex.ScoreFunction(baseline=ma.with_state(ma.init()))
    params = PARAMS
    for i in range(5):
        params, baseline = step(params, est, jax.random.key(i))
        est = ex.ScoreFunction(baseline=baseline)
    assert int(est.baseline.state.count) == 5
    assert 5.0 < float(est.baseline.value(est.baseline.state)) < 20.0


def test_errors():
    E = ex.expectation
    with pytest.raises(ValueError, match="at least 2"):
        E(f, dist_fn, estimator=ex.ScoreFunction(baseline=B.LeaveOneOut()), num_samples=1)
    with pytest.raises(ValueError, match="no state"):
        E(f, dist_fn, estimator=ex.ScoreFunction(baseline=B.MovingAverage()), num_samples=4)(
            PARAMS, jax.random.key(0)
        )
    for bad in (1.0, -0.1, "0.9", True, float("nan")):
        with pytest.raises(ValueError, match=r"MovingAverage: decay must be a float in \[0, 1\)"):
            B.MovingAverage(bad)
    assert B.MovingAverage(np.float32(0.5)).decay == 0.5  # NumPy scalars are numbers too
    with pytest.raises(ValueError, match="antithetic/qmc sampling makes dependent"):
        est = ex.ScoreFunction(baseline=B.LeaveOneOut(), antithetic=True)
        E(f, dist_fn, estimator=est, num_samples=4)(PARAMS, jax.random.key(0))
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        B.Optimal(num_samples=0)
