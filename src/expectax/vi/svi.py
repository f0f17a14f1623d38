r"""``expectax svi``: a sigmoid belief network trained with ``numpyro.infer.SVI`` and each ELBO.

The model and guide (:mod:`expectax.vi.sbn`) are plain numpyro; only the ``loss=`` of
``numpyro.infer.SVI`` changes between runs:

============  ===============================================================================
``numpyro``   ``numpyro.infer.TraceGraph_ELBO(P)``: score function, no baseline
``rloo``      ``expectax.infer.TraceGraph_ELBO(P)``: its default, the score function with a
              leave-one-out baseline over the ``P`` particles (RLOO) at each site
``disarm``    the same with ``estimators={"z1": DisARM(), "z2": DisARM()}``: ``P`` antithetic
              pairs per site (two extra program runs per pair)
``relax``     ``estimators={"z1": RELAX(), "z2": RELAX()}`` without a trained network, i.e.
              REBAR with ``λ = 0.5, η = 1`` (three extra runs per sample)
``vimco``     ``expectax.infer.IWELBO(P, plate="data")``: the importance-weighted bound of each
              image with ``P`` particles, VIMCO at both sites (a different, tighter objective)
============  ===============================================================================

For each ELBO, particle count and seed it reports the ELBO of the whole training set, the
importance-weighted bound of the held-out set, the variance of the gradient estimate at
fixed parameters (summed over all coordinates, at initialisation and after training) and the
median time per jitted ``svi.update``. Output through :mod:`expectax.runio`.

Example::

    expectax svi --elbo numpyro rloo disarm relax --num-particles 2 8 --seed 0 1 --out runs/svi
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from expectax import cliutil, runio

__all__ = [
    "ELBOS",
    "SVIConfig",
    "configure_parser",
    "evaluations",
    "gradient_variance",
    "make_elbo",
    "run",
    "train",
]

#: The ELBOs ``--elbo`` accepts, in table order.
ELBOS = ("numpyro", "default", "rloo", "disarm", "relax", "vimco")
SITES = ("z1", "z2")


def make_elbo(name: str, num_particles: int) -> Any:
    """The ``loss=`` for ``numpyro.infer.SVI`` that ``--elbo name`` means."""
    import expectax as ex

    if name == "numpyro":
        from numpyro.infer import TraceGraph_ELBO

        return TraceGraph_ELBO(num_particles=num_particles)
    from expectax.infer import TraceGraph_ELBO

    if name == "default":  # WeightedLeaveOneOut baselines
        return TraceGraph_ELBO(num_particles=num_particles)
    if name == "rloo":  # the plain leave-one-out baseline (the default before 0.2)
        rloo = ex.ScoreFunction(baseline=ex.baselines.LeaveOneOut())
        return TraceGraph_ELBO(num_particles, estimators={s: rloo for s in SITES})
    if name == "disarm":
        return TraceGraph_ELBO(num_particles, estimators={s: ex.DisARM() for s in SITES})
    if name == "relax":
        return TraceGraph_ELBO(num_particles, estimators={s: ex.RELAX() for s in SITES})
    if name == "vimco":  # the importance-weighted bound per image, VIMCO for both sites
        from expectax.infer import IWELBO

        return IWELBO(num_particles, plate="data")
    raise ValueError(f"--elbo must be one of {', '.join(ELBOS)}; got {name!r}.")


def evaluations(name: str, num_particles: int) -> int:
    """Runs of model and guide per gradient estimate (both latent layers counted).

    The score-function ELBOs run the program once per particle. A per-site estimator re-runs
    the program downstream of its site: DisARM twice per pair, RELAX/REBAR three times per
    sample, for each of the two sites, on top of the particles' own runs.
    """
    per_site = {"numpyro": 0, "default": 0, "rloo": 0, "disarm": 2, "relax": 3, "vimco": 0}[name]
    return num_particles * (1 + per_site * len(SITES))


@dataclasses.dataclass(frozen=True)
class SVIConfig:
    """One training run (every field a flag of ``expectax svi``)."""

    elbo: str = "default"
    num_particles: int = 2
    steps: int = 1000
    seed: int = 0
    learning_rate: float = 3e-3
    batch_size: int = 100
    hidden: tuple[int, int] = (32, 16)
    test_samples: int = 100
    train_samples: int = 10
    variance_samples: int = 100


def _setup(config: SVIConfig, train_x: np.ndarray):
    import jax
    import jax.numpy as jnp
    import optax
    from numpyro.infer import SVI

    from expectax.vi.sbn import make_sbn

    mean = np.clip(train_x.mean(axis=0), 0.01, 0.99)
    model, guide = make_sbn(train_x.shape[1], config.hidden, pixel_logits=np.log(mean / (1 - mean)))
    loss = make_elbo(config.elbo, config.num_particles)
    svi = SVI(model, guide, optax.adam(config.learning_rate), loss=loss)
    key = jax.random.key(config.seed)
    init_key, key = jax.random.split(key)
    state = svi.init(init_key, jnp.asarray(train_x[: config.batch_size]), train_x.shape[0])
    return model, guide, loss, svi, state, key


def gradient_variance(
    loss: Any,
    model: Any,
    guide: Any,
    params: dict,
    x: Any,
    num_data: int,
    key: Any,
    repeats: int,
) -> float:
    """Variance of ``∇ loss`` at fixed ``params`` over ``repeats`` keys, summed over coordinates."""
    return _variance(_grad_fn(loss, model, guide, x, num_data), params, key, repeats)


def _grad_fn(loss, model, guide, x, num_data):
    import jax

    return jax.jit(jax.grad(lambda p, k: loss.loss(k, p, model, guide, x, num_data)))


def _variance(grad, params, key, repeats):
    import jax
    import jax.numpy as jnp

    grads = _repeated(grad, repeats)(params, key)
    return float(sum(jnp.var(g, axis=0, ddof=1).sum() for g in jax.tree.leaves(grads)))


@functools.lru_cache(maxsize=8)
def _repeated(grad, repeats):
    """``(params, key) -> repeats`` stacked gradients, jitted once per ``grad`` (a run measures
    the variance at the start and at the end: one compilation, not one per call)."""
    import jax

    def run(params, key):
        return jax.lax.map(lambda k: grad(params, k), jax.random.split(key, repeats))

    return jax.jit(run)


def _bounds(model, guide, params, x, key, k_train, k_test, test_x):
    """(mean training-set ELBO, mean held-out IW bound with ``k_test`` samples) per image."""
    import jax

    from expectax.vi.sbn import log_weights

    @jax.jit
    def bounds(params, x, test_x, key):
        k1, k2 = jax.random.split(key)
        lw_train = log_weights(model, guide, params, x, k1, k_train)
        lw_test = log_weights(model, guide, params, test_x, k2, k_test)
        iw = jax.nn.logsumexp(lw_test, axis=0) - math.log(k_test)
        return lw_train.mean(), iw.mean()

    elbo, iw = bounds(params, x, test_x, key)
    return float(elbo), float(iw)


def train(config: SVIConfig, data: Any, bar: Any = None) -> dict[str, Any]:
    """Train the SBN with ``numpyro.infer.SVI`` and ``config.elbo``; the run's summary row."""
    import jax
    import jax.numpy as jnp

    train_x, test_x = np.asarray(data.train), np.asarray(data.test)
    n, b = train_x.shape[0], config.batch_size
    if b > n:
        raise ValueError(f"--batch-size {b} exceeds the {n} training images; choose at most {n}.")
    task = (  # prints "compiling …": the variance and the first step below compile
        bar.add_task(f"{config.elbo} P={config.num_particles} s{config.seed}", total=config.steps)
        if bar
        else None
    )
    model, guide, loss, svi, state, key = _setup(config, train_x)
    var_key, eval_key = jax.random.split(jax.random.fold_in(key, 1))
    fixed_x = jnp.asarray(train_x[:b])
    params0 = svi.get_params(state)
    grad = _grad_fn(loss, model, guide, fixed_x, n)
    var0 = _variance(grad, params0, var_key, config.variance_samples)
    update = jax.jit(svi.update, static_argnums=(2,))
    rng = np.random.default_rng(config.seed)
    order, pos = rng.permutation(n), 0
    times, losses = [], []
    for _ in range(config.steps):
        if pos + b > n:
            order, pos = rng.permutation(n), 0
        batch = jnp.asarray(train_x[order[pos : pos + b]])
        pos += b
        t0 = time.perf_counter()
        state, value = update(state, batch, n)
        value = float(value)  # blocks until the step is done
        times.append(time.perf_counter() - t0)
        losses.append(value / n)
        if bar is not None:
            bar.advance(task)
    params = svi.get_params(state)
    finite = all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(params))
    train_elbo, test_iw = (
        _bounds(
            model,
            guide,
            params,
            train_x,
            eval_key,
            config.train_samples,
            config.test_samples,
            test_x,
        )
        if finite
        else (math.nan, math.nan)
    )
    var1 = _variance(grad, params, var_key, config.variance_samples) if finite else math.nan
    return {
        "elbo": config.elbo,
        "num_particles": config.num_particles,
        "evaluations": evaluations(config.elbo, config.num_particles),
        "seed": config.seed,
        "steps": config.steps,
        "status": "ok" if finite and math.isfinite(test_iw) else "diverged",
        "train_elbo": train_elbo,
        "test_iw": test_iw,
        "grad_var_init": var0,
        "grad_var_final": var1,
        "ms_per_step": 1e3 * float(np.median(times[1:])) if len(times) > 1 else math.nan,
        "compile_s": times[0],
        "losses": losses,
    }


