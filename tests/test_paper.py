"""Figures 2-3 of Mohamed et al. (2020): Monte Carlo variances agree with the exact ones."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import bonferroni_k

from expectax.paper import ESTIMATORS, exact_variances, reproduce_figures


def test_reproduce_figures_mc_matches_exact(tmp_path):
    result = reproduce_figures(tmp_path, num_samples=10_000, seed=0, num_k=3)
    rows = result["rows"]
    assert len(rows) == 3 * 3 * 2 * len(ESTIMATORS)
    # every Monte Carlo variance within k standard errors (fourth-moment SE) of the exact value
    thr = bonferroni_k(4.0, len(rows))
    for r in rows:
        gap = abs(r["mc_variance"] - r["exact_variance"])
        assert gap <= thr * r["mc_se"] + 1e-9 * (1.0 + r["exact_variance"]), r
    with open(result["csv"]) as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    for path in result["figures"]:
        assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"


def test_exact_variances_closed_forms():
    # f = (x - k)², μ = σ = 1, a = μ - k: pathwise Var[2(x - k)] = 4, Var[2(x - k) z] = 4a² + 8;
    # coupled measure-valued mean 16 a² (2 - π/2) / 2π, scale 4a² + 4.
    k, a = -1.0, 2.0
    ex = exact_variances("quadratic", k)
    np.testing.assert_allclose(ex["pathwise", "mu"], 4.0, rtol=1e-6)
    np.testing.assert_allclose(ex["pathwise", "sigma"], 4 * a**2 + 8, rtol=1e-6)
    np.testing.assert_allclose(
        ex["measure-valued", "mu"], 16 * a**2 * (2 - np.pi / 2) / (2 * np.pi), rtol=1e-6
    )
    np.testing.assert_allclose(ex["measure-valued", "sigma"], 4 * a**2 + 4, rtol=1e-6)
    for p in ("mu", "sigma"):
        assert ex["score+baseline", p] <= ex["score", p]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_samples must be an int"):
        reproduce_figures("unused", num_samples=1)
    with pytest.raises(ValueError, match="unknown functions"):
        reproduce_figures("unused", functions=("sine",))
