r"""``expectax blr``: Bayesian logistic regression with a mean-field Gaussian posterior.

The experiment of Mohamed et al. (2020), section 8.3, with the setup of DeepMind's
``mc_gradients`` code: scikit-learn's breast-cancer data (569 patients, 30 features
standardised, plus a bias column: ``D = 31`` weights), prior ``w ~ N(0, I)``, posterior
``q(w) = N(μ, diag(σ²))`` with ``σ = exp(log_scale)`` initialised at ``μ = 0``, ``σ = 1``, and

.. math::

    \mathrm{ELBO}(\mu, \log\sigma) = \mathbb{E}_{q(w)}\Big[\frac{n}{B}\sum_{i \in \text{batch}}
        \log \sigma\big(\tilde y_i\, x_i^\top w\big)\Big] - \mathrm{KL}\big(q \,\|\, N(0, I)\big),
    \qquad \tilde y_i = 2 y_i - 1 .

The expectation is an :func:`expectax.expectation` with 50 posterior samples, estimated by the
score-function, pathwise or measure-valued estimator, optionally with the delta-method control
variate; the KL is exact (numpyro's ``kl_divergence``). Training: SGD with learning rate
``1e-3 · cos(π/2 · t/T)``, batches of 32 from shuffled epochs, 5000 steps.

Logged, on the whole data set:

- every ``log_every`` steps, the **exact** ELBO: ``E_q[log σ(ỹ xᵀw)]`` is a 1-D Gaussian
  integral per data point (``xᵀw ~ N(xᵀμ, Σ_j x_j² σ_j²)``), computed by quadrature
  (:func:`exact_elbo`), beside the family's optimum (:func:`optimum`, about −67.4634); and the
  accuracy of the posterior-mean classifier;
- every ``variance_every`` steps, the paper's variance quantity: the variance of the
  50-sample estimator of the gradient with respect to the mean parameters μ on the whole data
  set (per-sample gradients from 1000 fresh samples, their variance divided by 50, averaged
  over the 31 coordinates), and the same for ``log_scale``.

A run whose parameters become NaN or infinite stops there and is reported as diverged.

Example::

    expectax blr --estimator pathwise --control-variate delta --seed 0 1 2 --out runs/blr
    expectax blr --estimator all --control-variate all --seed 10 11 12 --out runs/blr

References:
  Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
  learning", JMLR 21(132), section 8.3; code: github.com/deepmind/mc_gradients.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import kl_divergence

import expectax as ex
from expectax import cliutil, runio
from expectax.control_variates import DeltaMethod

__all__ = [
    "BLRConfig",
    "CONTROL_VARIATES",
    "ESTIMATORS",
    "configure_parser",
    "exact_elbo",
    "kl",
    "load_data",
    "make_estimator",
    "optimum",
    "posterior",
    "run",
    "train",
]

ESTIMATORS = ("score", "pathwise", "measure-valued")
CONTROL_VARIATES = ("none", "delta")


@dataclasses.dataclass(frozen=True)
class BLRConfig:
    """Hyperparameters; the defaults are Mohamed et al.'s (``mc_gradients/config.py``)."""

    estimator: str = "pathwise"
    control_variate: str = "none"
    steps: int = 5000
    seed: int = 0
    batch_size: int = 32
    num_samples: int = 50
    learning_rate: float = 1e-3
    init_scale: float = 1.0
    log_every: int = 10
    variance_every: int = 100
    variance_samples: int = 1000


class Data(NamedTuple):
    x: jax.Array  # (n, 31) standardised features and a bias column
    y: jax.Array  # (n,) in {0, 1}


