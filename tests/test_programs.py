"""Stochastic programs: unbiasedness by enumeration, Rao-Blackwellisation, Hessians, errors."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from helpers import assert_unbiased, estimates

import expectax as ex
from expectax import baselines, infer

LOO = ex.ScoreFunction(baseline=baselines.LeaveOneOut())


# --------------------------------------------------------------------------- a Bernoulli chain


def chain(theta):
    """a → b → c, each site's logits depending on the previous; b matters only through c."""
    a = numpyro.sample("a", dist.Bernoulli(logits=theta[0]))
    b = numpyro.sample("b", dist.Bernoulli(logits=theta[1] + 2.0 * a - 1.0))
    c = numpyro.sample("c", dist.Bernoulli(logits=theta[2] - b))
    numpyro.factor("bonus", 0.5 * a * c * theta[1])  # a cost that depends on θ directly
    return (a + 3.0 * c - 1.5) ** 2


def chain_exact(theta):
    total = 0.0
    for a, b, c in itertools.product((0.0, 1.0), repeat=3):
        pa = jax.nn.sigmoid(theta[0]) if a else jax.nn.sigmoid(-theta[0])
        lb = theta[1] + 2.0 * a - 1.0
        pb = jax.nn.sigmoid(lb) if b else jax.nn.sigmoid(-lb)
        lc = theta[2] - b
        pc = jax.nn.sigmoid(lc) if c else jax.nn.sigmoid(-lc)
        cost = (a + 3.0 * c - 1.5) ** 2 + 0.5 * a * c * theta[1]
        total = total + pa * pb * pc * cost
    return total


THETA = jnp.array([0.3, -0.2, 0.5])

CHAIN_MIXES = {
    "default (RLOO)": None,
    "score, no baseline": {s: ex.ScoreFunction() for s in "abc"},
    "score, constant baseline": {
        s: ex.ScoreFunction(baseline=baselines.Constant(2.0)) for s in "abc"
    },
    "DisARM everywhere": {s: ex.DisARM() for s in "abc"},
    "ARM, RELAX, RLOO": {"a": ex.ARM(), "b": ex.RELAX(), "c": LOO},
    "REBAR, DisARM, score": {"a": ex.REBAR(), "b": ex.DisARM(), "c": ex.ScoreFunction()},
    "measure-valued, RLOO, DisARM": {"a": ex.MeasureValued(), "b": LOO, "c": ex.DisARM()},
}


@pytest.mark.parametrize("mix", list(CHAIN_MIXES), ids=list(CHAIN_MIXES))
def test_chain_unbiased(mix):
    E = ex.program_expectation(chain, num_particles=4, estimators=CHAIN_MIXES[mix])
    grads = estimates(jax.grad(E), THETA, jax.random.key(1), repeats=3000)
    assert_unbiased(grads, jax.grad(chain_exact)(THETA), k=5)
    values = estimates(E, THETA, jax.random.key(2), repeats=3000)
    assert_unbiased(values, chain_exact(THETA), k=5)


def test_chain_per_site_estimators_from_infer_dict():
    def program(theta):
        a = numpyro.sample("a", dist.Bernoulli(logits=theta[0]), infer={"estimator": ex.DisARM()})
        b = numpyro.sample(
            "b", dist.Bernoulli(logits=theta[1] + 2.0 * a - 1.0), infer={"estimator": ex.ARM()}
        )
        c = numpyro.sample("c", dist.Bernoulli(logits=theta[2] - b))
        numpyro.factor("bonus", 0.5 * a * c * theta[1])
        return (a + 3.0 * c - 1.5) ** 2

    E = ex.program_expectation(program, num_particles=4)
    grads = estimates(jax.grad(E), THETA, jax.random.key(3), repeats=3000)
    assert_unbiased(grads, jax.grad(chain_exact)(THETA), k=5)


def test_chain_hessian_unbiased_with_baselines():
    """DiCE across sites with Mao et al.'s baseline term: the Hessian estimate is unbiased."""
    E = ex.program_expectation(chain, num_particles=4)
    hessians = estimates(jax.hessian(E), THETA, jax.random.key(4), repeats=4000)
    assert_unbiased(hessians, jax.hessian(chain_exact)(THETA), k=5, bonferroni=True)


