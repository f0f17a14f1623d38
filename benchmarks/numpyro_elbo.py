"""expectax.infer.TraceGraph_ELBO against numpyro.infer.TraceGraph_ELBO, in one process.

The model is the two-layer sigmoid belief network of :mod:`expectax.vi.sbn` (plain numpyro:
64 binary pixels → 32 → 16 Bernoulli latents, a plate over a minibatch of 100 of the
binarised digits, scaled to the 1,500 training images). Two measurements:

1. **Gradient variance at fixed parameters**: ``R`` gradient estimates of the loss (``−ELBO``)
   with independent keys on one fixed minibatch, their per-coordinate variance summed over
   all coordinates ("all") and over the guide's parameters only ("guide", where the
   estimators differ), at initialisation and after ``--train-steps`` of SVI (adam, expectax's
   default ELBO with 8 particles). Configurations are compared at an **equal number of runs
   of model + guide per estimate** ("evals"): a particle is one run; DisARM re-runs the
   program twice per pair for each of the two sites, RELAX three times per sample
   (``evals = P (1 + 2·2)`` and ``P (1 + 3·2)``). The ratio column divides numpyro's
   variance at the same evals by the row's. The SE of a summed variance is the standard
   error of the per-repeat summed squared deviations.
2. **Time per step**: a jitted ``svi.update`` per configuration at equal particles
   (``P = 2, 8``), after warm-up; interleaved rounds (each configuration runs a batch of
   steps per round, the rounds alternate so load on a shared machine hits all alike); the
   minimum over rounds of the median step time. Compile time (first call) is reported apart.

Run::

    python benchmarks/numpyro_elbo.py              # the full table (~10 min on 2 busy cores)
    python benchmarks/numpyro_elbo.py --quick      # smaller R, fewer rounds
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI

from expectax.vi.digits import load_digits
from expectax.vi.sbn import make_sbn
from expectax.vi.svi import evaluations, make_elbo


def setup(hidden=(32, 16), batch=100, seed=0):
    data = load_digits()
    train_x = np.asarray(data.train)
    mean = np.clip(train_x.mean(axis=0), 0.01, 0.99)
    model, guide = make_sbn(64, hidden, pixel_logits=np.log(mean / (1 - mean)))
    return model, guide, train_x


def trained_params(model, guide, train_x, steps, batch, seed):
    svi = SVI(model, guide, optax.adam(3e-3), loss=make_elbo("rloo", 8))
    n = train_x.shape[0]
    state = svi.init(jax.random.key(seed), jnp.asarray(train_x[:batch]), n)
    params0 = svi.get_params(state)
    update = jax.jit(svi.update, static_argnums=(2,))
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(n, batch, replace=False)
        state, _ = update(state, jnp.asarray(train_x[idx]), n)
    return params0, svi.get_params(state)


def summed_variance(grads, keys):
    """(total variance, its SE) over the leaves named by ``keys``; grads leaves (R, ...)."""
    dev = 0.0
    r = None
    for name in keys:
        g = np.asarray(grads[name], np.float64).reshape(grads[name].shape[0], -1)
        r = g.shape[0]
        dev = dev + ((g - g.mean(axis=0)) ** 2).sum(axis=1)
    dev = dev * r / (r - 1)
    return float(dev.mean()), float(dev.std(ddof=1) / math.sqrt(r))


def variance_table(model, guide, x, n, param_sets, configs, repeats, seed):
    rows = []
    for name, p in configs:
        loss = make_elbo(name, p)
        grad = jax.jit(
            jax.value_and_grad(lambda prm, k, loss=loss: loss.loss(k, prm, model, guide, x, n))
        )
        row = {"elbo": name, "P": p, "evals": evaluations(name, p)}
        for label, params in param_sets.items():
            keys = jax.random.split(jax.random.key(seed + 1), repeats)
            values, grads = jax.lax.map(lambda k, grad=grad, params=params: grad(params, k), keys)
            v = np.asarray(values, np.float64)
            row[f"{label}_loss"] = (float(v.mean()), float(v.std(ddof=1) / math.sqrt(repeats)))
            allk = sorted(grads)
            row[f"{label}_all"] = summed_variance(grads, allk)
            row[f"{label}_guide"] = summed_variance(grads, [k for k in allk if k.startswith("q_")])
        rows.append(row)
    return rows


def time_table(model, guide, train_x, configs, batch, rounds, steps_per_round, seed):
    n = train_x.shape[0]
    x = jnp.asarray(train_x[:batch])
    runners = {}
    for name, p in configs:
        svi = SVI(model, guide, optax.adam(1e-3), loss=make_elbo(name, p))
        state = svi.init(jax.random.key(seed), x, n)
        update = jax.jit(svi.update, static_argnums=(2,))
        t0 = time.perf_counter()
        state, v = update(state, x, n)
        jax.block_until_ready(v)
        compile_s = time.perf_counter() - t0
        runners[(name, p)] = {"update": update, "state": state, "compile": compile_s, "best": []}
    for _ in range(rounds):
        for r in runners.values():
            ts = []
            state = r["state"]
            for _ in range(steps_per_round):
                t0 = time.perf_counter()
                state, v = r["update"](state, x, n)
                jax.block_until_ready(v)
                ts.append(time.perf_counter() - t0)
            r["state"] = state
            r["best"].append(float(np.median(ts)))
    return {k: (min(r["best"]), r["compile"]) for k, r in runners.items()}


def _profile_elbo(name, p):
    """``make_elbo``, plus ``expectax-sf``: expectax's ELBO with numpyro's own estimator (the
    plain score function at both sites, no baseline), to separate the engine's cost from the
    baseline's."""
    if name != "expectax-sf":
        return make_elbo(name, p)
    import expectax as ex
    from expectax.infer import TraceGraph_ELBO

    return TraceGraph_ELBO(p, estimators={"z1": ex.ScoreFunction(), "z2": ex.ScoreFunction()})


