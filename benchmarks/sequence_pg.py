"""Sequence policy gradients: bias and variance of each variant, measured exactly.

On the enumerable tiny autoregressive policy (``expectax.problems.sequence``, vocabulary 3 with
EOS, lengths 1..L, reward ``scale · #(token 2) + shift``), every variant of
``expectax.rl.sequence`` (advantage estimator × loss aggregation × KL handling) is run on
``--batches`` independent batches of ``G × K`` completions, one gradient per batch, all variants
on the same batches; the mean is compared with the exact gradient by enumeration.

Columns (g = the exact target, m = the mean estimate, ĝ one batch's estimate):

- ``scale``: ⟨m, g⟩/‖g‖² (1 for an unbiased estimator of g; a known factor for some variants);
- ``angle``: the angle between m and g in degrees;
- ``⊥ z``: the largest |z| of the component of m orthogonal to g (a fixed linear map of the
  samples, so its SE is exact): ≥ 5 means the estimator follows another direction;
- ``bias z``: the largest |z| of m − g over the 21+ coordinates;
- ``rel. var``: tr Cov(ĝ) / ‖m‖², scale-free (the variance at equal expected step length).

A last table takes the gradient at θ ≠ θ_old on batches sampled from π_old (the second and later
PPO steps on one batch), with per-token importance ratios, unclipped and clipped.

Run:  python benchmarks/sequence_pg.py [--batches 20000] [--seed 0] [--quick]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from expectax.problems.sequence import TinySequencePolicy, gradient_samples

REWARD_VARIANTS = [
    ("REINFORCE, b = 0", dict(advantage="reinforce")),
    ("REINFORCE, b = E[R] (oracle constant)", dict(advantage="reinforce", baseline="oracle")),
    ("RLOO", dict(advantage="rloo")),
    ("ReMax (greedy baseline)", dict(advantage="remax")),
    ("Dr. GRPO (r − mean)", dict(advantage="dr-grpo")),
    (
        "Dr. GRPO + constant C = T",
        dict(advantage="dr-grpo", loss_agg_mode="seq-mean-token-sum-norm"),
    ),
    ("GRPO (÷ std), token sum", dict(advantage="grpo")),
    (
        "GRPO, seq-mean-token-mean (original)",
        dict(advantage="grpo", loss_agg_mode="seq-mean-token-mean"),
    ),
    ("GRPO, token-mean", dict(advantage="grpo", loss_agg_mode="token-mean")),
    ("RLOO, token-mean (DAPO)", dict(advantage="rloo", loss_agg_mode="token-mean")),
    ("RLOO, seq-mean-token-mean", dict(advantage="rloo", loss_agg_mode="seq-mean-token-mean")),
    ("REINFORCE++ (batch norm.)", dict(advantage="reinforce++")),
    ("REINFORCE++-baseline", dict(advantage="reinforce++-baseline")),
]

KL_VARIANTS = [
    ("k1 in the reward", dict(advantage="rloo", kl="k1-reward", beta=1.0)),
    ("k2 in the reward", dict(advantage="rloo", kl="k2-reward", beta=1.0)),
    ("k3 in the reward", dict(advantage="rloo", kl="k3-reward", beta=1.0)),
    ("k1 loss term", dict(advantage="rloo", kl="k1-loss", beta=1.0)),
    ("k2 loss term, per token", dict(advantage="rloo", kl="k2-loss", beta=1.0)),
    ("k2 loss term, per sequence", dict(advantage="rloo", kl="k2-seq-loss", beta=1.0)),
    ("k3 loss term, per token (GRPO)", dict(advantage="rloo", kl="k3-loss", beta=1.0)),
    ("k3 loss term, per sequence", dict(advantage="rloo", kl="k3-seq-loss", beta=1.0)),
]


def summarise(samples: np.ndarray, target: np.ndarray) -> dict[str, float]:
    n = len(samples)
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / np.sqrt(n)
    u = target / np.linalg.norm(target)
    perp = samples - np.outer(samples @ u, u)
    perp_se = perp.std(0, ddof=1) / np.sqrt(n)
    cos = mean @ u / np.linalg.norm(mean)
    return {
        "scale": float(mean @ target / (target @ target)),
        "angle": float(np.degrees(np.arccos(np.clip(cos, -1, 1)))),
        "perp_z": float(np.max(np.abs(perp.mean(0)) / np.maximum(perp_se, 1e-12))),
        "bias_z": float(np.max(np.abs(mean - target) / np.maximum(se, 1e-12))),
        "rel_var": float(samples.var(0, ddof=1).sum() / (mean @ mean)),
    }


def run(variants, pol, groups, k, batches, seed, target_key="reward"):
    th, thr = pol.init_params(), pol.init_params("reference")
    exact = {key: np.asarray(v).reshape(-1) for key, v in pol.exact_grads(th, thr).items()}
    oracle = float(pol.exact_values(th, thr)["reward"])
    kws = []
    for _, v in variants:
        v = dict(v)
        if v.get("baseline") == "oracle":
            v["baseline"] = oracle
        kws.append(v)
    s = gradient_samples(pol, th, thr, jax.random.key(seed), batches, groups, k, variants=kws)
    target = -exact["kl"] if target_key == "-kl" else exact[target_key]
    return [(name, summarise(x, target)) for (name, _), x in zip(variants, s, strict=True)]


def run_ppo(batches, seed, groups, steps=(0.0, 0.5, 1.0, 2.0)):
    """Later PPO steps on one batch: sampled at θ_old, the gradient taken at θ = θ_old + s·u."""
    pol = TinySequencePolicy()
    th_old, thr = pol.init_params(), pol.init_params("reference")
    g0 = np.asarray(pol.exact_grads(th_old, thr)["reward"])
    rows = []
    for step in steps:
        th = th_old + step * g0 / np.linalg.norm(g0)
        target = np.asarray(pol.exact_grads(th, thr)["reward"]).reshape(-1)
        kl = float(pol.exact_values(th, th_old)["kl"])
        variants = [dict(advantage="rloo"), dict(advantage="rloo", clip_eps=0.2)]
        s = gradient_samples(
            pol,
            th,
            thr,
            jax.random.key(seed),
            batches,
            groups,
            4,
            theta_old=th_old,
            variants=variants,
        )
        for name, x in zip(("ratio, no clip", "ratio, clip ε = 0.2"), s, strict=True):
            rows.append((f"s = {step:g} (KL(π‖π_old) = {kl:.3f}), {name}", summarise(x, target)))
    return rows


def table(rows, title):
    out = [
        f"\n{title}\n",
        "| variant | scale | angle | ⊥ z | bias z | rel. var |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        out.append(
            f"| {name} | {r['scale']:.3f} | {r['angle']:.1f}° | {r['perp_z']:.1f} | "
            f"{r['bias_z']:.1f} | {r['rel_var']:.2f} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="only the main table and the KL table")
    args = ap.parse_args()
    t0 = time.perf_counter()
    b, s, g = args.batches, args.seed, args.groups
    print(f"batches={b} seed={s} groups G={g}; policy seed 0; jax {jax.__version__}")
    base = TinySequencePolicy()
    print(
        table(
            run(REWARD_VARIANTS, base, g, 4, b, s),
            f"Target ∇E[R]; K=4, L=3, R = #(token 2) (V=3, {base.num_sequences} sequences)",
        )
    )
    print(
        table(
            run(KL_VARIANTS, TinySequencePolicy(reward_scale=0.0), g, 4, b, s, "-kl"),
            "Target −∇KL(π‖π_ref), reward 0, β = 1; K=4, L=3, advantages RLOO",
        )
    )
    print(
        table(
            run_ppo(b, s, g),
            "Later PPO steps: batch from π_old, target ∇E_θ[R] at "
            "θ = θ_old + s·∇E[R]/‖∇E[R]‖; RLOO, per-token ratios, K=4, L=3",
        )
    )
    if not args.quick:
        short = [
            v
            for v in REWARD_VARIANTS
            if v[0].split(",")[0].split(" (")[0] in ("RLOO", "Dr. GRPO", "GRPO", "REINFORCE++")
        ]
        for kk in (2, 8):
            print(table(run(short, base, g, kk, b, s), f"K={kk}, L=3, scale 1"))
        for length in (2, 4):
            print(
                table(
                    run(short, TinySequencePolicy(length=length), g, 4, b, s),
                    f"K=4, L={length}, scale 1",
                )
            )
        print(
            table(
                run(short, TinySequencePolicy(reward_scale=10.0), g, 4, b, s),
                "K=4, L=3, reward scale 10",
            )
        )
        shifted = [REWARD_VARIANTS[0], REWARD_VARIANTS[1], REWARD_VARIANTS[2]]
        print(
            table(
                run(shifted, TinySequencePolicy(reward_shift=5.0), g, 4, b, s),
                "K=4, L=3, reward shift +5 (R = #(token 2) + 5)",
            )
        )
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