def test_chain_baseline_removes_a_constant_offset():
    """A cost offset of 10 multiplies every score without a baseline; RLOO removes it."""

    def offset_chain(theta):
        return chain(theta) + 10.0

    plain = ex.program_expectation(
        offset_chain, num_particles=4, estimators=CHAIN_MIXES["score, no baseline"]
    )
    rloo = ex.program_expectation(offset_chain, num_particles=4)
    v_plain = estimates(jax.grad(plain), THETA, jax.random.key(5), repeats=1000).var(0).sum()
    v_rloo = estimates(jax.grad(rloo), THETA, jax.random.key(5), repeats=1000).var(0).sum()
    assert v_rloo < 0.25 * v_plain


# --------------------------------------------------------------------------- plates


M, K = 5, 3
TARGETS = jnp.array([0.0, 2.0, 1.0, 0.0, 2.0])


def local_costs(z):
    return (z - TARGETS) ** 2


def plate_program(logits):
    with numpyro.plate("items", M):
        z = numpyro.sample("z", dist.Categorical(logits=logits))
        numpyro.factor("cost", local_costs(z))  # each element's cost depends on its own z only


def pooled_program(logits):
    with numpyro.plate("items", M):
        z = numpyro.sample("z", dist.Categorical(logits=logits))
    return jnp.sum(local_costs(z))  # the same total, outside the plate: no locality


LOGITS = jnp.array(np.random.default_rng(0).normal(size=(M, K)), jnp.float32)


def plate_moments():
    """Exact mean and variance of the single-sample score-function gradient, with and without
    Rao-Blackwellisation over the plate (enumeration of each element's K categories)."""
    p = jax.nn.softmax(LOGITS, axis=-1)  # (M, K)
    cats = jnp.arange(K, dtype=jnp.float32)
    c = (cats[None, :] - TARGETS[:, None]) ** 2  # (M, K): cost of element i at category k
    score = jnp.eye(K)[None, :, :] - p[:, None, :]  # (M, K, K): ∂ log p_i(k) / ∂ logits_i
    mean_c = (p * c).sum(1)  # E c_i
    mean_c2 = (p * c**2).sum(1)
    grad = (p[:, :, None] * c[:, :, None] * score).sum(1)  # (M, K) exact gradient
    s2 = (p[:, :, None] * score**2).sum(1)  # E s_i²
    c_s2 = (p[:, :, None] * c[:, :, None] * score**2).sum(1)  # E c_i s_i²
    c2_s2 = (p[:, :, None] * c[:, :, None] ** 2 * score**2).sum(1)  # E c_i² s_i²
    var_local = c2_s2 - grad**2
    others = mean_c.sum() - mean_c  # E Σ_{j≠i} c_j
    var_others = (mean_c2 - mean_c**2).sum() - (mean_c2 - mean_c**2)
    others2 = var_others + others**2  # E (Σ_{j≠i} c_j)²
    var_pooled = c2_s2 + 2 * others[:, None] * c_s2 + others2[:, None] * s2 - grad**2
    return grad, var_local, var_pooled


@pytest.mark.parametrize("program", [plate_program, pooled_program], ids=["local", "pooled"])
def test_plate_unbiased(program):
    est = {"z": ex.ScoreFunction()}
    E = ex.program_expectation(program, num_particles=1, estimators=est)
    grads = estimates(jax.grad(E), LOGITS, jax.random.key(6), repeats=20000)
    grad, _, _ = plate_moments()
    assert_unbiased(grads, grad, k=5, bonferroni=True)


def test_plate_rao_blackwellisation_cuts_variance_by_the_exact_factor():
    """Inside a plate a local site's score multiplies only its own element's cost: the variance
    per coordinate is the exact local variance, not the pooled one."""
    grad, var_local, var_pooled = plate_moments()
    est = {"z": ex.ScoreFunction()}
    n = 20000
    for program, exact in ((plate_program, var_local), (pooled_program, var_pooled)):
        E = ex.program_expectation(program, num_particles=1, estimators=est)
        g = np.asarray(estimates(jax.grad(E), LOGITS, jax.random.key(7), repeats=n))
        centred = g - g.mean(0)
        var = (centred**2).sum(0) / (n - 1)
        m4 = (centred**4).mean(0)
        se = np.sqrt(np.maximum(m4 - var**2, 1e-12) / n)  # SE of the sample variance
        z = (var - np.asarray(exact)) / se
        assert np.all(np.abs(z) < 5.5), (program.__name__, z)
    ratio = float(var_pooled.sum() / var_local.sum())
    assert ratio > 3.0  # the factor the exact computation gives on this problem