def load_data() -> Data:
    """The breast-cancer data: standardised features plus a bias column, labels in {0, 1}."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    return Data(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))


def make_estimator(name: str, control_variate: str) -> ex.Estimator:
    """The estimator for ``--estimator`` and ``--control-variate``.

    Raises:
      ValueError: for an unknown name.
    """
    if control_variate not in CONTROL_VARIATES:
        raise ValueError(
            f"--control-variate must be one of {CONTROL_VARIATES}, got {control_variate!r}."
        )
    cv = DeltaMethod() if control_variate == "delta" else None
    if name == "score":
        return ex.ScoreFunction(control_variate=cv)
    if name == "pathwise":
        return ex.Pathwise(control_variate=cv)
    if name == "measure-valued":
        return ex.MeasureValued(coupling=True, control_variate=cv)
    raise ValueError(f"--estimator must be one of {ESTIMATORS}, got {name!r}.")


def posterior(params: dict) -> Any:
    """``q(w) = N(μ, diag(exp(log_scale)²))`` as a numpyro distribution (event shape (D,))."""
    return dist.Normal(params["mu"], jnp.exp(params["log_scale"])).to_event(1)


def kl(params: dict) -> jax.Array:
    """``KL(q ‖ N(0, I))``, exact (numpyro's ``kl_divergence``)."""
    mu = params["mu"]
    prior = dist.Normal(jnp.zeros_like(mu), jnp.ones_like(mu)).to_event(1)
    return kl_divergence(posterior(params), prior)


def init_params(dim: int, init_scale: float = 1.0) -> dict:
    """``μ = 0``, ``log σ = log(init_scale)``."""
    return {
        "mu": jnp.zeros(dim, jnp.float32),
        "log_scale": jnp.full(dim, math.log(init_scale), jnp.float32),
    }


def _loglik(x: jax.Array, y: jax.Array, scale: float) -> Any:
    ys = 2.0 * y - 1.0

    def f(params: Any, w: jax.Array) -> jax.Array:
        return scale * jnp.sum(jax.nn.log_sigmoid(ys * (x @ w)))

    return f


# ---------------------------------------------------------------------------------------------
# The exact ELBO and the family's optimum (float64, on the host).

# The Gaussian integral E[g(m + s t)], t ~ N(0, 1), by the trapezoid rule on t ∈ [−13, 13] with
# step 1/20. log σ(z) is analytic in a strip around the real axis, so the trapezoid rule
# converges geometrically: at σ = 1 (s ≈ 5.6) it is within 1e-9 nats of a grid twice as fine,
# where Gauss–Hermite with 128 nodes is still 0.04 nats off (tests/test_blr.py compares both).
_T = np.arange(-260, 261) / 20.0
_W = np.exp(-0.5 * _T**2)
_W = _W / _W.sum()


def _moments(data: Data, mu: np.ndarray, log_scale: np.ndarray) -> tuple:
    x = np.asarray(data.x, np.float64)
    ys = 2.0 * np.asarray(data.y, np.float64) - 1.0
    s2 = np.exp(2.0 * log_scale)
    return x, ys, ys * (x @ mu), np.sqrt((x**2) @ s2), s2


def _kl64(mu: np.ndarray, log_scale: np.ndarray) -> float:
    return float(0.5 * np.sum(np.exp(2 * log_scale) + mu**2 - 1.0 - 2.0 * log_scale))


def exact_elbo(params: dict, data: Data, nodes: tuple | None = None) -> float:
    """The ELBO on the whole data set without Monte Carlo error (float64).

    ``E_q[log σ(ỹ_i x_iᵀw)]`` is a 1-D Gaussian integral for each data point; it is computed by
    quadrature over ``t ~ N(0, 1)`` (``nodes = (t, weights)``, default: the trapezoid rule
    described above; pass Gauss–Hermite nodes to compare). NaN for non-finite parameters.
    """
    mu = np.asarray(params["mu"], np.float64)
    ls = np.asarray(params["log_scale"], np.float64)
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(ls))):
        return math.nan
    t, w = (_T, _W) if nodes is None else nodes
    _, _, m, s, _ = _moments(data, mu, ls)
    with np.errstate(over="ignore"):
        ell = -np.logaddexp(0.0, -(m[:, None] + s[:, None] * t[None, :])) @ w
    return float(np.sum(ell) - _kl64(mu, ls))


def _value_and_grad(theta: np.ndarray, data: Data) -> tuple[float, np.ndarray]:
    d = theta.size // 2
    mu, ls = theta[:d], theta[d:]
    x, ys, m, s, s2 = _moments(data, mu, ls)
    z = m[:, None] + s[:, None] * _T[None, :]
    ell = -np.logaddexp(0.0, -z) @ _W
    sig = 0.5 * (1.0 - np.tanh(0.5 * z))  # σ(−z) = d log σ(z) / dz, stable
    dm = sig @ _W  # ∂/∂m
    ds = (sig * _T[None, :]) @ _W  # ∂/∂s
    g_mu = x.T @ (ys * dm) - mu
    g_ls = ((x**2).T @ (ds / s)) * s2 - (s2 - 1.0)
    return float(ell.sum() - _kl64(mu, ls)), np.concatenate([g_mu, g_ls])


