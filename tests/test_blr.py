"""``expectax blr``: a short run writes its files and improves the ELBO."""

import argparse
import csv

import numpy as np
import pytest

from expectax.vi import blr


def _args(tmp_path, **kw):
    parser = blr.configure_parser(argparse.ArgumentParser())
    argv = ["--out", str(tmp_path), "--no-progress", "--variance-samples", "16"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


def test_data_shape():
    data = blr.load_data()
    assert data.x.shape == (569, 31)
    np.testing.assert_allclose(np.asarray(data.x[:, :30]).mean(0), 0.0, atol=1e-4)
    assert set(np.unique(np.asarray(data.y))) == {0.0, 1.0}


def test_short_run_writes_files_and_improves_elbo(tmp_path):
    args = _args(tmp_path, estimator="pathwise", control_variate="delta", steps=40)
    assert blr.run(args) == 0
    for name in ("blr_pathwise_delta.csv", "blr_pathwise_delta.png", "blr_summary.csv"):
        assert (tmp_path / name).exists(), name
    with open(tmp_path / "blr_pathwise_delta.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40]
    elbo = [float(r["elbo"]) for r in rows]
    assert elbo[-1] > elbo[0] + 10.0, elbo
    assert all(float(r["grad_var_mean"]) > 0 for r in rows)


def test_score_function_run(tmp_path):
    args = _args(tmp_path, estimator="score", steps=12, log_every=5)
    assert blr.run(args) == 0
    with open(tmp_path / "blr_score_none.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [0, 5, 10, 12]


def test_bad_combination():
    with pytest.raises(ValueError, match="--estimator must be one of"):
        blr.make_estimator("reinforce", "none")


def test_measure_valued_with_delta_method_runs(tmp_path):
    from expectax import MeasureValued
    from expectax.control_variates import DeltaMethod

    est = blr.make_estimator("measure-valued", "delta")
    assert isinstance(est, MeasureValued) and isinstance(est.control_variate, DeltaMethod)
    args = _args(
        tmp_path, estimator="measure-valued", control_variate="delta", steps=5, log_every=5
    )
    assert blr.run(args) == 0
    with open(tmp_path / "blr_measure-valued_delta.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 5]
    assert all(np.isfinite(float(r["elbo"])) for r in rows)