@pytest.mark.parametrize(
    "estimator", [ex.DisARM(), ex.RELAX(), LOO], ids=["DisARM", "RELAX", "RLOO"]
)
def test_plate_local_bernoulli_per_site_estimators(estimator):
    """Per-site estimators inside a plate see each element's own cost (all elements at once)."""
    targets = jnp.array([0.2, 0.9, 0.5, 0.1])

    def program(logits):
        with numpyro.plate("items", 4):
            z = numpyro.sample("z", dist.Bernoulli(logits=logits))
            numpyro.factor("cost", (z - targets) ** 2)

    def exact(logits):
        p = jax.nn.sigmoid(logits)
        return jnp.sum(p * (1 - targets) ** 2 + (1 - p) * targets**2)

    logits = jnp.array([0.3, -1.0, 0.0, 2.0])
    E = ex.program_expectation(program, num_particles=2, estimators={"z": estimator})
    grads = estimates(jax.grad(E), logits, jax.random.key(8), repeats=3000)
    assert_unbiased(grads, jax.grad(exact)(logits), k=5)


def test_global_cost_of_a_plate_site_uses_every_element():
    """A cost outside the plate that depends on all elements: per-site estimators fall back to
    one element at a time (still unbiased)."""

    def program(logits):
        with numpyro.plate("items", 3):
            z = numpyro.sample("z", dist.Bernoulli(logits=logits))
        return (jnp.sum(z) - 1.5) ** 2 + z[0] * z[2]

    def exact(logits):
        total = 0.0
        for z in itertools.product((0.0, 1.0), repeat=3):
            z = jnp.array(z)
            p = jnp.prod(jnp.where(z > 0, jax.nn.sigmoid(logits), jax.nn.sigmoid(-logits)))
            total = total + p * ((jnp.sum(z) - 1.5) ** 2 + z[0] * z[2])
        return total

    logits = jnp.array([0.5, -0.3, 1.0])
    E = ex.program_expectation(program, num_particles=2, estimators={"z": ex.DisARM()})
    grads = estimates(jax.grad(E), logits, jax.random.key(9), repeats=3000)
    assert_unbiased(grads, jax.grad(exact)(logits), k=5)


# --------------------------------------------------------------------------- mixed sites


GH_X, GH_W = np.polynomial.hermite_e.hermegauss(60)


def mixed(theta):
    """A reparameterised Normal site feeding a Bernoulli site's logits."""
    z = numpyro.sample("z", dist.Normal(theta["mu"], jnp.exp(theta["log_sigma"])))
    b = numpyro.sample("b", dist.Bernoulli(logits=theta["w"] * z))
    return (z - 1.0) ** 2 + 3.0 * b * z


def mixed_exact(theta):
    z = theta["mu"] + jnp.exp(theta["log_sigma"]) * GH_X
    p = jax.nn.sigmoid(theta["w"] * z)
    cost = (z - 1.0) ** 2 + 3.0 * p * z
    return jnp.sum(GH_W * cost) / jnp.sqrt(2 * jnp.pi)


MIXED_THETA = {"mu": jnp.array(0.3), "log_sigma": jnp.array(-0.4), "w": jnp.array(0.8)}


@pytest.mark.parametrize(
    "estimators",
    [None, {"b": ex.DisARM()}, {"b": ex.RELAX()}, {"z": LOO, "b": LOO}, {"z": ex.MeasureValued()}],
    ids=["default", "DisARM", "RELAX", "all score", "measure-valued z"],
)
def test_reparameterised_site_feeding_a_bernoulli(estimators):
    E = ex.program_expectation(mixed, num_particles=4, estimators=estimators)
    grads = estimates(jax.grad(E), MIXED_THETA, jax.random.key(10), repeats=3000)
    assert_unbiased(grads, jax.grad(mixed_exact)(MIXED_THETA), k=5)