def profile(model, guide, train_x, batch, particles, rounds=9, calls=50):
    """Where the time of one step goes, numpyro vs expectax's ELBO at equal particles.

    Trace (Python, the handlers) and XLA compile time of ``jax.grad(loss)``; the run time of
    the loss alone, of its gradient and of a whole ``svi.update`` (interleaved rounds, minimum
    over rounds of the median over ``calls``); the optimised XLA program's size and flops.
    """
    n = train_x.shape[0]
    x = jnp.asarray(train_x[:batch])
    svi0 = SVI(model, guide, optax.adam(1e-3), loss=make_elbo("numpyro", 2))
    params = svi0.get_params(svi0.init(jax.random.key(0), x, n))
    fns, info = {}, {}
    for p in particles:
        for name in ("numpyro", "rloo", "expectax-sf"):
            loss = _profile_elbo(name, p)

            def f(prm, k, loss=loss):
                return loss.loss(k, prm, model, guide, x, n)

            g = jax.jit(jax.grad(f))
            t0 = time.perf_counter()
            lowered = g.lower(params, jax.random.key(0))
            t1 = time.perf_counter()
            compiled = lowered.compile()
            t2 = time.perf_counter()
            text = compiled.as_text()
            ops = sum(1 for line in text.splitlines() if " = " in line)
            big = f"f32[{p},{batch},"  # exponentials over particles × batch × units arrays
            exps = sum(1 for line in text.splitlines() if " exponential(" in line and big in line)
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            svi = SVI(model, guide, optax.adam(1e-3), loss=loss)
            state = svi.init(jax.random.key(0), x, n)
            update = jax.jit(svi.update, static_argnums=(2,))
            fns[(name, p)] = {
                "loss": (jax.jit(f), lambda fn, i: fn(params, jax.random.key(i))),
                "grad": (g, lambda fn, i: fn(params, jax.random.key(i))),
                "update": (update, lambda fn, i, state=state: fn(state, x, n)[1]),
            }
            for fn, call in fns[(name, p)].values():
                jax.block_until_ready(call(fn, 0))
            info[(name, p)] = (t1 - t0, t2 - t1, ops, exps, cost.get("flops", float("nan")))
    best = {(k, part): [] for k in fns for part in ("loss", "grad", "update")}
    for _ in range(rounds):
        for k, parts in fns.items():
            for part, (fn, call) in parts.items():
                ts = []
                for i in range(calls):
                    t = time.perf_counter()
                    jax.block_until_ready(call(fn, i))
                    ts.append(time.perf_counter() - t)
                best[(k, part)].append(float(np.median(ts)))
    print(f"\nProfile (min over {rounds} interleaved rounds of the median of {calls} calls)")
    print(
        "| ELBO | P | trace s | compile s | loss ms | grad ms | update ms | × numpyro (update) "
        "| XLA ops | exp ops (P × B × units) | flops |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (name, p), (tr, co, ops, exps, fl) in info.items():
        t = {part: 1e3 * min(best[((name, p), part)]) for part in ("loss", "grad", "update")}
        ref = 1e3 * min(best[(("numpyro", p), "update")])
        print(
            f"| {name} | {p} | {tr:.2f} | {co:.2f} | {t['loss']:.3f} | {t['grad']:.3f} | "
            f"{t['update']:.3f} | {t['update'] / ref:.2f} | {ops} | {exps} | {fl:.3g} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=200, help="gradient estimates per variance")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps-per-round", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="only the profile of numpyro vs rloo")
    ap.add_argument("--time-only", action="store_true", help="only the time-per-step table")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.train_steps, args.rounds, args.steps_per_round = 50, 50, 3, 10
    batch = 100
    model, guide, train_x = setup(batch=batch)
    n = train_x.shape[0]
    if args.profile:
        profile(model, guide, train_x, batch, (2, 8))
        return
    if not args.time_only:
        params0, params1 = trained_params(model, guide, train_x, args.train_steps, batch, args.seed)
        x = jnp.asarray(train_x[:batch])
        # equal evals: numpyro and rloo at P = 2, 8, 10, 14, 40, 56; DisARM at P = 2, 8 (10, 40
        # evals); RELAX at P = 2, 8 (14, 56 evals)
        budgets = (2, 8, 10, 14, 40, 56)
        configs = [("numpyro", p) for p in budgets] + [("rloo", p) for p in budgets]
        configs += [("disarm", 2), ("disarm", 8), ("relax", 2), ("relax", 8)]
        t0 = time.perf_counter()
        rows = variance_table(
            model,
            guide,
            x,
            n,
            {"init": params0, "trained": params1},
            configs,
            args.repeats,
            args.seed,
        )
        numpyro_at = {r["evals"]: r for r in rows if r["elbo"] == "numpyro"}
        print(
            f"\nGradient variance of -ELBO, SBN 64-32-16 on digits (batch {batch} of {n}), "
            f"R = {args.repeats} estimates, seed {args.seed}; "
            f"trained = {args.train_steps} SVI steps."
        )
        print(
            "| ELBO | P | evals | var all (init) | ratio | var guide (init) | ratio "
            "| var all (trained) | ratio | var guide (trained) | ratio |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            ref = numpyro_at.get(r["evals"])
            cells = []
            for col in ("init_all", "init_guide", "trained_all", "trained_guide"):
                m, se = r[col]
                cells.append(f"{m:.3g} ± {se / m:.0%}" if m > 0 else "0")
                cells.append(f"{ref[col][0] / m:.0f}×" if ref is not None and m > 0 else "-")
            print(f"| {r['elbo']} | {r['P']} | {r['evals']} | " + " | ".join(cells) + " |")
        print(f"(variance measurements: {time.perf_counter() - t0:.0f} s)")
        print("\nSame objective: mean loss (-ELBO of the minibatch, scaled to the data set) ± SE")
        print("| ELBO | P | loss (init) | loss (trained) |")
        print("|---|---:|---:|---:|")
        for r in rows:
            cells = [f"{r[c][0]:.1f} ± {r[c][1]:.1f}" for c in ("init_loss", "trained_loss")]
            print(f"| {r['elbo']} | {r['P']} | " + " | ".join(cells) + " |")
    tconfigs = [(e, p) for p in (2, 8) for e in ("numpyro", "rloo", "disarm", "relax")]
    times = time_table(
        model, guide, train_x, tconfigs, batch, args.rounds, args.steps_per_round, args.seed
    )
    print(
        f"\nTime per jitted svi.update (min over {args.rounds} interleaved rounds of the median of "
        f"{args.steps_per_round} steps), equal particles"
    )
    print("| ELBO | P | evals | ms / step | × numpyro | compile s |")
    print("|---|---:|---:|---:|---:|---:|")
    for (e, p), (t, c) in times.items():
        ratio = t / times[("numpyro", p)][0]
        print(f"| {e} | {p} | {evaluations(e, p)} | {1e3 * t:.2f} | {ratio:.2f} | {c:.1f} |")


if __name__ == "__main__":
    main()
