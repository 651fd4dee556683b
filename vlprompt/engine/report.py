"""Sweep reporting: mean ± std over seeds per (method, dataset, shots), as JSON, a markdown table and plots.

std is the sample standard deviation (n - 1), the usual "± over 3 seeds" in prompt-learning papers;
it is 0 for a single seed. For base-to-new, ``hm`` is the mean of per-seed HMs (with its std);
``hm_of_means`` is the HM of the mean base and mean new accuracies, the way CoCoOp-style tables
compute H, kept alongside so either can be quoted.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprompt.data.protocols import harmonic_mean
from vlprompt.engine.runs import RunRecord
from vlprompt.paths import atomic_path

BASE_NEW = ("base", "new", "hm")


@dataclass(frozen=True)
class MetricStats:
    """One metric over the seeds of a setting."""

    mean: float
    std: float
    n: int

    def format(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass(frozen=True)
class SummaryRow:
    """One (method, dataset, shots, protocol) setting aggregated over its seeds."""

    method: str
    dataset: str
    shots: int
    protocol: str
    seeds: list[int]
    metrics: dict[str, MetricStats]

    @property
    def is_base_new(self) -> bool:
        return "base" in self.metrics and "new" in self.metrics

    @property
    def hm_of_means(self) -> float | None:
        if not self.is_base_new:
            return None
        return harmonic_mean(self.metrics["base"].mean, self.metrics["new"].mean)


def stats(values: Sequence[float]) -> MetricStats:
    """Mean and sample std (0 for one value)."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return MetricStats(statistics.fmean(values), std, len(values))


def aggregate(records: Iterable[RunRecord]) -> list[SummaryRow]:
    """Group runs by (method, dataset, shots, protocol) and reduce each metric over seeds.

    Rows keep the order settings first appear in; metric order is that of the first run.
    """
    groups: dict[tuple[str, str, int, str], list[RunRecord]] = {}
    for record in records:
        s = record.spec
        groups.setdefault((s.method, s.dataset, s.shots, s.protocol), []).append(record)
    rows = []
    for (method, dataset, shots, protocol), group in groups.items():
        names: list[str] = []
        for record in group:
            names += [name for name in record.metrics if name not in names]
        metrics = {name: stats([r.metrics[name] for r in group if name in r.metrics]) for name in names}
        rows.append(SummaryRow(method, dataset, shots, protocol, sorted(r.spec.seed for r in group), metrics))
    return rows


