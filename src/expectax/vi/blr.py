r"""``expectax blr``: Bayesian logistic regression with a mean-field Gaussian posterior.

The setup of Mohamed et al. (2020), section 8.3: scikit-learn's breast-cancer data (569
patients, 30 features standardised, plus a bias column: ``D = 31`` weights), prior
``w ~ N(0, I)``, posterior ``q(w) = N(μ, diag(σ²))`` with ``σ = softplus(ρ)``, and

.. math::

    \mathrm{ELBO}(\mu, \rho) = \mathbb{E}_{q(w)}\Big[\frac{n}{B}\sum_{i \in \text{batch}}
        \log \sigma\big(\tilde y_i\, x_i^\top w\big)\Big] - \mathrm{KL}\big(q \,\|\, N(0, I)\big),
    \qquad \tilde y_i = 2 y_i - 1 .

The expectation is an :func:`expectax.expectation` estimated with 50 posterior samples by the
score-function, pathwise or measure-valued estimator, optionally with the delta-method control
variate; the KL term is exact. Training: SGD, learning rate 1e-3 with cosine decay, batch 32,
5000 steps, jitted in chunks of 10 steps (``lax.scan``). Every 10 steps it logs

- the ELBO on the whole data set (200 fresh posterior samples, exact KL),
- the accuracy of the posterior-mean classifier on the whole data set,
- the mean and max over the 62 variational parameters of the gradient variance, measured from
  a *separate* batch of per-sample gradients (on a fresh minibatch) and divided by 50, the
  variance of the 50-sample estimate used for training.

It writes ``blr_<estimator>_<cv>.csv`` and ``.png`` per run and, with several runs, a
``blr_summary.csv`` and ``blr_curves.png``, and prints a summary table.

Example::

    expectax blr --estimator pathwise --control-variate delta --steps 5000 --out runs/
    expectax blr --estimator all --control-variate all --steps 5000 --out runs/

References:
  Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo gradient estimation in machine
  learning", JMLR 21(132), section 8.3.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import expectax as ex
from expectax.control_variates import DeltaMethod

__all__ = [
    "BLRConfig",
    "ESTIMATORS",
    "configure_parser",
    "load_data",
    "make_estimator",
    "run",
    "train",
]

ESTIMATORS = ("score", "pathwise", "measure-valued")
CONTROL_VARIATES = ("none", "delta")


@dataclasses.dataclass(frozen=True)
class BLRConfig:
    """Hyperparameters (the defaults are the paper's)."""

    estimator: str = "pathwise"
    control_variate: str = "none"
    steps: int = 5000
    seed: int = 0
    batch_size: int = 32
    num_samples: int = 50
    learning_rate: float = 1e-3
    log_every: int = 10
    variance_samples: int = 200
    elbo_samples: int = 200
    init_scale: float = 0.1


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


def _measure_valued() -> Any:
    try:
        from expectax.estimators.measure_valued import MeasureValued
    except ImportError:  # pragma: no cover - arrives with another part of the library
        return None
    return MeasureValued


def make_estimator(name: str, control_variate: str) -> ex.Estimator:
    """The estimator for ``--estimator`` and ``--control-variate``.

    Raises:
      ValueError: for an unknown name, or a combination the library cannot build.
    """
    if control_variate not in CONTROL_VARIATES:
        raise ValueError(f"--control-variate must be one of {CONTROL_VARIATES}, got {name!r}.")
    cv = DeltaMethod() if control_variate == "delta" else None
    if name == "score":
        return ex.ScoreFunction(control_variate=cv)
    if name == "pathwise":
        return ex.Pathwise(control_variate=cv)
    if name == "measure-valued":
        mv = _measure_valued()
        if mv is None:
            raise ValueError("--estimator measure-valued needs expectax.MeasureValued.")
        fields = {f.name for f in dataclasses.fields(mv)}
        if cv is not None and "control_variate" not in fields:
            raise ValueError(
                "MeasureValued has no control_variate field in this version of expectax; use "
                "--control-variate none with --estimator measure-valued."
            )
        return mv(coupling=True, control_variate=cv) if cv is not None else mv(coupling=True)
    raise ValueError(f"--estimator must be one of {ESTIMATORS}, got {name!r}.")


def _q(params: dict) -> Any:
    return dist.Normal(params["mu"], jax.nn.softplus(params["rho"])).to_event(1)


def _kl(params: dict) -> jax.Array:
    s = jax.nn.softplus(params["rho"])
    return 0.5 * jnp.sum(s**2 + params["mu"] ** 2 - 1.0 - 2.0 * jnp.log(s))


def _loglik(x: jax.Array, y: jax.Array, scale: float) -> Any:
    ys = 2.0 * y - 1.0

    def f(params: Any, w: jax.Array) -> jax.Array:
        return scale * jnp.sum(jax.nn.log_sigmoid(ys * (x @ w)))

    return f


def _batch(data: Data, key: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    idx = jax.random.choice(key, data.x.shape[0], (size,), replace=False)
    return data.x[idx], data.y[idx]


def train(config: BLRConfig, data: Data | None = None, progress: bool = True) -> dict:
    """Train one model; returns the logged curves as numpy arrays (keys as in the CSV)."""
    import optax

    data = load_data() if data is None else data
    n, d = data.x.shape
    est = make_estimator(config.estimator, config.control_variate)
    schedule = optax.cosine_decay_schedule(config.learning_rate, max(config.steps, 1))
    opt = optax.sgd(schedule)
    params = {
        "mu": jnp.zeros(d, jnp.float32),
        "rho": jnp.full(d, float(np.log(np.expm1(config.init_scale))), jnp.float32),
    }
    opt_state = opt.init(params)
    scale = n / config.batch_size

    def neg_elbo_grad(p: dict, key: jax.Array) -> dict:
        kb, ke = jax.random.split(key)
        xb, yb = _batch(data, kb, config.batch_size)
        E = ex.expectation(
            _loglik(xb, yb, scale), _q, estimator=est, num_samples=config.num_samples
        )
        return jax.grad(lambda q: _kl(q) - E(q, ke))(p)

    def step(carry: tuple, key: jax.Array) -> tuple:
        p, s = carry
        updates, s = opt.update(neg_elbo_grad(p, key), s, p)
        return (optax.apply_updates(p, updates), s), None

    def metrics(p: dict, key: jax.Array) -> dict:
        k1, k2, k3 = jax.random.split(key, 3)
        full = ex.expectation(
            _loglik(data.x, data.y, 1.0),
            _q,
            estimator=ex.Pathwise(),
            num_samples=config.elbo_samples,
        )
        elbo = full(p, k1) - _kl(p)
        acc = jnp.mean(((data.x @ p["mu"]) > 0).astype(jnp.float32) == data.y)
        xb, yb = _batch(data, k2, config.batch_size)
        psg = ex.per_sample_grads(
            _loglik(xb, yb, scale),
            _q,
            p,
            k3,
            estimator=est,
            num_samples=config.variance_samples,
        )
        var = jnp.concatenate([jnp.var(g, axis=0, ddof=1) for g in jax.tree_util.tree_leaves(psg)])
        var = var / config.num_samples
        return {
            "elbo": elbo,
            "accuracy": acc,
            "grad_var_mean": var.mean(),
            "grad_var_max": var.max(),
        }

    @jax.jit
    def chunk(p: dict, s: Any, key: jax.Array, length_key: jax.Array) -> tuple:
        del length_key
        (p, s), _ = jax.lax.scan(step, (p, s), jax.random.split(key, config.log_every))
        return p, s

    run_metrics = jax.jit(metrics)
    key = jax.random.key(config.seed)
    rows = []
    num_chunks = -(-config.steps // config.log_every)
    label = f"{config.estimator}/{config.control_variate}"
    start = time.perf_counter()

    def log(step_count: int, p: dict, k: jax.Array) -> None:
        m = {k_: float(v) for k_, v in run_metrics(p, k).items()}
        rows.append({"step": step_count, **m, "seconds": time.perf_counter() - start})

    with _progress(progress) as bar:
        task = bar.add_task(label, total=num_chunks) if bar else None
        key, k0 = jax.random.split(key)
        log(0, params, k0)
        done = 0
        for _ in range(num_chunks):
            key, kc, km = jax.random.split(key, 3)
            if config.steps - done < config.log_every:
                # the last, shorter chunk: plain steps (keeps one compiled chunk length)
                step_j = jax.jit(step)
                for kk in jax.random.split(kc, config.steps - done):
                    (params, opt_state), _ = step_j((params, opt_state), kk)
                done = config.steps
            else:
                params, opt_state = chunk(params, opt_state, kc, kc)
                done += config.log_every
            log(done, params, km)
            if bar:
                last = rows[-1]
                bar.update(
                    task,
                    advance=1,
                    description=(f"{label}  ELBO {last['elbo']:9.2f}  acc {last['accuracy']:.3f}"),
                )
    out = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    out["params"] = jax.tree_util.tree_map(np.asarray, params)
    return out


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _progress(enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())


COLUMNS = ("step", "elbo", "accuracy", "grad_var_mean", "grad_var_max", "seconds")


def _write_csv(path: str, curves: dict) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for i in range(len(curves["step"])):
            w.writerow([int(curves["step"][i])] + [f"{curves[c][i]:.6g}" for c in COLUMNS[1:]])


def _plot(path: str, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for label, c in runs.items():
        axes[0].plot(c["step"], c["elbo"], label=label)
        axes[1].plot(c["step"], c["accuracy"], label=label)
        axes[2].plot(c["step"], c["grad_var_mean"], label=label)
    axes[0].set_ylabel("ELBO (whole data set)")
    finite = [c["elbo"][np.isfinite(c["elbo"])] for c in runs.values()]
    finite = [e for e in finite if e.size]
    if finite:  # zoom on the converged part; a diverged (NaN) run just stops
        lo = min(np.percentile(e, 5) for e in finite)
        hi = max(np.max(e) for e in finite)
        axes[0].set_ylim(lo, hi + 0.05 * (hi - lo) + 1e-6)
    axes[1].set_ylabel("accuracy (posterior mean)")
    axes[2].set_ylabel("mean gradient variance (50 samples)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.suptitle("Bayesian logistic regression, breast cancer (Mohamed et al. 2020, §8.3)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    parser.add_argument("--steps", type=int, default=d.steps, help="SGD steps (paper: 5000)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument(
        "--num-samples",
        type=int,
        default=d.num_samples,
        help="posterior samples per gradient estimate",
    )
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument(
        "--variance-samples",
        type=int,
        default=d.variance_samples,
        help="per-sample gradients in the separate batch for the variance",
    )
    parser.add_argument("--out", default="blr-out", help="directory for CSV and PNG files")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``expectax blr``; returns the exit status."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if args.steps < 1 or args.log_every < 1:
        console.print("[red]--steps and --log-every must be positive[/red]")
        return 2
    estimators = ESTIMATORS if args.estimator == "all" else (args.estimator,)
    cvs = CONTROL_VARIATES if args.control_variate == "all" else (args.control_variate,)
    os.makedirs(args.out, exist_ok=True)
    data = load_data()
    runs: dict[str, dict] = {}
    skipped = []
    for name in estimators:
        for cv in cvs:
            config = BLRConfig(
                estimator=name,
                control_variate=cv,
                steps=args.steps,
                seed=args.seed,
                batch_size=args.batch_size,
                num_samples=args.num_samples,
                learning_rate=args.learning_rate,
                log_every=args.log_every,
                variance_samples=args.variance_samples,
            )
            try:
                make_estimator(name, cv)
            except ValueError as err:
                if len(estimators) * len(cvs) == 1:
                    console.print(f"[red]{err}[/red]")
                    return 2
                skipped.append(f"{name}/{cv}: {err}")
                continue
            curves = train(config, data, progress=not args.no_progress)
            stem = os.path.join(args.out, f"blr_{name}_{cv}")
            _write_csv(stem + ".csv", curves)
            _plot(stem + ".png", {f"{name}/{cv}": curves})
            runs[f"{name}/{cv}"] = curves
    if len(runs) > 1:
        _plot(os.path.join(args.out, "blr_curves.png"), runs)
    table = Table(title=f"Bayesian logistic regression, {args.steps} steps, seed {args.seed}")
    for col in (
        "estimator/cv",
        "final ELBO",
        "accuracy",
        "mean grad var",
        "max grad var",
        "seconds",
    ):
        table.add_column(col, justify="right")
    summary = os.path.join(args.out, "blr_summary.csv")
    with open(summary, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", *COLUMNS[1:], "diverged_at_step"])
        for label, c in runs.items():
            # the variance columns average the last 10% of logs (a single log is noisy)
            tail = max(1, len(c["step"]) // 10)
            vals = [
                c["elbo"][-1],
                c["accuracy"][-1],
                c["grad_var_mean"][-tail:].mean(),
                c["grad_var_max"][-tail:].mean(),
                c["seconds"][-1],
            ]
            bad = np.nonzero(~np.isfinite(c["elbo"]))[0]
            diverged = int(c["step"][bad[0]]) if bad.size else -1
            w.writerow([label] + [f"{v:.6g}" for v in vals] + [diverged])
            note = f" (NaN from step {diverged})" if bad.size else ""
            table.add_row(
                label,
                f"{vals[0]:.2f}{note}",
                f"{vals[1]:.3f}",
                f"{vals[2]:.3g}",
                f"{vals[3]:.3g}",
                f"{vals[4]:.0f}",
            )
    console.print(table)
    for line in skipped:
        console.print(f"[yellow]skipped {line}[/yellow]")
    console.print(f"wrote CSV and PNG files to {args.out}")
    return 0


def main() -> int:  # pragma: no cover - the CLI registers configure_parser/run
    return run(configure_parser(argparse.ArgumentParser(prog="expectax blr")).parse_args())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