@functools.lru_cache(maxsize=2)
def _optimum_cached(key: bytes, n: int, dim: int) -> tuple[float, tuple]:
    from scipy.optimize import minimize

    x = np.frombuffer(key, np.float32).reshape(n, dim + 1)
    data = Data(x[:, :dim], x[:, dim])

    def neg(theta: np.ndarray) -> tuple[float, np.ndarray]:
        v, g = _value_and_grad(theta, data)
        return -v, -g

    res = minimize(
        neg,
        np.zeros(2 * dim),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10_000, "ftol": 1e-15, "gtol": 1e-9},
    )
    return -float(res.fun), (res.x[:dim].copy(), res.x[dim:].copy())


def optimum(data: Data | None = None) -> tuple[float, dict]:
    """The largest ELBO of the mean-field Gaussian family and where it is (L-BFGS, float64).

    The exact ELBO is smooth and concave enough in (μ, log σ) for L-BFGS to converge in ~50
    iterations from ``μ = 0, σ = 1``; on the breast-cancer data the optimum is −67.4634.
    """
    data = load_data() if data is None else data
    x = np.concatenate([np.asarray(data.x), np.asarray(data.y)[:, None]], axis=1)
    n, d1 = x.shape
    value, (mu, ls) = _optimum_cached(x.astype(np.float32).tobytes(), n, d1 - 1)
    return value, {"mu": mu, "log_scale": ls}


# ---------------------------------------------------------------------------------------------
# Training.


