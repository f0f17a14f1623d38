"""``expectax blr``: the paper's setup, the exact ELBO and its optimum, the files it writes."""

import argparse
import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from expectax.vi import blr


@pytest.fixture(scope="module")
def data():
    return blr.load_data()


def _args(tmp_path, *extra):
    parser = blr.configure_parser(argparse.ArgumentParser(prog="expectax blr"))
    return parser.parse_args(
        ["--out", str(tmp_path), "--quiet", "--variance-samples", "16", *extra]
    )


def test_data_shape(data):
    assert data.x.shape == (569, 31)
    np.testing.assert_allclose(np.asarray(data.x[:, :30]).mean(0), 0.0, atol=1e-4)
    assert set(np.unique(np.asarray(data.y))) == {0.0, 1.0}


def test_defaults_are_the_papers():
    c = blr.BLRConfig()
    assert (c.steps, c.batch_size, c.num_samples, c.learning_rate, c.init_scale) == (
        5000,
        32,
        50,
        1e-3,
        1.0,
    )
    p = blr.init_params(31, c.init_scale)
    np.testing.assert_array_equal(p["log_scale"], 0.0)  # log-scale parameterisation, σ = 1
    sched = blr._schedule(1e-3, 5000)
    for t in (0, 1000, 2500, 4999):
        assert math.isclose(
            float(sched(t)), 1e-3 * math.cos(math.pi / 2 * t / 5000), rel_tol=1e-5, abs_tol=1e-9
        )


