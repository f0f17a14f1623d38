"""An HMM written with numpyro's ``scan`` and with a Python loop: bias, variance and time.

The 3-state HMM of ``tests/test_scan.py`` (Gaussian emissions, a structured Categorical guide
``q(z_t | z_{t−1})``). At T = 4 the −ELBO's gradient is exact by enumerating the 81 paths, so
the table gives, per form and ELBO, the largest |z-score| of the mean gradient against it (R
estimates, bias visible where |z| ≫ 5); at T = 4 and T = 60 the gradient variance summed over
the guide's coordinates (R estimates on the same keys for every row) and the time per gradient
(jitted, after compilation, min of 5 repeats). Forms: ``loop`` (one site per step,
``z_0 … z_{T−1}``) and ``scan`` (one scanned site ``z``).

expectax gives unbiased gradients for both forms. In the loop form provenance finds that step
t's score multiplies only the costs of steps s ≥ t; in the scan form expectax does the same
across time (a cost of step s multiplies the scores of steps t ≤ s, a cumulative sum) where
it can prove it (docs/programs.md). The row ``expectax, all-downstream`` is the scan form
without it (every cost downstream of every step, as before), for comparison. The scanned site
gets the plain leave-one-out baseline (``WeightedLeaveOneOut`` weights one discrete variable
per element, not a sequence) where the loop form's sites get the weighted one; the row
``expectax, plain leave-one-out`` gives the loop form the scan form's baseline.

Run::

    python benchmarks/scan_hmm.py            # R = 4000 estimates, seed 0, K = 1 and 4
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.control_flow import scan
from numpyro.infer import TraceGraph_ELBO as NumpyroTraceGraph

from expectax import ScoreFunction, infer, programs
from expectax.baselines import LeaveOneOut

TRANS = jnp.array([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.25, 0.25, 0.5]])
MU = jnp.array([-1.0, 0.5, 2.0])


def make(T):
    def scan_model(obs):
        def step(z_prev, x):
            z = numpyro.sample("z", dist.Categorical(probs=TRANS[z_prev]))
            numpyro.sample("x", dist.Normal(MU[z], 1.0), obs=x)
            return z, None

        scan(step, 0, obs)

    def scan_guide(obs):
        L = numpyro.param("L", jnp.zeros((T, 3)))
        B = numpyro.param("B", jnp.zeros((3, 3)))

        def step(z_prev, t):
            return numpyro.sample("z", dist.Categorical(logits=L[t] + B[z_prev])), None

        scan(step, 0, jnp.arange(T))

    def loop_model(obs):
        z = 0
        for t in range(T):
            z = numpyro.sample(f"z_{t}", dist.Categorical(probs=TRANS[z]))
            numpyro.sample(f"x_{t}", dist.Normal(MU[z], 1.0), obs=obs[t])

    def loop_guide(obs):
        L = numpyro.param("L", jnp.zeros((T, 3)))
        B = numpyro.param("B", jnp.zeros((3, 3)))
        z = 0
        for t in range(T):
            z = numpyro.sample(f"z_{t}", dist.Categorical(logits=L[t] + B[z]))

    return {"scan": (scan_model, scan_guide), "loop": (loop_model, loop_guide)}


def exact_loss(params, obs):
    T = obs.shape[0]
    total = 0.0
    for path in itertools.product(range(3), repeat=T):
        log_q = log_p = 0.0
        prev = 0
        for t, z in enumerate(path):
            log_q = log_q + jax.nn.log_softmax(params["L"][t] + params["B"][prev])[z]
            log_p = log_p + jnp.log(TRANS[prev, z]) + dist.Normal(MU[z], 1.0).log_prob(obs[t])
            prev = z
        total = total + jnp.exp(log_q) * (log_p - log_q)
    return -total


def params_for(T, seed):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"L": 0.5 * jax.random.normal(k1, (T, 3)), "B": 0.5 * jax.random.normal(k2, (3, 3))}


def grad_fn(elbo, model, guide, obs):
    return jax.jit(jax.grad(lambda p, k: elbo.loss(k, p, model, guide, obs)))


def per_gradient_time(g, params, key, repeats=5, calls=20):
    jax.block_until_ready(g(params, key))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            out = g(params, key)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / calls)
    return best


@contextlib.contextmanager
def all_downstream():
    """expectax's scan form without Rao-Blackwellisation across time (the form before it)."""
    old = programs._Engine.causal_scans
    programs._Engine.causal_scans = False
    try:
        yield
    finally:
        programs._Engine.causal_scans = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=4000, help="gradient estimates per cell")
    ap.add_argument("--particles", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lengths", type=int, nargs="+", default=[4, 60])
    ap.add_argument("--out", default="benchmarks/results/scan_hmm.md")
    args = ap.parse_args()
    lines = [
        f"Command: `python {' '.join(sys.argv)}` (jax {jax.__version__}, CPU; seed "
        f"{args.seed}: observations key seed+1, parameters key seed, estimates keys "
        f"split(key(seed+2), {args.repeats}), the same for every row)",
        "",
        "| T | K | form | ELBO | max abs z vs exact | grad variance (sum) | ms / gradient |",
        "|---:|---:|---|---|---:|---:|---:|",
    ]
    for T in args.lengths:
        obs = jax.random.normal(jax.random.key(args.seed + 1), (T,)) + 0.5
        params = params_for(T, args.seed)
        exact = jax.grad(exact_loss)(params, obs) if T <= 6 else None
        for k in args.particles:
            for form, (model, guide) in make(T).items():
                ours = infer.TraceGraph_ELBO(k)
                rows = [("expectax", ours, contextlib.nullcontext)]
                if form == "scan":
                    rows.append(("expectax, all-downstream", ours, all_downstream))
                elif k > 1:  # the scanned site's baseline: the plain leave-one-out mean
                    plain = {f"z_{t}": ScoreFunction(baseline=LeaveOneOut()) for t in range(T)}
                    rows.append(
                        (
                            "expectax, plain leave-one-out",
                            infer.TraceGraph_ELBO(k, estimators=plain),
                            contextlib.nullcontext,
                        )
                    )
                rows.append(("numpyro", NumpyroTraceGraph(k), contextlib.nullcontext))
                for name, elbo, mode in rows:
                    with mode():
                        g = grad_fn(elbo, model, guide, obs)
                        ms = per_gradient_time(g, params, jax.random.key(7)) * 1e3
                        keys = jax.random.split(jax.random.key(args.seed + 2), args.repeats)
                        gs = jax.jit(jax.vmap(g, in_axes=(None, 0)))(params, keys)
                    var = sum(float(leaf.var(0).sum()) for leaf in jax.tree_util.tree_leaves(gs))
                    zmax = "–"
                    if exact is not None:
                        zs = []
                        for leaf, ex_leaf in zip(
                            jax.tree_util.tree_leaves(gs),
                            jax.tree_util.tree_leaves(exact),
                            strict=True,
                        ):
                            se = np.asarray(leaf.std(0)) / np.sqrt(args.repeats)
                            zs.append(np.abs(np.asarray(leaf.mean(0)) - np.asarray(ex_leaf)) / se)
                        zmax = f"{max(float(z.max()) for z in zs):.1f}"
                    row = f"| {T} | {k} | {form} | {name} | {zmax} | {var:.4g} | {ms:.2f} |"
                    print(row, flush=True)
                    lines.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
