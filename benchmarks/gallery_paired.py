"""Paired differences between the ELBO gallery's methods, seed by seed.

Every method of a gallery run starts each seed from the same initial parameters, so the
difference of two methods' final −ELBO on the same seed removes most of the seed-to-seed
spread (on the DPM the seeds' own spread is hundreds of nats). This script reads a run's JSON
(``benchmarks/elbo_gallery.py --out STEM`` writes ``STEM.json``; Pyro's rows are there after
``--merge-pyro``) and prints, per model, the mean ± standard error over seeds of
``A − B`` at equal steps (``--at time``: at equal wall time) for each pair ``A-B`` asked for
(a method is ``expectax`` for the defaults, ``numpyro``, ``pyro``, or a configuration name
such as ``loo``)::

    python benchmarks/gallery_paired.py benchmarks/results/elbo_gallery_300.json
    python benchmarks/gallery_paired.py STEM.json --pairs expectax-numpyro,loo-pyro --at time
    python benchmarks/gallery_paired.py STEM.json --per-seed   # each method's value per seed
    python benchmarks/gallery_paired.py A.json B.json           # two runs' seeds together
    python benchmarks/gallery_paired.py STEM.json --score       # a model's score instead

``--score`` pairs the model's own score (``Spec.score`` in ``elbo_gallery.py``, e.g. the
semi-supervised VAE's classifier accuracy; higher is better) instead of the −ELBO.
"""

from __future__ import annotations

import argparse
import json
import math

DEFAULT_PAIRS = "expectax-numpyro,expectax-pyro,loo-pyro,stateful-pyro,expectax-loo"
NAMES = {"expectax": "defaults", "loo": "plain LOO", "stateful": "`stateful`", "pyro": "Pyro"}


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds of ``a − b``."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return mean, math.sqrt(var / len(d))


def fmt(mean: float, se: float) -> str:
    digits = 0 if se >= 100 else 1 if se >= 10 else 2
    return f"{mean:+.{digits}f} ± {se:.{digits}f}".replace("-", "−")


def table(blob: dict, pairs: list[tuple[str, str]], at: str = "steps", field="values") -> str:
    label = lambda m: NAMES.get(m, m)  # noqa: E731
    head = "| model | " + " | ".join(f"{label(a)} − {label(b)}" for a, b in pairs) + " |"
    lines = [head, "|---|" + "---:|" * len(pairs)]
    for model, res in blob["results"].items():
        meth = res["methods"]
        cells = []
        for a, b in pairs:
            ra, rb = (meth.get(m, {}).get(f"equal_{at}", {}) for m in (a, b))
            if field in ra and field in rb:
                cells.append(fmt(*paired(ra[field], rb[field])))
            else:
                cells.append("–")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    seeds = blob["meta"]["seeds"]
    what = "" if field == "values" else " of the model's score"
    title = f"Paired over seeds {seeds}, equal {at}{what} (mean ± s.e. of the per-seed difference)"
    return title + "\n\n" + "\n".join(lines)


def per_seed(blob: dict, at: str = "steps", field="values") -> str:
    """Each method's final −ELBO (or score) seed by seed (a model with several optima shows
    them)."""
    seeds = blob["meta"]["seeds"]
    out = []
    for model, res in blob["results"].items():
        lines = [
            f"{model}, equal {at}",
            "",
            "| method | " + " | ".join(str(s) for s in seeds) + " |",
            "|---|" + "---:|" * len(seeds),
        ]
        for m, row in res["methods"].items():
            values = row[f"equal_{at}"].get(field)
            if values is None:
                continue
            lines.append(f"| {NAMES.get(m, m)} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def joined(blobs: list[dict]) -> dict:
    """Several runs as one: their seeds in turn, for the models and methods that every run has
    (an error if a seed repeats)."""
    seeds = [s for b in blobs for s in b["meta"]["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"gallery_paired: a seed is in more than one run ({seeds})")
    results = {}
    for model in blobs[0]["results"]:
        if not all(model in b["results"] for b in blobs):
            continue
        methods = [b["results"][model]["methods"] for b in blobs]
        common = [m for m in methods[0] if all(m in ms for ms in methods)]
        results[model] = {
            "methods": {
                m: {
                    f"equal_{at}": {
                        field: [v for ms in methods for v in ms[m][f"equal_{at}"][field]]
                        for field in ("values", "score")
                        if all(field in ms[m][f"equal_{at}"] for ms in methods)
                    }
                    for at in ("steps", "time")
                }
                for m in common
            }
        }
    return {"meta": {"seeds": seeds}, "results": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "json",
        nargs="+",
        help="a gallery run's JSON (elbo_gallery.py --out STEM -> STEM.json); several: their "
        "seeds together",
    )
    ap.add_argument(
        "--pairs", default=DEFAULT_PAIRS, help=f"comma-separated A-B (default {DEFAULT_PAIRS})"
    )
    ap.add_argument(
        "--at", choices=("steps", "time"), default="steps", help="equal steps or equal time"
    )
    ap.add_argument("--per-seed", action="store_true", help="each method's value per seed")
    ap.add_argument(
        "--score", action="store_true", help="the model's score (Spec.score), not the −ELBO"
    )
    args = ap.parse_args()
    blobs = []
    for path in args.json:
        with open(path) as f:
            blobs.append(json.load(f))
    blob = blobs[0] if len(blobs) == 1 else joined(blobs)
    field = "score" if args.score else "values"
    if args.per_seed:
        print(per_seed(blob, args.at, field))
        return
    pairs = [tuple(p.split("-", 1)) for p in args.pairs.split(",") if p]
    print(table(blob, pairs, args.at, field))


if __name__ == "__main__":
    main()