def batch_indices(seed: int, steps: int, batch_size: int, n: int) -> np.ndarray:
    """``(steps, batch_size)`` indices: consecutive batches from shuffled epochs.

    Each epoch is a fresh permutation of the ``n`` points; batches run across epoch ends (as
    ``Dataset.shuffle().repeat().batch()`` does in the reference).
    """
    rng = np.random.default_rng([seed, 1])
    need = steps * batch_size
    epochs = [rng.permutation(n) for _ in range(-(-need // n))]
    return np.concatenate(epochs)[:need].reshape(steps, batch_size).astype(np.int32)


def _schedule(lr: float, steps: int) -> Any:
    def schedule(count: jax.Array) -> jax.Array:
        return lr * jnp.cos(0.5 * jnp.pi * count / steps)

    return schedule


COLUMNS = (
    "step",
    "elbo",
    "optimum_gap",
    "accuracy",
    "grad_var_mu",
    "grad_var_log_scale",
    "learning_rate",
    "seconds",
)


def train(
    config: BLRConfig,
    data: Data | None = None,
    *,
    quiet: bool = False,
    bar: Any = None,
) -> dict:
    """Train one model. Returns the curves (numpy arrays, keys :data:`COLUMNS`), the final
    ``params`` and ``diverged_at`` (the first step with non-finite parameters, or None).

    ``bar`` is a :func:`expectax.runio.progress` to report to (one task per run); without it
    the run makes its own unless ``quiet``.
    """
    import optax

    data = load_data() if data is None else data
    n, d = data.x.shape
    est = make_estimator(config.estimator, config.control_variate)
    schedule = _schedule(config.learning_rate, config.steps)
    opt = optax.sgd(schedule)
    params = init_params(d, config.init_scale)
    opt_state = opt.init(params)
    scale = n / config.batch_size
    idx_all = jnp.asarray(batch_indices(config.seed, config.steps, config.batch_size, n))
    best, _ = optimum(data)

    def step(carry: tuple, xs: tuple) -> tuple:
        p, s = carry
        key, idx = xs
        E = ex.expectation(
            _loglik(data.x[idx], data.y[idx], scale),
            posterior,
            estimator=est,
            num_samples=config.num_samples,
        )
        grads = jax.grad(lambda q: kl(q) - E(q, key))(p)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    @jax.jit
    def chunk(p: dict, s: Any, keys: jax.Array, idx: jax.Array) -> tuple:
        (p, s), _ = jax.lax.scan(step, (p, s), (keys, idx))
        return p, s

    @jax.jit
    def grad_variance(p: dict, key: jax.Array) -> tuple:
        psg = ex.per_sample_grads(
            _loglik(data.x, data.y, 1.0),
            posterior,
            p,
            key,
            estimator=est,
            num_samples=config.variance_samples,
        )
        v = {k: jnp.mean(jnp.var(g, axis=0, ddof=1)) / config.num_samples for k, g in psg.items()}
        return v["mu"], v["log_scale"]

    key = jax.random.key(config.seed)
    rows: list[dict] = []
    start = time.perf_counter()
    diverged_at = None

    def log(t: int, p: dict) -> None:
        host = jax.tree_util.tree_map(np.asarray, p)
        finite = all(np.all(np.isfinite(v)) for v in host.values())
        elbo = exact_elbo(host, data) if finite else math.nan
        acc = float(np.mean((np.asarray(data.x) @ host["mu"] > 0) == np.asarray(data.y)))
        vm = vl = math.nan
        if finite and (t % config.variance_every == 0 or t == config.steps):
            vm, vl = (float(v) for v in grad_variance(p, jax.random.fold_in(key, 10**7 + t)))
        rows.append(
            {
                "step": t,
                "elbo": elbo,
                "optimum_gap": best - elbo,
                "accuracy": acc if finite else math.nan,
                "grad_var_mu": vm,
                "grad_var_log_scale": vl,
                "learning_rate": float(schedule(min(t, config.steps - 1))),
                "seconds": time.perf_counter() - start,
            }
        )

    label = f"{config.estimator}/{config.control_variate} seed {config.seed}"
    own = runio.progress(quiet=quiet) if bar is None else contextlib.nullcontext(bar)
    with own as pbar:
        task = pbar.add_task(label, total=config.steps)
        log(0, params)
        done = 0
        while done < config.steps:
            length = min(config.log_every, config.steps - done)
            keys = jax.random.split(jax.random.fold_in(key, done), length)
            params, opt_state = chunk(params, opt_state, keys, idx_all[done : done + length])
            done += length
            log(done, params)
            last = rows[-1]
            pbar.update(
                task,
                completed=done,
                description=f"{label}  ELBO {last['elbo']:9.3f}",
            )
            if not math.isfinite(last["elbo"]):
                diverged_at = done
                break
        if bar is not None:
            pbar.remove_task(task)
    out: dict[str, Any] = {c: np.array([r[c] for r in rows], np.float64) for c in COLUMNS}
    out["params"] = jax.tree_util.tree_map(np.asarray, params)
    out["diverged_at"] = diverged_at
    out["optimum"] = best
    return out


# ---------------------------------------------------------------------------------------------
# The command line.


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``expectax blr`` flags to ``parser``."""
    d = BLRConfig()
    parser.add_argument(
        "--estimator",
        choices=(*ESTIMATORS, "all"),
        default=d.estimator,
        help="gradient estimator for the expected log-likelihood ('all': each)",
    )
    parser.add_argument(
        "--control-variate",
        choices=(*CONTROL_VARIATES, "all"),
        default=d.control_variate,
        help="delta: the delta-method control variate ('all': with and without)",
    )
    runio.add_common_flags(
        parser,
        lr=d.learning_rate,
        steps=d.steps,
        num_samples=d.num_samples,
        seeds=(d.seed,),
        out="runs/blr",
        steps_help="SGD steps",
        num_samples_help="posterior samples per gradient estimate",
    )
    pos = runio.positive_int
    parser.add_argument(
        "--batch-size",
        type=pos,
        default=d.batch_size,
        help=f"data points per SGD step (default {d.batch_size})",
    )
    parser.add_argument(
        "--init-scale",
        type=runio.positive_float,
        default=d.init_scale,
        help=f"initial posterior standard deviation σ (default {d.init_scale:g})",
    )
    parser.add_argument(
        "--log-every", type=pos, default=d.log_every, help="steps between exact-ELBO logs"
    )
    parser.add_argument(
        "--variance-every",
        type=pos,
        default=d.variance_every,
        help=f"steps between gradient-variance logs (default {d.variance_every})",
    )
    parser.add_argument(
        "--variance-samples",
        type=pos,
        default=d.variance_samples,
        help=f"per-sample gradients for each variance log (default {d.variance_samples})",
    )
    return parser


#: What ``expectax blr`` writes into ``--out`` (the scheme of every command): the per-step log
#: of every run, one row per run, the summary with the groups, and the learning curves.
FILES = ("log.csv", "summary.csv", "summary.json", "curve.png")
LOG_KEYS = ("estimator", "control_variate", "seed")


def _summary_row(name: str, cv: str, seed: int, c: dict) -> dict:
    div = c["diverged_at"]
    var_ok = np.isfinite(c["grad_var_mu"])
    steps = c["step"][var_ok]
    tail = steps >= 0.9 * c["step"][-1] if steps.size else steps
    return {
        "estimator": name,
        "control_variate": cv,
        "seed": seed,
        "status": "ok" if div is None else "diverged",
        "diverged_at_step": div,
        "final_elbo": c["elbo"][-1] if div is None else math.nan,
        "optimum": c["optimum"],
        "gap": c["optimum"] - c["elbo"][-1] if div is None else math.nan,
        "accuracy": c["accuracy"][-1] if div is None else math.nan,
        "grad_var_mu_initial": c["grad_var_mu"][0],
        "grad_var_mu_final": np.mean(c["grad_var_mu"][var_ok][tail]) if tail.any() else math.nan,
        "seconds": c["seconds"][-1],
    }


SUMMARY_COLUMNS = (
    "estimator",
    "control_variate",
    "seed",
    "status",
    "diverged_at_step",
    "final_elbo",
    "optimum",
    "gap",
    "accuracy",
    "grad_var_mu_initial",
    "grad_var_mu_final",
    "seconds",
)


def run(args: argparse.Namespace) -> int:
    """Run ``expectax blr``; returns the exit status (2 for a usage error)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    err = Console(stderr=True)
    estimators = ESTIMATORS if args.estimator == "all" else (args.estimator,)
    cvs = CONTROL_VARIATES if args.control_variate == "all" else (args.control_variate,)
    labels = [(e, c) for e in estimators for c in cvs]
    seeds = list(args.seed)
    if len(set(seeds)) != len(seeds):
        return cliutil.fail("expectax blr", "--seed lists a seed twice; give each once.")
    try:
        out = runio.prepare_out(args.out, FILES, overwrite=args.overwrite)
    except runio.OutputError as e:
        return cliutil.fail("expectax blr", e)
    data = load_data()
    best, _ = optimum(data)
    rows, curves, log = [], {}, []
    with runio.progress(quiet=args.quiet, console=err) as bar:
        for name, cv in labels:
            for seed in seeds:
                config = BLRConfig(
                    estimator=name,
                    control_variate=cv,
                    steps=args.steps,
                    seed=seed,
                    batch_size=args.batch_size,
                    num_samples=args.num_samples,
                    learning_rate=args.lr,
                    init_scale=args.init_scale,
                    log_every=args.log_every,
                    variance_every=args.variance_every,
                    variance_samples=args.variance_samples,
                )
                c = train(config, data, bar=bar)
                keys = dict(zip(LOG_KEYS, (name, cv, seed), strict=True))
                log += [keys | {k: c[k][i] for k in COLUMNS} for i in range(len(c["step"]))]
                runio.write_csv(out / "log.csv", log, (*LOG_KEYS, *COLUMNS))  # each run kept
                rows.append(_summary_row(name, cv, seed, c))
                curves[(name, cv, seed)] = c
    runio.write_csv(out / "summary.csv", rows, SUMMARY_COLUMNS)
    groups = []
    for name, cv in labels:
        rs = [r for r in rows if (r["estimator"], r["control_variate"]) == (name, cv)]
        ok = [r for r in rs if r["status"] == "ok"]
        groups.append(
            {
                "estimator": name,
                "control_variate": cv,
                "seeds": [r["seed"] for r in rs],
                "diverged": len(rs) - len(ok),
                "final_elbo": runio.mean_se([r["final_elbo"] for r in ok]),
                "gap": runio.mean_se([r["gap"] for r in ok]),
                "accuracy": runio.mean_se([r["accuracy"] for r in ok]),
                "grad_var_mu_initial": runio.mean_se([r["grad_var_mu_initial"] for r in rs]),
                "grad_var_mu_final": runio.mean_se([r["grad_var_mu_final"] for r in ok]),
            }
        )
    summary = {
        "config": {k: v for k, v in vars(args).items() if k not in ("run", "func")},
        "optimum": best,
        "runs": rows,
        "groups": runio.groups_json(groups),
    }
    runio.write_json(out / "summary.json", summary)
    _plot(out / "curve.png", curves, labels, seeds, best)
    if args.json:
        import json

        print(json.dumps(runio.json_safe(summary), indent=2, allow_nan=False))
        return 0
    table = Table(
        title=escape(
            f"Bayesian logistic regression: {args.steps} steps, seeds {' '.join(map(str, seeds))}; "
            f"optimum of the family {best:.4f}"
        )
    )
    for col in ("estimator / cv", "final ELBO (exact)", "gap to optimum", "accuracy"):
        table.add_column(col, justify="right")
    table.add_column("Var μ-grad, step 0", justify="right")
    table.add_column("Var μ-grad, last 10%", justify="right")
    for g in groups:
        elbo = g["final_elbo"]
        gap_text = "-" if not math.isfinite(g["gap"][0]) else _ms(g["gap"], ".4f")
        div = f" ({g['diverged']} of {len(g['seeds'])} diverged)" if g["diverged"] else ""
        table.add_row(
            escape(f"{g['estimator']} / {g['control_variate']}"),
            ("diverged" if not math.isfinite(elbo[0]) else _ms(elbo, ".4f")) + div,
            gap_text,
            "-" if not math.isfinite(g["accuracy"][0]) else _ms(g["accuracy"], ".3f"),
            _ms(g["grad_var_mu_initial"], ".3g"),
            _ms(g["grad_var_mu_final"], ".3g"),
        )
    Console(width=max(150, Console().width)).print(table)
    print(f"wrote {', '.join(FILES)} to {out}")
    return 0


def _ms(mse: tuple[float, float], fmt: str) -> str:
    m, se = mse
    if not math.isfinite(m):
        return "-"
    if not math.isfinite(se):
        return f"{m:{fmt}}"
    return f"{m:{fmt}} ± {se:.2g}" if fmt.endswith("g") else f"{m:{fmt}} ± {se:{fmt}}"


def _seed_mean(runs: list[dict], column: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and the mean over seeds of ``column`` where it was logged (a diverged seed's
    curve stops; the mean is over the seeds still running, NaN once none is)."""
    longest = max(runs, key=lambda c: len(c["step"]))["step"]
    ys = np.full((len(runs), len(longest)), np.nan)
    for i, c in enumerate(runs):
        ys[i, : len(c[column])] = c[column]
    logged = np.any(np.isfinite(ys), axis=0) | (np.arange(len(longest)) == len(longest) - 1)
    with warnings.catch_warnings():  # "mean of empty slice" once every seed has diverged
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(ys[:, logged], axis=0)
    return longest[logged], mean


def _plot(path: Any, curves: dict, labels: list, seeds: list[int], best: float) -> None:
    gap, var = {}, {}
    for name, cv in labels:
        runs = [curves[(name, cv, s)] for s in seeds]
        runs = [{**c, "gap": best - c["elbo"]} for c in runs]
        gap[f"{name}/{cv}"] = _seed_mean(runs, "gap")
        var_steps, var_mean = _seed_mean(runs, "grad_var_mu")
        ok = np.isfinite(var_mean)
        var[f"{name}/{cv}"] = (var_steps[ok], var_mean[ok])
    runio.plot_panels(
        path,
        [
            {"series": gap, "ylabel": "optimum − exact ELBO (nats)", "log": True},
            {"series": var, "ylabel": "Var of the μ-gradient, 50 samples", "log": True},
        ],
        title=f"BLR, breast cancer (Mohamed et al. 2020, §8.3): mean over seeds "
        f"{' '.join(map(str, seeds))}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m expectax.vi.blr``: the same as ``expectax blr``."""
    import sys

    from expectax.cli import main as expectax_main

    return expectax_main(["blr", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
