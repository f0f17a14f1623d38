"""An HMM written with numpyro's ``scan`` and with a Python loop: bias, variance and time.

The 3-state HMM of ``tests/test_scan.py`` (Gaussian emissions, a structured Categorical guide
``q(z_t | z_{t−1})``). At T = 4 the −ELBO's gradient is exact by enumerating the 81 paths, so
the table gives, per form and ELBO, the largest |z-score| of the mean gradient against it (R
estimates, bias visible where |z| ≫ 5), the gradient variance summed over the guide's
coordinates, and the time per gradient (jitted, after compilation, min of 5 repeats). At
T = 60 (too many paths to enumerate) it gives the time per gradient. Forms: ``loop`` (one site
per step, ``z_0 … z_{T−1}``) and ``scan`` (one scanned site ``z``).

expectax gives unbiased gradients for both forms; in the scan form every cost counts as
downstream of every step (provenance cannot see inside ``lax.scan``), so its variance is
higher than the loop form's, where each step's score multiplies only the costs after it.

Run::

    python benchmarks/scan_hmm.py            # R = 4000 estimates, seed 0
"""

from __future__ import annotations

import argparse
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

from expectax import infer

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=4000, help="gradient estimates per cell")
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/scan_hmm.md")
    args = ap.parse_args()
    k = args.particles
    lines = [
        f"Command: `python {' '.join(sys.argv)}` (jax {jax.__version__}, CPU; seed "
        f"{args.seed}; {k} particles)",
        "",
        "| T | form | ELBO | max abs z vs exact | grad variance (sum) | ms / gradient |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for T in (4, 60):
        obs = jax.random.normal(jax.random.key(args.seed + 1), (T,)) + 0.5
        params = params_for(T, args.seed)
        exact = jax.grad(exact_loss)(params, obs) if T <= 6 else None
        for form, (model, guide) in make(T).items():
            for name, elbo in (
                ("expectax", infer.TraceGraph_ELBO(k)),
                ("numpyro", NumpyroTraceGraph(k)),
            ):
                g = grad_fn(elbo, model, guide, obs)
                ms = per_gradient_time(g, params, jax.random.key(7)) * 1e3
                zmax = var = "–"
                if exact is not None:
                    keys = jax.random.split(jax.random.key(args.seed + 2), args.repeats)
                    gs = jax.jit(jax.vmap(g, in_axes=(None, 0)))(params, keys)
                    zs, v = [], 0.0
                    for leaf, ex_leaf in zip(
                        jax.tree_util.tree_leaves(gs), jax.tree_util.tree_leaves(exact), strict=True
                    ):
                        se = np.asarray(leaf.std(0)) / np.sqrt(args.repeats)
                        zs.append(np.abs(np.asarray(leaf.mean(0)) - np.asarray(ex_leaf)) / se)
                        v += float(leaf.var(0).sum())
                    zmax, var = f"{max(float(z.max()) for z in zs):.1f}", f"{v:.4g}"
                row = f"| {T} | {form} | {name} | {zmax} | {var} | {ms:.2f} |"
                print(row, flush=True)
                lines.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
