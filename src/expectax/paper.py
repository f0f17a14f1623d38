r"""Figures 2 and 3 of Mohamed et al. (2020), redrawn: gradient variance of four estimators.

Under ``x ~ N(μ = 1, σ = 1)`` and three families of test functions

.. math::

    f(x) = (x - k)^2, \qquad f(x) = e^{-k x^2}, \qquad f(x) = \cos(k x),

:func:`reproduce_figures` measures the per-sample variance of the gradient with respect to μ
(figure 2) and σ (figure 3) of the score-function estimator without and with the
variance-optimal constant baseline ``b*_j = E[f s_j²] / E[s_j²]`` (s the score; one ``b`` per
coordinate, estimated from a separate batch so that it stays unbiased), the pathwise estimator
and the coupled measure-valued estimator. Each Monte Carlo variance (from
:func:`expectax.per_sample_grads`) is drawn beside its exact value, computed by numerical
integration (the trapezoidal rule on a fine grid against Gaussian weights, Gauss–Legendre
on [0, 12] for the Weibull variable, and Gauss–Legendre over the uniform variable of the
coupled scale pair).

From the command line, ``expectax compare --figure paper --out DIR``, or::

    python -m expectax.paper --out figures/

References:
  Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
  learning", JMLR 21(132), section 7.1 and figures 2 and 3.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

from expectax.baselines import Constant
from expectax.estimators.measure_valued import MeasureValued
from expectax.estimators.pathwise import Pathwise
from expectax.estimators.score_function import ScoreFunction
from expectax.expectation import per_sample_grads

__all__ = [
    "ESTIMATORS",
    "FUNCTIONS",
    "configure_parser",
    "exact_variances",
    "mc_variances",
    "reproduce_figures",
    "run",
]

MU, SIGMA = 1.0, 1.0
PARAMS = ("mu", "sigma")
ESTIMATORS = ("score", "score+baseline", "pathwise", "measure-valued")


def _grid(name: str, num_k: int) -> np.ndarray:
    if name == "quadratic":
        return np.linspace(-3.0, 3.0, num_k)
    if name == "exp":
        return np.logspace(math.log10(0.1), 1.0, num_k)
    return np.logspace(math.log10(0.5), math.log10(5.0), num_k)


# name: (label, f in jax, f in numpy, f' in numpy), all f(x, k)
FUNCTIONS: dict[str, tuple[str, Callable, Callable, Callable]] = {
    "quadratic": (
        "(x - k)^2",
        lambda x, k: (x - k) ** 2,
        lambda x, k: (x - k) ** 2,
        lambda x, k: 2.0 * (x - k),
    ),
    "exp": (
        "exp(-k x^2)",
        lambda x, k: jnp.exp(-k * x**2),
        lambda x, k: np.exp(-k * x**2),
        lambda x, k: -2.0 * k * x * np.exp(-k * x**2),
    ),
    "cos": (
        "cos(k x)",
        lambda x, k: jnp.cos(k * x),
        lambda x, k: np.cos(k * x),
        lambda x, k: -k * np.sin(k * x),
    ),
}


# --------------------------------------------------------------------------- exact variances


def _trapz_weights(x: np.ndarray) -> np.ndarray:
    w = np.full(x.shape, x[1] - x[0])
    w[0] = w[-1] = 0.5 * (x[1] - x[0])
    return w


_Z = np.linspace(-12.0, 12.0, 12_001)  # standard-normal grid
_WZ = _trapz_weights(_Z) * np.exp(-0.5 * _Z**2) / math.sqrt(2 * math.pi)
_R, _WR = np.polynomial.legendre.leggauss(800)  # Rayleigh = Weibull(√2, 2), on [0, 12]
_R, _WR = 6.0 * (_R + 1.0), 6.0 * _WR * 6.0 * (_R + 1.0) * np.exp(-0.5 * (6.0 * (_R + 1.0)) ** 2)
_M = _Z  # double-sided Maxwell, density m² φ(m)
_WM = _WZ * _Z**2
_U, _WU = np.polynomial.legendre.leggauss(64)
_U, _WU = 0.5 * (_U + 1.0), 0.5 * _WU


def _var(weights: np.ndarray, g: np.ndarray) -> float:
    mean = np.sum(weights * g)
    return float(np.sum(weights * (g - mean) ** 2))


def exact_variances(name: str, k: float, mu: float = MU, sigma: float = SIGMA) -> dict:
    """Exact per-sample gradient variances by numerical integration.

    Args:
      name: a key of :data:`FUNCTIONS`.
      k: the function's parameter.
      mu, sigma: the Gaussian's parameters.

    Returns:
      ``{(estimator, param): variance}`` for every estimator in :data:`ESTIMATORS` and
      ``param`` in ``("mu", "sigma")``.
    """
    _, _, f, df = FUNCTIONS[name]
    x = mu + sigma * _Z
    fx = f(x, k)
    scores = {"mu": _Z / sigma, "sigma": (_Z**2 - 1.0) / sigma}
    out = {}
    for p, s in scores.items():
        out["score", p] = _var(_WZ, fx * s)
        b = np.sum(_WZ * fx * s**2) / np.sum(_WZ * s**2)
        out["score+baseline", p] = _var(_WZ, (fx - b) * s)
    out["pathwise", "mu"] = _var(_WZ, df(x, k))
    out["pathwise", "sigma"] = _var(_WZ, df(x, k) * _Z)
    c = 1.0 / (sigma * math.sqrt(2 * math.pi))
    out["measure-valued", "mu"] = _var(_WR, c * (f(mu + sigma * _R, k) - f(mu - sigma * _R, k)))
    pos = f(mu + sigma * _M, k)[:, None]
    neg = f(mu + sigma * _M[:, None] * _U[None, :], k)
    out["measure-valued", "sigma"] = _var(_WM[:, None] * _WU[None, :], (pos - neg) / sigma)
    return out


# --------------------------------------------------------------------------- Monte Carlo


def _dist_fn(params: dict) -> dist.Normal:
    return dist.Normal(params["mu"], params["sigma"])


def _estimates(name: str, num_samples: int) -> Callable[[jax.Array, jax.Array], dict]:
    """``(k, key) -> {(estimator, param): per-sample gradients (N,)}``, to be vmapped over k."""
    f_jax = FUNCTIONS[name][1]
    params = {"mu": jnp.asarray(MU), "sigma": jnp.asarray(SIGMA)}

    def one(k: jax.Array, key: jax.Array) -> dict:
        def f(p: Any, x: jax.Array) -> jax.Array:
            return f_jax(x, k)

        def grads(est: Any, key: jax.Array, fn: Callable = f) -> dict:
            return per_sample_grads(fn, _dist_fn, params, key, estimator=est, num_samples=n)

        n = num_samples
        k_sf, k_b, k_pw, k_mv = jax.random.split(key, 4)
        out = {}
        g = grads(ScoreFunction(), k_sf)
        for p in PARAMS:
            out["score", p] = g[p]
        # b*_j = E[f s_j²] / E[s_j²] from a separate batch: f s from f, s from f ≡ 1.
        fs = grads(ScoreFunction(), k_b)
        s = grads(ScoreFunction(), k_b, lambda p, x: jnp.ones_like(x))
        for p in PARAMS:
            b = jnp.mean(fs[p] * s[p]) / jnp.mean(s[p] ** 2)
            out["score+baseline", p] = grads(ScoreFunction(baseline=Constant(b)), k_sf)[p]
        g = grads(Pathwise(), k_pw)
        for p in PARAMS:
            out["pathwise", p] = g[p]
        g = grads(MeasureValued(coupling=True), k_mv)
        for p in PARAMS:
            out["measure-valued", p] = g[p]
        return out

    return one


def _moments(g: np.ndarray) -> tuple[float, float]:
    """Sample variance and its standard error (from the fourth central moment)."""
    g = np.asarray(g, dtype=np.float64)
    c = g - g.mean()
    var, m4 = float(np.mean(c**2)), float(np.mean(c**4))
    return var, math.sqrt(max(m4 - var**2, 0.0) / g.size)


def mc_variances(name: str, ks: np.ndarray, num_samples: int, key: jax.Array) -> dict:
    """Monte Carlo per-sample gradient variances and their standard errors.

    Args:
      name: a key of :data:`FUNCTIONS`.
      ks: the function parameters, shape ``(K,)``.
      num_samples: samples per variance estimate.
      key: a PRNG key (split over ``ks``).

    Returns:
      ``{(estimator, param): (variances (K,), standard errors (K,))}``.
    """
    keys = jax.random.split(key, len(ks))
    run_all = jax.jit(jax.vmap(_estimates(name, num_samples)))
    per_sample = jax.device_get(run_all(jnp.asarray(ks, dtype=float), keys))
    out = {}
    for tag, g in per_sample.items():
        pairs = [_moments(row) for row in np.asarray(g)]
        out[tag] = (np.array([v for v, _ in pairs]), np.array([s for _, s in pairs]))
    return out


# --------------------------------------------------------------------------- figures


def reproduce_figures(
    out_dir: str | Path,
    num_samples: int = 10_000,
    seed: int = 0,
    num_k: int = 25,
    functions: tuple[str, ...] = tuple(FUNCTIONS),
) -> dict:
    r"""Redraw figures 2 and 3 of Mohamed et al. (2020) and write their data.

    .. math::

        \mathbb{V}_{x \sim N(1, 1)}\big[\hat g_j(x)\big], \quad j \in \{\mu, \sigma\},

    per sample, for the score function (with and without the optimal constant baseline),
    pathwise and coupled measure-valued estimators, Monte Carlo beside exact.

    Args:
      out_dir: folder for ``paper_variances.csv``, ``figure2_mean.png`` and
        ``figure3_scale.png`` (created if missing).
      num_samples: samples per Monte Carlo variance estimate.
      seed: the PRNG seed.
      num_k: points on each function's k grid.
      functions: which of ``"quadratic"``, ``"exp"``, ``"cos"`` to draw.

    Returns:
      ``{"csv": Path, "figures": [Path, Path], "rows": [dict, ...]}`` where each row has
      ``function, k, parameter, estimator, mc_variance, mc_se, exact_variance``.

    Example:
      >>> from expectax.paper import reproduce_figures
      >>> result = reproduce_figures("figures", num_samples=2000, num_k=5)  # doctest: +SKIP

    References:
      Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
      learning", JMLR 21(132), figures 2 and 3.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an int ≥ 2, got {num_samples!r}.")
    if isinstance(num_k, bool) or not isinstance(num_k, int) or num_k < 1:
        raise ValueError(f"num_k must be a positive int, got {num_k!r}.")
    unknown = [f for f in functions if f not in FUNCTIONS]
    if unknown:
        raise ValueError(f"unknown functions {unknown}; choose from {list(FUNCTIONS)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(seed)
    rows = []
    for i, name in enumerate(functions):
        ks = _grid(name, num_k)
        mc = mc_variances(name, ks, num_samples, jax.random.fold_in(key, i))
        exact = [exact_variances(name, float(k)) for k in ks]
        for (est, p), (var, se) in mc.items():
            for j, k in enumerate(ks):
                rows.append(
                    {
                        "function": name,
                        "k": float(k),
                        "parameter": p,
                        "estimator": est,
                        "mc_variance": float(var[j]),
                        "mc_se": float(se[j]),
                        "exact_variance": exact[j][est, p],
                    }
                )
    csv_path = out / "paper_variances.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    figures = [
        _plot(rows, functions, "mu", out / "figure2_mean.png", num_samples),
        _plot(rows, functions, "sigma", out / "figure3_scale.png", num_samples),
    ]
    return {"csv": csv_path, "figures": figures, "rows": rows}


