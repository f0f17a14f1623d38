"""Discrete estimators: time per gradient estimate against REINFORCE, and the variance table.

Part 1 (timing). Every estimator is ``jax.jit``-compiled end to end (``jax.jit(jax.grad(E))``)
and timed against REINFORCE (``ScoreFunction()``) *with the same number of evaluations of f*
(``estimator.evaluations(N)`` samples: 2N for ARM/DisARM, 3N for REBAR/RELAX), interleaved on
the same machine (the minimum over rounds of the median of a batch of calls). Problems: a
200-unit Bernoulli with a decoder-like f (``Σ tanh(W b)``, W of 64 × 200), and one
Categorical over 10 classes.

Part 2 (``--table``). The variance of one gradient estimate on the REBAR/RELAX/ARM toy
``E[(b − 0.499)²]`` at ``σ(φ) ≈ 0.4`` (φ = −0.4), at equal evaluations of f, with REBAR and
RELAX before and after training their control-variate parameters; and the bias of the
Gumbel-softmax relaxation against the temperature. Markdown, as in docs/discrete.md.

Run:  python benchmarks/discrete.py [--quick] [--table] [--rounds R]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import expectax as ex
from expectax.estimators.arm import ARM, DisARM
from expectax.estimators.multi_sample import VIMCO, SumAndSample, UnorderedSet
from expectax.estimators.relax import REBAR, RELAX, fit_control_variate
from expectax.estimators.relaxed import GumbelSoftmax, StraightThrough
from expectax.problems import get_problem

try:
    from expectax.baselines import LeaveOneOut

    RLOO = ex.ScoreFunction(baseline=LeaveOneOut())
except ImportError:  # pragma: no cover - baselines not there yet
    RLOO = None


def bench(fn, args, calls: int) -> float:
    """Median seconds per call over ``calls`` calls (already compiled)."""
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_pair(f, dist_fn, params, est, n, rounds, calls):
    """Seconds per estimate of ``est`` with N and of REINFORCE with evaluations(N) samples."""
    fast = jax.jit(jax.grad(ex.expectation(f, dist_fn, estimator=est, num_samples=n)))
    m = est.evaluations(n)
    ref = jax.jit(jax.grad(ex.expectation(f, dist_fn, estimator=ex.ScoreFunction(), num_samples=m)))
    key = jax.random.key(0)
    jax.block_until_ready(fast(params, key))
    jax.block_until_ready(ref(params, key))
    t_est, t_ref = [], []
    for r in range(rounds):
        k = jax.random.key(r)
        t_est.append(bench(fast, (params, k), calls))
        t_ref.append(bench(ref, (params, k), calls))
    return min(t_est), min(t_ref), m


def timing(quick: bool, rounds: int) -> None:
    calls = 5 if quick else 30
    d, h = 200, 64
    w = jax.random.normal(jax.random.key(1), (h, d)) / np.sqrt(d)

    def f_bern(params, b):
        return jnp.sum(jnp.tanh(w @ b + params["bias"]))

    def q_bern(params):
        return dist.Bernoulli(logits=params["logits"]).to_event(1)

    p_bern = {"logits": jnp.linspace(-1.0, 1.0, d), "bias": jnp.zeros(h)}
    cat = get_problem("categorical-nonlinear", num_categories=10)
    n = 8
    rows = []
    bern = [
        ARM(),
        DisARM(),
        REBAR(),
        RELAX.create(jax.random.key(0), d),
        GumbelSoftmax(),
        GumbelSoftmax(straight_through=True),
        StraightThrough(),
        VIMCO(),
    ]
    if RLOO is not None:
        bern.insert(0, RLOO)
    for est in bern:
        rows.append(
            (
                f"Bernoulli d={d}",
                est.name,
                n,
                *time_pair(f_bern, q_bern, p_bern, est, n, rounds, calls),
            )
        )
    for est in [DisARM(), UnorderedSet(), SumAndSample(), GumbelSoftmax(), StraightThrough()]:
        k = 4
        rows.append(
            (
                "Categorical K=10",
                est.name,
                k,
                *time_pair(cat.f, cat.dist_fn, cat.params, est, k, rounds, calls),
            )
        )
    print(
        f"# time per jitted gradient estimate ({platform.processor() or platform.machine()}, "
        f"jax {jax.__version__}, {jax.devices()[0].platform})\n"
    )
    print("| problem | estimator | N | f evals | time (µs) | REINFORCE same evals (µs) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for prob, name, nn, t_est, t_ref, m in rows:
        print(
            f"| {prob} | {name} | {nn} | {m} | {t_est * 1e6:.0f} | {t_ref * 1e6:.0f} | "
            f"{t_est / t_ref:.2f} |"
        )


def variance_table(quick: bool) -> None:
    repeats = 4000 if quick else 20000
    prob = get_problem("bernoulli-toy-0.499", logit=-0.4)
    p = prob.params
    exact = float(prob.exact_grad(p)["logit"])
    keys = jax.random.split(jax.random.key(2), repeats)

    def moments(est, n):
        E = ex.expectation(prob.f, prob.dist_fn, estimator=est, num_samples=n)
        g = np.asarray(
            jax.jit(jax.vmap(jax.grad(E), in_axes=(None, 0)))(p, keys)["logit"], dtype=np.float64
        )
        return g.mean(), g.var(), g.std() / np.sqrt(repeats)

    steps = 200 if quick else 1000
    rebar = fit_control_variate(REBAR(), prob.f, prob.dist_fn, p, jax.random.key(5), 1, steps=steps)
    relax = fit_control_variate(
        RELAX.create(jax.random.key(0), 1),
        prob.f,
        prob.dist_fn,
        p,
        jax.random.key(5),
        1,
        steps=steps,
    )
    rows = [
        ("REINFORCE", ex.ScoreFunction(), 1),
        ("REINFORCE", ex.ScoreFunction(), 2),
        ("REINFORCE", ex.ScoreFunction(), 3),
    ]
    if RLOO is not None:
        rows += [("RLOO", RLOO, 2), ("RLOO", RLOO, 3)]
    rows += [
        ("ARM (1 pair)", ARM(), 1),
        ("DisARM (1 pair)", DisARM(), 1),
        ("REBAR, default (λ=0.5, η=1)", REBAR(), 1),
        (f"REBAR, trained ({steps} Adam steps)", rebar, 1),
        ("RELAX, untrained (zero network)", RELAX(), 1),
        (f"RELAX, trained ({steps} Adam steps)", relax, 1),
    ]
    print(f"\n# E[(b − 0.499)²], φ = −0.4, exact gradient {exact:.3e}; {repeats} estimates each\n")
    print("| estimator | N | f evals | mean | variance | |mean − exact| / SE |")
    print("|---|---|---|---|---|---|")
    for label, est, n in rows:
        mean, var, se = moments(est, n)
        print(
            f"| {label} | {n} | {est.evaluations(n)} | {mean:.2e} | {var:.3e} | "
            f"{abs(mean - exact) / se:.1f} |"
        )
    print(
        f"\nTrained REBAR: λ = {float(jnp.exp(rebar.log_temperature)):.3f}, "
        f"η = {float(rebar.eta):.3f}; RELAX: λ = {float(jnp.exp(relax.log_temperature)):.3f}, "
        f"η = {float(relax.eta):.3f}."
    )

    print(
        "\n# Gumbel-softmax bias against temperature (N = 8, "
        f"{repeats // 4} estimates; ‖mean − exact‖ over the logits, ± its SE)\n"
    )
    print("| problem | τ = 2 | τ = 1 | τ = 0.5 | τ = 0.2 | τ = 0.1 |")
    print("|---|---|---|---|---|---|")
    for name in ("bernoulli-nonlinear", "categorical-nonlinear"):
        pr = get_problem(name)
        ex_g = np.asarray(pr.exact_grad(pr.params)["logits"])
        ks = jax.random.split(jax.random.key(3), repeats // 4)

        @jax.jit
        def grads(est, pr=pr, ks=ks):
            E = ex.expectation(pr.f, pr.dist_fn, estimator=est, num_samples=8)
            return jax.vmap(jax.grad(E), in_axes=(None, 0))(pr.params, ks)["logits"]

        cells = []
        for tau in (2.0, 1.0, 0.5, 0.2, 0.1):
            g = np.asarray(grads(GumbelSoftmax(jnp.asarray(tau))), dtype=np.float64)
            bias = np.linalg.norm(g.mean(0) - ex_g)
            se = np.linalg.norm(g.std(0) / np.sqrt(g.shape[0]))
            cells.append(f"{bias:.4f} ± {se:.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and estimates")
    parser.add_argument("--table", action="store_true", help="also print the variance tables")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    args = parser.parse_args()
    timing(args.quick, 2 if args.quick else args.rounds)
    if args.table:
        variance_table(args.quick)


if __name__ == "__main__":
    main()