def _metric_order(rows: Sequence[SummaryRow]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [name for name in row.metrics if name not in names]
    first = [n for n in ("top1", *BASE_NEW) if n in names]
    return first + [n for n in names if n not in first]


def summary_dict(rows: Sequence[SummaryRow]) -> dict[str, Any]:
    """The JSON form of a summary: one object per setting, metrics as {mean, std, n}."""
    out = []
    for row in rows:
        entry: dict[str, Any] = {
            "method": row.method,
            "dataset": row.dataset,
            "shots": row.shots,
            "protocol": row.protocol,
            "seeds": row.seeds,
            "metrics": {k: {"mean": v.mean, "std": v.std, "n": v.n} for k, v in row.metrics.items()},
        }
        if row.hm_of_means is not None:
            entry["hm_of_means"] = row.hm_of_means
        out.append(entry)
    return {"rows": out}


def markdown_tables(rows: Sequence[SummaryRow], digits: int = 2) -> str:
    """One table per (protocol, metric): rows are methods, columns ``dataset / K-shot``, cells mean ± std."""
    lines = ["# Sweep summary", "", "Mean ± sample std over seeds; `—` marks a setting not run.", ""]
    for protocol in dict.fromkeys(row.protocol for row in rows):
        sub = [row for row in rows if row.protocol == protocol]
        methods = list(dict.fromkeys(row.method for row in sub))
        datasets = list(dict.fromkeys(row.dataset for row in sub))  # first-seen order; shots ascending
        columns = sorted(dict.fromkeys((row.dataset, row.shots) for row in sub), key=lambda c: (datasets.index(c[0]), c[1]))
        cell = {(row.method, row.dataset, row.shots): row for row in sub}
        for metric in _metric_order(sub):
            lines += [f"## {protocol}: {metric}", ""]
            lines.append("| method | " + " | ".join(f"{d} / {k}-shot" for d, k in columns) + " |")
            lines.append("|---|" + "---|" * len(columns))
            for method in methods:
                values = []
                for d, k in columns:
                    row = cell.get((method, d, k))
                    values.append(row.metrics[metric].format(digits) if row and metric in row.metrics else "—")
                lines.append(f"| {method} | " + " | ".join(values) + " |")
            lines.append("")
    return "\n".join(lines)


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def plot_accuracy_vs_shots(rows: Sequence[SummaryRow], path: str | Path, metric: str | None = None) -> Path | None:
    """Accuracy (mean, std error bars) against shots, a line per method, a subplot per dataset.

    Uses `metric`, else ``top1``, else the first metric. Shots are evenly spaced categories so a
    zero-shot point (K=0) sits beside 1, 2, 4, 8, 16. Returns None when no row has the metric.
    """
    from matplotlib.figure import Figure

    rows = [row for row in rows if not row.is_base_new]
    if metric is None:
        order = _metric_order(rows)
        metric = order[0] if order else None
    rows = [row for row in rows if metric in row.metrics]
    if not rows:
        return None
    datasets = list(dict.fromkeys(row.dataset for row in rows))
    methods = list(dict.fromkeys(row.method for row in rows))
    shots = sorted({row.shots for row in rows})
    nrows, ncols = _grid(len(datasets))
    fig = Figure(figsize=(4 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, dataset in zip(axes, datasets):
        for index, method in enumerate(methods):  # one colour per method in every panel
            points = sorted((r.shots, r.metrics[metric]) for r in rows if r.dataset == dataset and r.method == method)
            if points:
                ax.errorbar(
                    [shots.index(k) for k, _ in points],
                    [s.mean for _, s in points],
                    yerr=[s.std for _, s in points],
                    marker="o",
                    capsize=3,
                    label=method,
                    color=f"C{index % 10}",
                )
        ax.set_xticks(range(len(shots)), [str(k) for k in shots])
        ax.set_title(dataset)
        ax.set_xlabel("shots per class")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(datasets) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize="small")
    return _save(fig, path)


def plot_base_new(rows: Sequence[SummaryRow], path: str | Path) -> Path | None:
    """Grouped bars of base, new and HM (mean, std error bars) per method, a subplot per dataset.

    Returns None when there are no base-to-new results.
    """
    import numpy as np
    from matplotlib.figure import Figure

    rows = [row for row in rows if row.is_base_new]
    if not rows:
        return None
    datasets = list(dict.fromkeys(row.dataset for row in rows))
    many_shots = len({row.shots for row in rows}) > 1
    nrows, ncols = _grid(len(datasets))
    fig = Figure(figsize=(4.5 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    width = 0.8 / len(BASE_NEW)
    for ax, dataset in zip(axes, datasets):
        sub = [row for row in rows if row.dataset == dataset]
        x = np.arange(len(sub))
        for i, metric in enumerate(BASE_NEW):
            stats_ = [row.metrics.get(metric) for row in sub]
            ax.bar(
                x + (i - 1) * width,
                [s.mean if s else 0.0 for s in stats_],
                width,
                yerr=[s.std if s else 0.0 for s in stats_],
                capsize=2,
                label=metric,
            )
        labels = [f"{row.method}\nK={row.shots}" if many_shots else row.method for row in sub]
        ax.set_xticks(x, labels, fontsize="small")
        ax.set_title(dataset)
        ax.set_ylabel("accuracy")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(datasets) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(BASE_NEW), fontsize="small")
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def write_report(rows: Sequence[SummaryRow], out_dir: str | Path, digits: int = 2) -> dict[str, Path]:
    """Write summary.json, summary.md and, where there is data for them, accuracy_vs_shots.png and
    base_new.png under `out_dir`; returns the paths by kind."""
    out_dir = Path(out_dir)
    files: dict[str, Path] = {}
    files["summary_json"] = out_dir / "summary.json"
    with atomic_path(files["summary_json"]) as tmp:
        tmp.write_text(json.dumps(summary_dict(rows), indent=1) + "\n", encoding="utf-8")
    files["summary_md"] = out_dir / "summary.md"
    with atomic_path(files["summary_md"]) as tmp:
        tmp.write_text(markdown_tables(rows, digits) + "\n", encoding="utf-8")
    for kind, plot in (("accuracy_vs_shots", plot_accuracy_vs_shots), ("base_new", plot_base_new)):
        written = plot(rows, out_dir / f"{kind}.png")
        if written is not None:
            files[kind] = written
    return files