# --------------------------------------------------------------------------- CLI

SUMMARY_COLUMNS = (
    "elbo",
    "num_particles",
    "evaluations",
    "seed",
    "steps",
    "status",
    "train_elbo",
    "test_iw",
    "grad_var_init",
    "grad_var_final",
    "ms_per_step",
    "compile_s",
)


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``expectax svi`` flags to ``parser``."""
    d = SVIConfig()
    parser.description = (
        "Train a two-layer sigmoid belief network (plain numpyro model and guide) on the "
        "binarised 8×8 digits with numpyro.infer.SVI, once per ELBO: numpyro's TraceGraph_ELBO "
        "and expectax.infer.TraceGraph_ELBO with RLOO (default), DisARM or RELAX per site, or "
        "expectax.infer.IWELBO (VIMCO, the importance-weighted bound per image)."
    )
    parser.add_argument(
        "--elbo",
        nargs="+",
        default=list(ELBOS),
        metavar="NAME",
        choices=list(ELBOS),
        help=f"one or more of {', '.join(ELBOS)} (default: all)",
    )
    pos = runio.positive_int
    parser.add_argument(
        "--num-particles",
        type=pos,
        nargs="+",
        default=[2, 8],
        metavar="P",
        help="particles per estimate, one run per value (default 2 8)",
    )
    runio.add_common_flags(parser, lr=d.learning_rate, steps=d.steps, seeds=(0,), out="runs/svi")
    parser.add_argument(
        "--batch-size", type=pos, default=d.batch_size, help=f"images per step ({d.batch_size})"
    )
    parser.add_argument(
        "--hidden",
        type=pos,
        nargs=2,
        default=list(d.hidden),
        metavar=("H1", "H2"),
        help=f"units of the two latent layers (default {d.hidden[0]} {d.hidden[1]})",
    )
    parser.add_argument(
        "--test-samples",
        type=pos,
        default=d.test_samples,
        help=f"importance samples of the held-out bound (default {d.test_samples})",
    )
    parser.add_argument(
        "--train-samples",
        type=pos,
        default=d.train_samples,
        help=f"guide draws per image for the training-set ELBO (default {d.train_samples})",
    )
    parser.add_argument(
        "--variance-samples",
        type=pos,
        default=d.variance_samples,
        help="gradient estimates for the variance at fixed parameters "
        f"(default {d.variance_samples})",
    )
    return parser


def _error(message: str) -> int:
    return cliutil.fail("expectax svi", message)


#: What ``expectax svi`` writes into ``--out`` (the scheme of every command).
FILES = ("log.csv", "summary.csv", "summary.json")


def _groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for key in dict.fromkeys((r["elbo"], r["num_particles"]) for r in rows):
        mine = [r for r in rows if (r["elbo"], r["num_particles"]) == key]
        ok = [r for r in mine if r["status"] == "ok"]
        g: dict[str, Any] = {
            "elbo": key[0],
            "num_particles": key[1],
            "evaluations": mine[0]["evaluations"],
            "seeds": [r["seed"] for r in mine],
            "diverged": len(mine) - len(ok),
        }
        for col in ("train_elbo", "test_iw", "ms_per_step"):
            g[col] = runio.mean_se([r[col] for r in ok])
        for col in ("grad_var_init", "grad_var_final"):
            g["log10_" + col] = runio.mean_se(
                [math.log10(r[col]) for r in mine if r[col] > 0 and math.isfinite(r[col])]
            )
        out.append(g)
    return out


def summary_markdown(groups: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table (mean ± s.e. over seeds), as in docs/numpyro.md."""

    def fmt(ms: tuple[float, float], spec: str) -> str:
        m, se = ms
        if not math.isfinite(m):
            return "-"
        return f"{m:{spec}}" if not math.isfinite(se) else f"{m:{spec}} ± {se:.2g}"

    lines = [
        "| ELBO | particles | runs / estimate | seeds | train ELBO | test IW bound | "
        "log10 grad var (init) | log10 grad var (trained) | ms / step |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in groups:
        div = f" ({g['diverged']} diverged)" if g["diverged"] else ""
        lines.append(
            f"| {g['elbo']} | {g['num_particles']} | {g['evaluations']} | {len(g['seeds'])}{div} | "
            f"{fmt(g['train_elbo'], '.2f')} | {fmt(g['test_iw'], '.2f')} | "
            f"{fmt(g['log10_grad_var_init'], '.2f')} | {fmt(g['log10_grad_var_final'], '.2f')} | "
            f"{fmt(g['ms_per_step'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run ``expectax svi``; returns the exit status (2 for a usage error)."""
    import json

    from rich.console import Console

    bad = [e for e in args.elbo if e not in ELBOS]
    if bad:
        return _error(
            f"--elbo: unknown {', '.join(map(repr, bad))}; choose from {', '.join(ELBOS)}."
        )
    elbos = list(dict.fromkeys(args.elbo))
    particles = list(dict.fromkeys(args.num_particles))
    seeds = list(args.seed)
    if len(set(seeds)) != len(seeds):
        return _error("--seed lists a seed twice; give each once.")
    if "rloo" in elbos and 1 in particles:
        return _error("--num-particles 1: the leave-one-out baseline (rloo) needs at least 2.")
    labels = [(e, p) for p in particles for e in elbos]
    try:
        out = runio.prepare_out(args.out, FILES, overwrite=args.overwrite)
    except runio.OutputError as e:
        return _error(str(e))
    from expectax.vi.digits import load_digits

    data = load_digits()
    if args.batch_size > data.train.shape[0]:
        return _error(
            f"--batch-size {args.batch_size} exceeds the {data.train.shape[0]} training images."
        )
    rows, log = [], []
    with runio.progress(quiet=args.quiet, console=Console(stderr=True)) as bar:
        for e, p in labels:
            for seed in seeds:
                config = SVIConfig(
                    elbo=e,
                    num_particles=p,
                    steps=args.steps,
                    seed=seed,
                    learning_rate=args.lr,
                    batch_size=args.batch_size,
                    hidden=tuple(args.hidden),
                    test_samples=args.test_samples,
                    train_samples=args.train_samples,
                    variance_samples=args.variance_samples,
                )
                row = train(config, data, bar=bar)
                keys = {"elbo": e, "num_particles": p, "seed": seed}
                log += [
                    keys | {"step": i + 1, "loss_per_image": v} for i, v in enumerate(row["losses"])
                ]
                runio.write_csv(out / "log.csv", log)  # rewritten after each run: each run kept
                rows.append({k: v for k, v in row.items() if k != "losses"})
    runio.write_csv(out / "summary.csv", rows, SUMMARY_COLUMNS)
    groups = _groups(rows)
    summary = {
        "command": "expectax svi " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "",
        "config": {k: v for k, v in vars(args).items() if k not in ("run", "func")},
        "runs": rows,
        "groups": runio.groups_json(groups),
    }
    runio.write_json(out / "summary.json", summary)
    if args.json:
        print(json.dumps(runio.json_safe(summary), indent=2, allow_nan=False))
        return 0
    print(summary_markdown(groups), end="")
    print(f"wrote {', '.join(FILES)} to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m expectax.vi.svi``: the same as ``expectax svi``."""
    import sys

    from expectax.cli import main as expectax_main

    return expectax_main(["svi", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
