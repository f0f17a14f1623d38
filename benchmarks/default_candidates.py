"""Candidates for the ELBO's default baseline on discrete sites, against the default in use.

``current`` is the library's default (``baselines.WeightedLeaveOneOut`` without history: the
others' score-weighted mean cost divided by ``max(c (N − 1) E[w], Σ_{j≠i} w_j)``, ``c = 0.03``
since 2026-12-07, ``c = 1`` before, i.e. shrinking towards 0 in proportion to the others' share
of the expected squared score). The candidates shrink only below a share ``c``:

- ``plain``: the others' plain mean times ``min(1, Σ_{j≠i} w_j / (c (N − 1) E[w]))``;
- ``weighted``: ``Σ_{j≠i} w_j f_j / max(c (N − 1) E[w], Σ_{j≠i} w_j)``.

Both use the other particles only, so they stay unbiased. The script patches
``expectax.baselines.weighted_loo`` (used when no history is kept) in its own process and runs

1. the ELBO gallery (``benchmarks/elbo_gallery.py``) on the models whose score-function sites
   are single discrete variables (DPM, coal, spike), where the candidate is the ``expectax``
   row; ``--configs`` adds ``none``/``loo`` references;
2. issue 18's minimal case (``benchmarks/minimal_categorical.py``): steps until
   ``P(best) > 0.5`` on many seeds, the candidate against no baseline.

Run (the numbers in docs/elbo-gallery.md, development seeds 0-4 and minimal-case seeds
100-199)::

    python benchmarks/default_candidates.py --variant plain --share 0.3 --out /tmp/cand_plain
    python benchmarks/default_candidates.py --variant current --configs none,loo --out /tmp/cand_cur
"""

from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

import expectax as ex
import expectax.baselines as B

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def candidate(variant: str, share: float):
    """The replacement for ``weighted_loo`` (history and unweighted sites unchanged)."""
    current = B.weighted_loo

    def baseline(d, w, fisher, history=None, share=B.DEFAULT_SHARE):
        if variant == "current" or w is None or history is not None:
            return current(d, w, fisher, history, share=share)
        n = d.shape[0]
        others_w = B.others_sum(w)
        expected = share * (n - 1) * fisher
        safe = jnp.where(expected > 0, expected, 1.0)
        if variant == "plain":
            trust = jnp.where(expected > 0, jnp.minimum(1.0, others_w / safe), 1.0)
            return trust * B.others_sum(d) / (n - 1)
        den = jnp.maximum(expected, others_w)
        return jnp.where(den > 0, B.others_sum(w * d) / jnp.where(den > 0, den, 1.0), 0.0)

    return baseline


def minimal_case(seeds, steps):
    import minimal_categorical as mc

    rows = []
    for offset in (0.0, 100.0):
        cand = mc.steps_to_best(None, offset, seeds, steps)
        plain = mc.steps_to_best({"z": ex.ScoreFunction()}, offset, seeds, steps)
        diff = cand - plain
        rows.append(
            f"| {offset:+.0f} | {np.sum(cand <= steps)}/{len(seeds)} | {np.median(cand):.0f} "
            f"| {np.sum(plain <= steps)}/{len(seeds)} | {np.median(plain):.0f} "
            f"| {diff.mean():+.1f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.1f} |"
        )
    head = (
        f"Minimal case, seeds {seeds[0]}-{seeds[-1]}, {steps} steps\n\n"
        "| cost offset | candidate reached | median steps | no baseline reached | median steps "
        "| steps: candidate − no baseline |\n|---:|---:|---:|---:|---:|---:|"
    )
    return head + "\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=("current", "plain", "weighted"), required=True)
    ap.add_argument("--share", type=float, default=0.3, help="c, the trusted share")
    ap.add_argument("--seeds", default="0-4", help="gallery seeds")
    ap.add_argument("--minimal-seeds", default="100-199")
    ap.add_argument("--minimal-steps", type=int, default=400)
    ap.add_argument("--configs", default="", help="reference rows, e.g. none,loo")
    ap.add_argument("--out", required=True, help="output stem for the gallery's table")
    args = ap.parse_args()
    B.weighted_loo = candidate(args.variant, args.share)
    lo, hi = (int(v) for v in args.minimal_seeds.split("-"))
    table = minimal_case(list(range(lo, hi + 1)), args.minimal_steps)
    print(f"variant {args.variant}, c = {args.share}\n\n{table}\n", flush=True)
    import elbo_gallery

    sys.argv = [
        "elbo_gallery.py",
        *("--seeds", args.seeds, "--models", "dpm,coal,spike", "--configs", args.configs),
        *("--rounds", "2", "--curve-points", "4", "--out", args.out),
    ]
    elbo_gallery.main()
    with open(args.out + ".md", "a") as f:
        f.write(f"\n\nvariant {args.variant}, c = {args.share}\n\n{table}\n")


if __name__ == "__main__":
    main()
