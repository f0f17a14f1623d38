"""Issue 18's minimal case: a nearly deterministic Categorical, trained with Adam.

One site ``z ~ Categorical(logits=u)``, cost ``c[z]`` with ``c = (72, 3, 40) + offset``
(category 1 is best), start ``p = (1 − 2e-4, 1e-4, 1e-4)``, 4 particles, Adam(0.05): the step
at which ``P(z = 1)`` first exceeds 0.5, per seed, for expectax's default baseline
(``WeightedLeaveOneOut``), no baseline (numpyro's estimator) and the plain leave-one-out
baseline. All three are unbiased; they differ in how Adam trains with them. ``offset`` shifts
every cost by a constant (the expected gradient is unchanged): an estimator whose training
depends on it is not offset-invariant.

Run::

    python benchmarks/minimal_categorical.py             # seeds 0-19, offsets 0, +100, -72
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

import expectax as ex
from expectax import baselines

COST = jnp.array([72.0, 3.0, 40.0])
P0 = jnp.array([1 - 2e-4, 1e-4, 1e-4])
CONFIGS = {
    "default (WeightedLeaveOneOut)": None,
    "WeightedLeaveOneOut(share=1)": {
        "z": ex.ScoreFunction(baseline=baselines.WeightedLeaveOneOut(share=1.0))
    },
    "no baseline (numpyro)": {"z": ex.ScoreFunction()},
    "LeaveOneOut": {"z": ex.ScoreFunction(baseline=baselines.LeaveOneOut())},
}


def steps_to_best(estimators, offset, seeds, steps, particles=4, lr=0.05):
    def program(u):
        z = numpyro.sample("z", dist.Categorical(logits=u))
        return COST[z] + offset

    E = ex.program_expectation(program, num_particles=particles, estimators=estimators)
    opt = optax.adam(lr)

    def one(key):
        def step(carry, k):
            u, st, hit, t = carry
            upd, st = opt.update(jax.grad(E)(u, k), st)
            u = u + upd
            hit = jnp.where((hit > steps) & (jax.nn.softmax(u)[1] > 0.5), t + 1, hit)
            return (u, st, hit, t + 1), None

        u0 = jnp.log(P0)
        init = (u0, opt.init(u0), jnp.array(steps + 1), jnp.array(0))
        (_, _, hit, _), _ = jax.lax.scan(step, init, jax.random.split(key, steps))
        return hit

    keys = jax.vmap(lambda s: jax.random.key(s))(jnp.asarray(seeds))
    return np.asarray(jax.jit(jax.vmap(one))(keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs=2, default=(0, 20), help="range of seeds")
    ap.add_argument("--steps", type=int, default=1000, help="Adam steps per run")
    ap.add_argument("--offsets", type=float, nargs="+", default=(0.0, 100.0, -72.0))
    args = ap.parse_args()
    seeds = list(range(*args.seeds))
    print(f"seeds {seeds[0]}-{seeds[-1]}, {args.steps} steps, 4 particles, Adam(0.05)\n")
    print("| cost offset | estimator | reached P(best) > 0.5 | steps: min / median / max |")
    print("|---:|---|---:|---|")
    for offset in args.offsets:
        for name, est in CONFIGS.items():
            hit = steps_to_best(est, offset, seeds, args.steps)
            ok = hit[hit <= args.steps]
            spread = f"{ok.min()} / {int(np.median(ok))} / {ok.max()}" if ok.size else "–"
            print(f"| {offset:+g} | {name} | {ok.size}/{len(seeds)} | {spread} |", flush=True)


if __name__ == "__main__":
    main()