def test_mixed_hessian_unbiased():
    E = ex.program_expectation(mixed, num_particles=4)
    hessians = estimates(jax.hessian(E), MIXED_THETA, jax.random.key(11), repeats=4000)
    assert_unbiased(hessians, jax.hessian(mixed_exact)(MIXED_THETA), k=5, bonferroni=True)


def test_one_site_program_is_expectation():
    """``x = sample("x", p_θ); return f(θ, x)`` estimates what ex.expectation estimates."""

    def f(p, x):
        return jnp.sin(3.0 * x) + p * x

    def dist_fn(p):
        return dist.Normal(p, 1.0)

    def program(p):
        return f(p, numpyro.sample("x", dist_fn(p)))

    theta = jnp.array(0.4)
    for est in (ex.Pathwise(), ex.ScoreFunction()):
        E1 = ex.expectation(f, dist_fn, estimator=est, num_samples=4)
        E2 = ex.program_expectation(program, num_particles=4, estimators={"x": est})
        g1 = estimates(jax.grad(E1), theta, jax.random.key(12), repeats=3000)
        g2 = estimates(jax.grad(E2), theta, jax.random.key(13), repeats=3000)
        diff = float(g1.mean() - g2.mean())
        se = float(np.sqrt(g1.var() / 3000 + g2.var() / 3000))
        assert abs(diff) < 5 * se


def test_jit_vmap_and_args():
    def program(p, scale, *, shift):
        x = numpyro.sample("x", dist.Bernoulli(logits=p))
        return scale * (x - shift) ** 2

    E = ex.program_expectation(program, num_particles=2)
    keys = jax.random.split(jax.random.key(0), 3)
    out = jax.jit(jax.vmap(lambda k: jax.grad(E)(0.1, k, 2.0, shift=0.3)))(keys)
    assert out.shape == (3,) and np.all(np.isfinite(out))


# --------------------------------------------------------------------------- errors


def test_pathwise_on_a_discrete_site_names_the_site_and_an_alternative():
    E = ex.program_expectation(chain, num_particles=2, estimators={"b": ex.Pathwise()})
    with pytest.raises(ValueError, match=r"site 'b': Pathwise needs a reparameterisable.*DisARM"):
        E(THETA, jax.random.key(0))


