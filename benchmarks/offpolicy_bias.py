"""Exact bias of sequence policy gradients under a rollout/trainer mismatch (issue 19, item 2).

The rollout engine samples from ``μ`` (``TinySequencePolicy.behaviour_params``: the trainer's
logits plus ``mismatch`` × a fixed standard-normal direction) while the trainer computes its
log-probs at ``θ`` (the first step on the batch). For each variant — losses of 2025–26, TIS/MIS
at token and sequence level, truncate vs mask vs reject, with and without KL terms — the
expected gradient and its variance are *exact sums* over every batch of one group of K
completions (``expectax.problems.sequence.exact_gradient_moments``), compared with the true
gradient g of the intended objective (``E_π[R]``, or ``E_π[R] − β·KL(π‖π_ref)``):

- ``rel. bias`` ‖E ĝ − g‖/‖g‖ (0 up to float rounding: unbiased);
- ``cos`` the cosine between E ĝ and g, ``scale`` ⟨E ĝ, g⟩/‖g‖²;
- ``tr Cov`` the variance of one batch's estimate (summed over the 21 coordinates);
- ``follows``: ``∇J`` (rel. bias < 1e-4), ``c·∇J`` (parallel: the orthogonal part < 1e-4 of
  ‖E ĝ‖), or ``other``.

Run:  python benchmarks/offpolicy_bias.py [--k 2] [--out benchmarks/results/offpolicy_bias.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from expectax.problems.sequence import TinySequencePolicy, exact_gradient_moments

MISMATCH = (0.0, 0.1, 0.3, 1.0)

REWARD_VARIANTS = [
    ("RLOO, no correction", dict(advantage="rloo")),
    ("RLOO + token IS (C = ∞)", dict(advantage="rloo", correction="token-is")),
    ("RLOO + token TIS (C = 2)", dict(advantage="rloo", correction="token-truncate")),
    ("RLOO + token MIS (C = 2)", dict(advantage="rloo", correction="token-mask")),
    ("RLOO + sequence IS (C = ∞)", dict(advantage="rloo", correction="sequence-is")),
    ("RLOO + sequence TIS (C = 2)", dict(advantage="rloo", correction="sequence-truncate")),
    ("RLOO + sequence MIS (C = 2)", dict(advantage="rloo", correction="sequence-mask")),
    ("RLOO + sequence reject (C = 2)", dict(advantage="rloo", correction="sequence-reject")),
    ("GRPO + token TIS (C = 2)", dict(advantage="grpo", correction="token-truncate")),
    (
        "GSPO (seq-mean-token-mean)",
        dict(advantage="grpo", loss="gspo", loss_agg_mode="seq-mean-token-mean"),
    ),
    (
        "GSPO + sequence TIS",
        dict(
            advantage="grpo",
            loss="gspo",
            loss_agg_mode="seq-mean-token-mean",
            correction="sequence-truncate",
        ),
    ),
    ("CISPO (token-mean)", dict(advantage="rloo", loss="cispo", loss_agg_mode="token-mean")),
    ("CISPO, token sum", dict(advantage="rloo", loss="cispo")),
    (
        "CISPO, token sum + sequence IS",
        dict(advantage="rloo", loss="cispo", correction="sequence-is"),
    ),
    (
        "SAPO (seq-mean-token-mean)",
        dict(advantage="rloo", loss="sapo", loss_agg_mode="seq-mean-token-mean"),
    ),
    ("GMPO", dict(advantage="rloo", loss="gmpo")),
    (
        "VESPO (W = π/μ, token-mean)",
        dict(advantage="rloo", loss="vespo", loss_agg_mode="token-mean"),
    ),
    ("VESPO, token sum", dict(advantage="rloo", loss="vespo")),
]

BETA = 0.5
KL_VARIANTS = [
    ("k1 in the reward, no correction", dict(advantage="rloo", kl="k1-reward", beta=BETA)),
    (
        "k1 in the reward + sequence IS",
        dict(advantage="rloo", kl="k1-reward", beta=BETA, correction="sequence-is"),
    ),
    (
        "k1 in the reward + sequence TIS",
        dict(advantage="rloo", kl="k1-reward", beta=BETA, correction="sequence-truncate"),
    ),
    (
        "k1 in the reward + token TIS",
        dict(advantage="rloo", kl="k1-reward", beta=BETA, correction="token-truncate"),
    ),
    (
        "k3 loss (GRPO) + token TIS",
        dict(advantage="rloo", kl="k3-loss", beta=BETA, correction="token-truncate"),
    ),
    (
        "k3 × ratio loss, per token (V3.2)",
        dict(advantage="rloo", kl="k3-is-loss", beta=BETA, correction="sequence-is"),
    ),
    (
        "k3 × ratio loss, per sequence",
        dict(advantage="rloo", kl="k3-is-seq-loss", beta=BETA, correction="sequence-is"),
    ),
    (
        "k2 sequence loss + sequence IS",
        dict(advantage="rloo", kl="k2-seq-loss", beta=BETA, correction="sequence-is"),
    ),
]


def summarise(mean: np.ndarray, var: float, target: np.ndarray) -> dict:
    gn = np.linalg.norm(target)
    scale = float(mean @ target / (target @ target))
    perp = np.linalg.norm(mean - scale * target) / max(np.linalg.norm(mean), 1e-30)
    bias = float(np.linalg.norm(mean - target) / gn)
    cos = float(mean @ target / (np.linalg.norm(mean) * gn + 1e-30))
    follows = "∇J" if bias < 1e-4 else (f"{scale:.3g}·∇J" if perp < 1e-4 else "other")
    return dict(bias=bias, cos=cos, scale=scale, var=float(var), follows=follows)


def run(policy, variants, k, target_fn):
    th, thr = policy.init_params(), policy.init_params("reference")
    target = target_fn(policy, th, thr)
    rows = {name: [] for name, _ in variants}
    info = []
    for d in MISMATCH:
        mu = policy.behaviour_params(th, d)
        out = exact_gradient_moments(
            policy, th, thr, k, variants=[v for _, v in variants], theta_behaviour=mu
        )
        lp, lq = np.asarray(policy.seq_logp(th)), np.asarray(policy.seq_logp(mu))
        info.append((d, float(np.sum(np.exp(lq) * (lq - lp))), float(np.exp(np.max(lp - lq)))))
        for (name, _), m, v in zip(variants, out["mean"], out["var"], strict=True):
            rows[name].append(summarise(m, v, target))
    return rows, info


def table(rows, info, title):
    head = " | ".join(f"δ={d:g} (KL {kl:.3g}, max π/μ {w:.2f})" for d, kl, w in info)
    out = [f"\n{title}\n", f"| variant | {head} |", "|---|" + "---|" * len(info)]
    for name, cells in rows.items():
        out.append(
            f"| {name} | "
            + " | ".join(
                f"{c['bias']:.2e} / {c['cos']:.4f} / {c['var']:.3g} / {c['follows']}" for c in cells
            )
            + " |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=2, help="completions per group (15^K batches)")
    ap.add_argument("--out", default="benchmarks/results/offpolicy_bias.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    pol = TinySequencePolicy()
    lines = [
        f"# Off-policy bias, exact by enumeration (K={args.k}, one group; jax {jax.__version__})",
        "Cells: rel. bias ‖E ĝ − g‖/‖g‖ / cos(E ĝ, g) / tr Cov(ĝ) / follows. "
        "δ: the rollout engine's logit error; KL(μ‖π) of whole sequences; max π/μ over sequences.",
    ]
    rows, info = run(
        pol,
        REWARD_VARIANTS,
        args.k,
        lambda p, t, r: np.asarray(p.exact_grads(t, r)["reward"]).ravel(),
    )
    lines.append(table(rows, info, "Target ∇E_π[R] (L=3, V=3, count reward)"))

    def kl_target(p, t, r):
        g = p.exact_grads(t, r)
        return np.asarray(g["reward"]).ravel() - BETA * np.asarray(g["kl"]).ravel()

    rows, info = run(pol, KL_VARIANTS, args.k, kl_target)
    lines.append(table(rows, info, f"Target ∇(E_π[R] − {BETA:g}·KL(π‖π_ref)) (RLOO advantages)"))
    text = "\n".join(lines) + f"\n\n({time.perf_counter() - t0:.0f} s)\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