def test_batches_come_from_shuffled_epochs():
    idx = blr.batch_indices(seed=3, steps=100, batch_size=32, n=569)
    assert idx.shape == (100, 32)
    flat = idx.reshape(-1)
    for e in range(3200 // 569):  # every complete epoch visits each point once
        assert sorted(flat[e * 569 : (e + 1) * 569]) == list(range(569))
    assert not np.array_equal(flat[:569], flat[569:1138])
    assert not np.array_equal(idx, blr.batch_indices(seed=4, steps=100, batch_size=32, n=569))


def test_kl_is_numpyros_and_exact():
    rng = np.random.default_rng(0)
    p = {"mu": jnp.asarray(rng.normal(size=5)), "log_scale": jnp.asarray(rng.normal(size=5))}
    s2 = np.exp(2 * np.asarray(p["log_scale"]))
    expected = 0.5 * np.sum(s2 + np.asarray(p["mu"]) ** 2 - 1 - np.log(s2))
    np.testing.assert_allclose(float(blr.kl(p)), expected, rtol=1e-5)


def test_exact_elbo_matches_monte_carlo(data):
    rng = np.random.default_rng(1)
    p = {"mu": rng.normal(size=31) * 0.3, "log_scale": rng.normal(size=31) * 0.3 - 0.5}
    exact = blr.exact_elbo(p, data)
    w = p["mu"] + np.exp(p["log_scale"]) * rng.normal(size=(20000, 31))
    ys = 2 * np.asarray(data.y, np.float64) - 1
    ll = -np.logaddexp(0, -(ys * (w @ np.asarray(data.x, np.float64).T))).sum(1)
    kl = float(blr.kl(jax.tree_util.tree_map(jnp.asarray, p)))
    se = ll.std(ddof=1) / math.sqrt(ll.size)
    assert abs(ll.mean() - kl - exact) < 4 * se, (ll.mean() - kl, exact, se)


def test_quadrature_is_converged(data):
    # at σ = 1 (the start) against a grid twice as fine, and at the optimum against
    # Gauss–Hermite (where the posterior is narrow and Gauss–Hermite converges fast)
    p0 = jax.tree_util.tree_map(np.asarray, blr.init_params(31))
    t = np.arange(-520, 521) / 40.0
    w = np.exp(-0.5 * t**2)
    assert abs(blr.exact_elbo(p0, data) - blr.exact_elbo(p0, data, (t, w / w.sum()))) < 1e-6
    _, popt = blr.optimum(data)
    tg, wg = np.polynomial.hermite_e.hermegauss(100)
    gh = blr.exact_elbo(popt, data, (tg, wg / wg.sum()))
    assert abs(blr.exact_elbo(popt, data) - gh) < 1e-4


def test_optimum(data):
    value, p = blr.optimum(data)
    assert abs(value - (-67.4634)) < 5e-4, value
    theta = np.concatenate([p["mu"], p["log_scale"]])
    v, g = blr._value_and_grad(theta, data)
    assert math.isclose(v, value) and np.abs(g).max() < 1e-3
    # the analytic gradient is the exact ELBO's (central differences)
    rng = np.random.default_rng(0)
    th = rng.normal(size=62) * 0.3
    v0, g0 = blr._value_and_grad(th, data)
    e = np.zeros(62)
    e[45] = 1e-6
    num = (blr._value_and_grad(th + e, data)[0] - blr._value_and_grad(th - e, data)[0]) / 2e-6
    assert abs(num - g0[45]) < 1e-4 * max(1.0, abs(g0[45]))


def test_runs_several_seeds_writes_files_and_refuses_to_overwrite(tmp_path, capsys):
    argv = ["--estimator", "pathwise", "--steps", "40"]
    argv += ["--seed", "3", "4", "--variance-every", "20", "--json"]
    assert blr.run(_args(tmp_path, *argv)) == 0
    summary = json.loads(capsys.readouterr().out)
    for name in ("log.csv", "summary.csv", "summary.json", "curve.png"):
        assert (tmp_path / name).exists(), name
    with open(tmp_path / "log.csv") as fh:
        log = list(csv.DictReader(fh))
    assert {r["seed"] for r in log} == {"3", "4"}
    rows = [r for r in log if r["seed"] == "3"]
    assert {r["estimator"] for r in rows} == {"pathwise"}
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40]
    elbo = [float(r["elbo"]) for r in rows]
    assert elbo[-1] > elbo[0] + 100.0, elbo
    assert [r["grad_var_mu"] != "nan" for r in rows] == [True, False, True, False, True]
    assert [r["seed"] for r in summary["runs"]] == [3, 4]
    assert summary["runs"][0]["final_elbo"] != summary["runs"][1]["final_elbo"]
    assert abs(summary["optimum"] + 67.4634) < 5e-4
    with open(tmp_path / "summary.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    before = (tmp_path / "summary.csv").read_text()
    assert blr.run(_args(tmp_path, *argv)) == 2  # refuses an earlier run's files
    assert "already holds an earlier run" in capsys.readouterr().err
    assert (tmp_path / "summary.csv").read_text() == before
    assert blr.run(_args(tmp_path, *argv, "--overwrite")) == 0


def test_diverged_run_is_reported_as_diverged(tmp_path, capsys):
    argv = ["--estimator", "score", "--steps", "30", "--lr", "1e3", "--json"]
    assert blr.run(_args(tmp_path, *argv)) == 0
    (r,) = json.loads(capsys.readouterr().out)["runs"]
    assert r["status"] == "diverged" and r["diverged_at_step"] <= 30
    assert r["final_elbo"] is None and r["accuracy"] is None
    assert (tmp_path / "curve.png").exists()


def test_command_line_refusals(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert blr.run(_args(f, "--steps", "1")) == 2
    assert "is an existing file" in capsys.readouterr().err
    parser = blr.configure_parser(argparse.ArgumentParser(prog="expectax blr"))
    for argv, msg in [
        (["--seed", str(2**32)], "0 <= seed < 2\\*\\*32"),
        (["--num-samples", "0"], "must be positive"),
        (["--lr", "inf"], "must be positive and finite"),
    ]:
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        assert msg.replace("\\", "") in capsys.readouterr().err


def test_bad_names():
    with pytest.raises(ValueError, match="--estimator must be one of"):
        blr.make_estimator("reinforce", "none")
    with pytest.raises(ValueError, match="--control-variate must be one of"):
        blr.make_estimator("score", "tiny")


def test_measure_valued_with_delta_method_runs(data):
    from expectax import MeasureValued
    from expectax.control_variates import DeltaMethod

    est = blr.make_estimator("measure-valued", "delta")
    assert isinstance(est, MeasureValued) and isinstance(est.control_variate, DeltaMethod)
    cfg = blr.BLRConfig("measure-valued", "delta", steps=5, log_every=5, variance_samples=8)
    c = blr.train(cfg, data, quiet=True)
    assert list(c["step"]) == [0, 5] and np.all(np.isfinite(c["elbo"]))
