"""Issue 18's minimal case: a nearly deterministic Categorical, trained with Adam.

One site ``z ~ Categorical(logits=u)``, cost ``c[z]`` with ``c = (72, 3, 40) + offset``
(category 1 is best), start ``p = (1 − 2e-4, 1e-4, 1e-4)``, 4 particles, Adam(0.05): the step
at which ``P(z = 1)`` first exceeds 0.5, per seed, for expectax's default baseline
(``WeightedLeaveOneOut``), no baseline (numpyro's estimator) and the plain leave-one-out
baseline; and, for reference, the exact sum over ``z``'s three values (``SumAndSample`` with
``infer={"num_samples": 3}``, one particle: three evaluations of the cost where the others make
four) and Adam on the exact gradient. All are unbiased; they differ in how Adam trains with
them. ``offset`` shifts every cost by a constant (the expected gradient is unchanged): an
estimator whose training depends on it is not offset-invariant.

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
#: name -> (per-site estimators, particles, the site's ``infer``)
CONFIGS = {
    "default (WeightedLeaveOneOut)": (None, 4, {}),
    "WeightedLeaveOneOut(share=1)": (
        {"z": ex.ScoreFunction(baseline=baselines.WeightedLeaveOneOut(share=1.0))},
        4,
        {},
    ),
    "no baseline (numpyro)": ({"z": ex.ScoreFunction()}, 4, {}),
    "LeaveOneOut": ({"z": ex.ScoreFunction(baseline=baselines.LeaveOneOut())}, 4, {}),
    "exact sum over z (SumAndSample, 3 draws, 1 particle)": (
        {"z": ex.SumAndSample()},
        1,
        {"num_samples": 3},
    ),
}


def steps_to_best(estimators, offset, seeds, steps, particles=4, lr=0.05, infer=None):
    def program(u):
        z = numpyro.sample("z", dist.Categorical(logits=u), infer=infer or {})
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


def exact_steps_to_best(offset, steps, lr=0.05):
    """The same training on the exact gradient of ``E[c[z] + offset]``: no noise at all."""
    opt = optax.adam(lr)

    def step(carry, _):
        u, st, hit, t = carry
        upd, st = opt.update(jax.grad(lambda v: jax.nn.softmax(v) @ (COST + offset))(u), st)
        u = u + upd
        hit = jnp.where((hit > steps) & (jax.nn.softmax(u)[1] > 0.5), t + 1, hit)
        return (u, st, hit, t + 1), None

    u0 = jnp.log(P0)
    init = (u0, opt.init(u0), jnp.array(steps + 1), jnp.array(0))
    (_, _, hit, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(init)
    return int(hit)


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
        for name, (est, particles, infer) in CONFIGS.items():
            hit = steps_to_best(est, offset, seeds, args.steps, particles, infer=infer)
            ok = hit[hit <= args.steps]
            spread = f"{ok.min()} / {int(np.median(ok))} / {ok.max()}" if ok.size else "–"
            print(f"| {offset:+g} | {name} | {ok.size}/{len(seeds)} | {spread} |", flush=True)
        hit = exact_steps_to_best(offset, args.steps)
        reached = f"{hit} (deterministic)" if hit <= args.steps else "–"
        print(f"| {offset:+g} | Adam on the exact gradient | – | {reached} |", flush=True)


if __name__ == "__main__":
    main()
