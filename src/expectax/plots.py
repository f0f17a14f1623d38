"""Pictures of comparisons (matplotlib, Agg backend, written as PNG). No mathematics here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from expectax.compare import Comparison

__all__ = ["plot_comparison"]

MAX_PANELS = 12


def plot_comparison(comparison: Comparison, path: str | Path, title: str | None = None) -> Path:
    """Histogram of the gradient estimates per estimator, one panel per coordinate.

    The exact gradient (when known) is a vertical black line; each estimator's mean a dashed
    line in its colour. Coordinates beyond the first 12 are left out (the JSON has them all).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    coords = comparison.coordinates[:MAX_PANELS]
    cols = min(3, len(coords))
    rows = math.ceil(len(coords) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    usable = [r for r in comparison.reports if r.estimates is not None]
    for j, name in enumerate(coords):
        ax = axes[j // cols][j % cols]
        values = [r.estimates[:, j][np.isfinite(r.estimates[:, j])] for r in usable]
        pooled = np.concatenate(values) if values else np.zeros(1)
        lo, hi = np.percentile(pooled, [0.5, 99.5]) if pooled.size else (0.0, 1.0)
        if comparison.exact is not None:
            lo, hi = min(lo, comparison.exact[j]), max(hi, comparison.exact[j])
        if hi <= lo:
            lo, hi = lo - 1.0, hi + 1.0
        bins = np.linspace(lo, hi, 50)
        for k, (report, vals) in enumerate(zip(usable, values, strict=True)):
            colour = colours[k % len(colours)]
            ax.hist(
                np.clip(vals, lo, hi),
                bins=bins,
                histtype="step",
                density=True,
                color=colour,
                linewidth=1.4,
                label=report.name,
            )
            if report.mean is not None:
                ax.axvline(report.mean[j], color=colour, linestyle="--", linewidth=1)
        if comparison.exact is not None:
            ax.axvline(comparison.exact[j], color="black", linewidth=1.6, label="exact")
        ax.set_title(f"∂E/∂{name}", fontsize=10)
        ax.set_yticks([])
    for j in range(len(coords), rows * cols):
        axes[j // cols][j % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False)
    fig.suptitle(
        title
        or f"gradient estimates: {comparison.repeats} repeats × {comparison.num_samples} samples",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