_STYLE = {
    "score": "tab:blue",
    "score+baseline": "tab:purple",
    "pathwise": "tab:green",
    "measure-valued": "tab:red",
}


def _plot(rows: list, functions: tuple, param: str, path: Path, n: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    symbol = "μ" if param == "mu" else "σ"
    fig, axes = plt.subplots(1, len(functions), figsize=(4.5 * len(functions), 3.8), squeeze=False)
    for ax, name in zip(axes[0], functions, strict=True):
        for est, colour in _STYLE.items():
            sel = [
                r
                for r in rows
                if (r["function"], r["parameter"], r["estimator"]) == (name, param, est)
            ]
            ks = np.array([r["k"] for r in sel])
            exact = np.array([r["exact_variance"] for r in sel])
            mc = np.array([r["mc_variance"] for r in sel])
            ax.plot(ks, np.where(exact > 0, exact, np.nan), color=colour, label=est)
            ax.plot(ks, np.where(mc > 0, mc, np.nan), "o", color=colour, ms=3.5, mfc="none")
        ax.set_yscale("log")
        if name != "quadratic":
            ax.set_xscale("log")
            # plain numbers at 1-2-5 steps: on a range of one decade or less matplotlib labels
            # the minor ticks too ("2×10⁰", "3×10⁰", ...), and their labels overlapped
            ticks = [
                t
                for t in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
                if ks.min() * (1 - 1e-9) <= t <= ks.max() * (1 + 1e-9)
            ]
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("k")
        ax.set_title(f"f(x) = {FUNCTIONS[name][0]}")
    axes[0][0].set_ylabel(f"variance of the {symbol}-gradient")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        f"Gradient variance w.r.t. {symbol} under N(1, 1): exact (lines), "
        f"Monte Carlo with {n} samples (circles)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- command line


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of :func:`reproduce_figures` to ``parser``."""
    parser.add_argument("--out", default="paper-figures", help="output folder")
    parser.add_argument("--num-samples", type=int, default=10_000, help="samples per variance")
    parser.add_argument("--num-k", type=int, default=25, help="points on each k grid")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run :func:`reproduce_figures` with parsed ``args``; print where the files went."""
    result = reproduce_figures(
        args.out, num_samples=args.num_samples, seed=args.seed, num_k=args.num_k
    )
    worst = max(
        abs(r["mc_variance"] - r["exact_variance"]) / r["mc_se"]
        for r in result["rows"]
        if r["mc_se"] > 0
    )
    print(f"wrote {result['csv']}")
    for path in result["figures"]:
        print(f"wrote {path}")
    print(f"largest |Monte Carlo - exact| / standard error: {worst:.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
