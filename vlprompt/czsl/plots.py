"""Plots of what the CZSL metric computes: the seen-vs-unseen accuracy curve of the bias sweep (its area
is the AUC) and the harmonic mean along the bias list, one panel pair per result."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(results: dict[str, dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write a PNG: per result (``closed/test``, ``open/val``, ...) its seen-vs-unseen curve and the HM
    against the bias index. `results` are `evaluate_phase` results (``curve_*`` and ``biaslist`` keys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if "curve_seen" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for i, name in enumerate(names):
        r = results[name]
        axes[0].plot(r["curve_unseen"], r["curve_seen"], marker=".", color=f"C{i}",
                     label=f"{name}: AUC {r['AUC']:.2f}")
        axes[1].plot(range(len(r["curve_hm"])), r["curve_hm"], marker=".", color=f"C{i}",
                     label=f"{name}: best HM {r['best_hm']:.2f}")
    axes[0].set(xlabel="unseen accuracy (%)", ylabel="seen accuracy (%)", title="seen vs unseen (bias sweep)")
    axes[1].set(xlabel="bias list index (last: the fixed bias)", ylabel="harmonic mean (%)", title="HM along the bias list")
    for ax in axes:
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