def test_discrete_estimator_on_a_normal_site():
    E = ex.program_expectation(mixed, num_particles=2, estimators={"z": ex.DisARM()})
    with pytest.raises(ValueError, match="site .z. .*DisARM serves Bernoulli.*LeaveOneOut"):
        E(MIXED_THETA, jax.random.key(0))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_particles": 0}, ValueError, "num_particles must be at least 1"),
        ({"num_particles": 2.0}, TypeError, "num_particles must be a Python int"),
        ({"num_particles": 2, "estimators": [ex.DisARM()]}, TypeError, "mapping from site name"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ex.program_expectation(chain, **kwargs)


@pytest.mark.parametrize(
    "estimators, match",
    [
        ({"nope": ex.DisARM()}, r"names sites \['nope'\] that the program does not draw"),
        ({"a": LOO}, "leave-one-out baseline needs num_particles >= 2"),
        ({"a": ex.DisARM}, r"site .a.: estimator must be an estimator instance"),
        ({"a": "disarm"}, "must be an expectax estimator"),
        ({"a": ex.VIMCO()}, "VIMCO estimates the gradient of an importance-weighted bound.*IWELBO"),
        ({"a": ex.ScoreFunction(baseline=baselines.Optimal())}, "baseline=None"),
    ],
)
def test_bad_site_estimators(estimators, match):
    E = ex.program_expectation(chain, num_particles=1, estimators=estimators)
    with pytest.raises((ValueError, TypeError), match=match):
        E(THETA, jax.random.key(0))


def test_relaxation_before_discrete_sites_is_refused():
    E = ex.program_expectation(chain, num_particles=2, estimators={"a": ex.GumbelSoftmax()})
    with pytest.raises(ValueError, match=r"site 'a'.*relaxes the site.*\['b'"):
        jax.grad(E)(THETA, jax.random.key(0))


def test_enumerated_site_is_refused_clearly():
    def program(p):
        x = numpyro.sample("x", dist.Bernoulli(logits=p), infer={"enumerate": "parallel"})
        return x

    E = ex.program_expectation(program, num_particles=1)
    with pytest.raises(ValueError, match="does not enumerate.*TraceEnum_ELBO"):
        E(0.0, jax.random.key(0))


def test_data_dependent_control_flow_is_refused():
    def program(p):
        x = numpyro.sample("x", dist.Bernoulli(logits=p))
        if x > 0:  # Python control flow on a random value
            numpyro.sample("y", dist.Normal(0.0, 1.0))
        return x

    E = ex.program_expectation(program, num_particles=2)
    with pytest.raises(ValueError, match="Python control flow.*jnp.where"):
        jax.jit(E)(0.0, jax.random.key(0))


@pytest.mark.parametrize(
    "ret, match",
    [((1.0, 2.0), "returned a tuple"), (jnp.ones(3), r"returned shape \(3,\)")],
)
def test_program_must_return_a_scalar(ret, match):
    def program(p):
        numpyro.sample("x", dist.Normal(p, 1.0))
        return ret

    with pytest.raises(TypeError, match=match):
        ex.program_expectation(program, num_particles=1)(0.0, jax.random.key(0))


def test_program_without_cost():
    def program(p):
        numpyro.sample("x", dist.Normal(p, 1.0))

    with pytest.raises(ValueError, match="the program has no cost"):
        ex.program_expectation(program, num_particles=1)(0.0, jax.random.key(0))


def test_bad_key():
    E = ex.program_expectation(chain, num_particles=1)
    with pytest.raises(TypeError, match="key must be a jax.random key"):
        E(THETA, 0)


def test_import_does_no_jax_computation():
    """Importing expectax (and expectax.infer) creates no arrays: with no usable JAX backend
    the import still succeeds."""
    env = dict(os.environ, JAX_PLATFORMS="no-such-platform")
    code = "import expectax, expectax.infer, expectax.programs; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# --------------------------------------------------------------------------- compare


def test_compare_programs_ranks_configurations():
    def exact(theta):
        return jax.grad(chain_exact)(theta)

    configs = {
        "RLOO": None,
        "score": CHAIN_MIXES["score, no baseline"],
        "DisARM": {"a": ex.DisARM()},
    }
    result = ex.compare_programs(
        chain, THETA, configs, num_particles=4, repeats=300, exact_grad=exact, time_budget=0.1
    )
    by_name = {r.name: r for r in result.reports}
    assert set(by_name) == set(configs)
    assert by_name["RLOO"].evaluations == 4 and by_name["DisARM"].evaluations == 4 * 3
    assert by_name["RLOO"].total_variance < by_name["score"].total_variance
    assert result.recommended in configs
    assert all(r.max_abs_z() < result.bias_threshold for r in result.reports)


def test_compare_cli_accepts_a_program_file(tmp_path, capsys):
    from expectax.cli import main

    path = tmp_path / "prog.py"
    path.write_text(
        "import jax.numpy as jnp, numpyro, numpyro.distributions as dist, expectax as ex\n"
        "def program(theta):\n"
        "    with numpyro.plate('units', 3):\n"
        "        b = numpyro.sample('b', dist.Bernoulli(logits=theta))\n"
        "        numpyro.factor('cost', (b - 0.45) ** 2)\n"
        "problem = {'program': program, 'params': jnp.zeros(3),\n"
        "           'configurations': {'RLOO [default]': None, 'DisARM': {'b': ex.DisARM()}}}\n"
    )
    code = main(
        ["compare", "--problem", f"{path}:problem", "--num-samples", "4", "--repeats", "50"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "RLOO [default]" in out and "DisARM" in out and "Recommendation" in out


def _categorical_z(t):
    return dist.Categorical(logits=jnp.array([t[0], 0.0, -t[0]]))


def _bernoulli_z(t):
    return dist.Bernoulli(logits=t[0])


@pytest.mark.parametrize(
    "estimator, z_dist, support",
    [(ex.SumAndSample(), _categorical_z, 3), (ex.DisARM(), _bernoulli_z, 2)],
    ids=["sum-and-sample", "disarm"],
)
def test_per_site_reruns_redraw_the_values_that_depend_on_the_site(estimator, z_dist, support):
    """A per-site estimator's re-runs take the values that do not depend on its site from the
    main run (u here, not drawn again) and draw again, with the same random numbers, those
    that do (x = 3z + u + ε): had x been kept, f(z) would not see z's effect on x."""

    def program(t):
        u = numpyro.sample("u", dist.Normal(t[1], 1.0))
        z = numpyro.sample("z", z_dist(t))
        x = numpyro.sample("x", dist.Normal(3.0 * z + u, 1.0))
        return (x - 1.0) ** 2 + u**2

    def exact(t):
        zs = jnp.arange(float(support))
        p = jnp.exp(z_dist(t).log_prob(jnp.arange(support)))
        # E[(3z + u + ε − 1)² | z] + E[u²] with u ~ N(t1, 1), ε ~ N(0, 1)
        return jnp.sum(p * ((3.0 * zs + t[1] - 1.0) ** 2 + 2.0 + t[1] ** 2 + 1.0))

    theta = jnp.array([0.4, 0.3])
    E = ex.program_expectation(program, num_particles=2, estimators={"z": estimator})
    grads = estimates(jax.grad(E), theta, jax.random.key(17), repeats=4000)
    assert_unbiased(grads, jax.grad(exact)(theta), k=5, bonferroni=True)
    assert E.engine.value_deps["u"] == frozenset()
    assert "z" in E.engine.value_deps["x"]


def _two_draws_local(logits):
    with numpyro.plate("items", M):
        z = numpyro.sample("z", dist.Categorical(logits=logits), infer={"num_samples": 2})
        numpyro.factor("cost", local_costs(z))  # each element's cost depends on its own z


def _two_draws_pooled(logits):
    with numpyro.plate("items", M):
        z = numpyro.sample("z", dist.Categorical(logits=logits), infer={"num_samples": 2})
    return jnp.sum(local_costs(z))  # the same total, outside the plate


@pytest.mark.parametrize(
    "program, runs",
    [(_two_draws_local, 2), (_two_draws_pooled, 2 * M)],
    ids=["local", "pooled"],
)
@pytest.mark.parametrize(
    "estimator", [ex.UnorderedSet(), ex.SumAndSample()], ids=["unordered", "sum-and-sample"]
)
def test_joint_sample_estimators_serve_a_plated_categorical_site(estimator, program, runs):
    """UnorderedSet and SumAndSample draw k categories of each element's distribution
    (infer={"num_samples": k}; k = 2 of K = 3, so that the estimate is not exact) and match
    the exact gradient. With local costs the elements' j-th draws share one run (k runs per
    particle); with the cost outside the plate that would mix the elements, and each element
    gets runs of its own (k per element)."""

    def exact(logits):
        p = jax.nn.softmax(logits, axis=-1)
        return jnp.sum(p * local_costs(jnp.arange(K, dtype=jnp.float32)[:, None]).T)

    E = ex.program_expectation(program, num_particles=2, estimators={"z": estimator})
    grads = estimates(jax.grad(E), LOGITS, jax.random.key(14), repeats=2000)
    assert_unbiased(grads, jax.grad(exact)(LOGITS), k=5, bonferroni=True)
    assert E.engine.evaluations() == 2 * (1 + runs)


def test_joint_sample_estimator_needs_at_least_two_draws():
    def program(logits):
        z = numpyro.sample("z", dist.Categorical(logits=logits), infer={"num_samples": 1})
        return z * 1.0

    E = ex.program_expectation(program, num_particles=1, estimators={"z": ex.UnorderedSet()})
    with pytest.raises(
        ValueError, match=r"site 'z': infer=\{'num_samples': 1\} must be an int >= 2"
    ):
        E(jnp.zeros(3), jax.random.key(0))


def test_score_function_site_with_a_support_that_depends_on_theta_is_refused():
    """Uniform(0, θ) under the score function misses the Leibniz boundary term: refused, as
    for one distribution; the default (pathwise, the reparameterised Uniform) serves it."""

    def program(theta):
        return numpyro.sample("x", dist.Uniform(0.0, theta))

    E = ex.program_expectation(program, num_particles=2, estimators={"x": ex.ScoreFunction()})
    with pytest.raises(ValueError, match="support"):
        jax.grad(E)(jnp.array(1.0), jax.random.key(0))
    E = ex.program_expectation(program, num_particles=2)
    grads = estimates(jax.grad(E), jnp.array(1.0), jax.random.key(15), repeats=2000)
    assert_unbiased(grads, 0.5, k=5)  # d/dθ E[x] = d/dθ θ/2


def _invalid_program(p):
    z = numpyro.sample("z", dist.Normal(p["mu"], p["sigma"]))
    b = numpyro.sample("b", dist.Bernoulli(probs=p["q"]))
    numpyro.sample("y", dist.Normal(z + b, p["noise"]), obs=0.5)


INVALID = {
    "latent-scale": {"sigma": -1.0},
    "latent-probs": {"q": 1.3},
    "observed-scale": {"noise": -0.1},
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_parameters_error_eagerly_and_are_nan_under_jit(case):
    """numpyro's check, with expectax's advice, when the values are known; under jit nothing
    can raise, so the value and every gradient coordinate are NaN, never plausible numbers."""
    good = {"mu": 0.0, "sigma": 1.0, "q": 0.3, "noise": 1.0}
    params = {k: jnp.asarray(v) for k, v in {**good, **INVALID[case]}.items()}
    E = ex.program_expectation(_invalid_program, num_particles=4)
    with pytest.raises(ValueError, match=r"invalid parameters \(numpyro: .*Check the values"):
        jax.grad(E)(params, jax.random.key(0))
    step = jax.jit(jax.value_and_grad(E))
    value, grads = step(params, jax.random.key(0))
    assert np.isnan(value) and all(np.isnan(g) for g in jax.tree_util.tree_leaves(grads)), grads
    value, ok = step({k: jnp.asarray(v) for k, v in good.items()}, jax.random.key(0))
    assert np.isfinite(value) and all(np.isfinite(g) for g in jax.tree_util.tree_leaves(ok)), ok


def _plated(p):
    with numpyro.plate("d", 3):
        z = numpyro.sample("z", dist.Bernoulli(logits=p["l"]))
        x = numpyro.sample("x", dist.Normal(p["m"] + z, 1.0))
        numpyro.factor("c", -((x - 1.0) ** 2))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_particles": 4},
        {"num_particles": 1},
        {"num_particles": 4, "vectorize_particles": False},
    ],
    ids=["vectorised", "one particle", "lax.map"],
)
def test_grad_of_jit_is_jit_of_grad(kwargs):
    # jax.grad(jax.jit(E)) once raised a TypeError from inside JAX for any program with a plate
    # and more than one particle (the magic box's constant value under vmap); it must give the
    # same numbers as jax.jit(jax.grad(E)), and so must the ELBO and second derivatives
    p = {"l": jnp.array([0.1, -0.2, 0.3]), "m": jnp.array(0.3)}
    key = jax.random.key(3)
    E = ex.program_expectation(_plated, **kwargs)
    for outer in (jax.grad, jax.hessian):
        want, got = jax.jit(outer(E))(p, key), outer(jax.jit(E))(p, key)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), want, got)

    def guide():
        numpyro.sample("z", dist.Bernoulli(logits=numpyro.param("l", p["l"])).to_event(1))

    def model():
        z = numpyro.sample("z", dist.Bernoulli(0.3).expand([3]).to_event(1))
        numpyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=jnp.array([0.2, 1.1, 0.7]))

    k = kwargs["num_particles"]
    vec = kwargs.get("vectorize_particles", True)
    elbo = infer.TraceGraph_ELBO(num_particles=k, vectorize_particles=vec)
    loss = lambda q, key: elbo.loss(key, q, model, guide)
    q = {"l": p["l"]}
    np.testing.assert_allclose(
        jax.jit(jax.grad(loss))(q, key)["l"],
        jax.grad(jax.jit(loss))(q, key)["l"],
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "site, estimator",
    [("x", ex.MeasureValued()), ("z", ex.DisARM()), ("z", ex.RELAX())],
    ids=["measure-valued", "disarm", "relax"],
)
def test_grad_of_jit_with_per_site_estimators(site, estimator):
    # first-order-only estimators (a second derivative raises) went through the same defect
    p = {"l": jnp.array([0.1, -0.2, 0.3]), "m": jnp.array(0.3)}
    key = jax.random.key(3)
    E = ex.program_expectation(_plated, num_particles=4, estimators={site: estimator})
    want, got = jax.jit(jax.grad(E))(p, key), jax.grad(jax.jit(E))(p, key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), want, got)
