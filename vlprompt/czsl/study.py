"""Aggregate a CZSL study: runs written by `vlprompt czsl train|eval --out RUNS/<method>_s<seed>`.

    python -m vlprompt.czsl.study RUNS [--png docs/czsl_world.png] [--split closed/test open/test]

Prints a markdown table (mean ± std over seeds) per split; with ``--png`` writes a figure: bars
(AUC, best HM per method, std error bars) and the seen-vs-unseen accuracy curves of every run.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

ORDER = ["zero-shot", "coop", "csp", "dfsp"]
COLUMNS = [("AUC", "AUC"), ("best_hm", "best HM"), ("best_seen", "best seen"), ("best_unseen", "best unseen"),
           ("attr_acc", "attr acc"), ("obj_acc", "obj acc")]
RUN = re.compile(r"^(?P<method>.+?)(?:_s(?P<seed>\d+))?$")


def load_runs(root: str | Path) -> dict[str, list[dict]]:
    """``{method: [experiment.json of each seed, ...]}`` from ``root/<method>_s<seed>/``."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(Path(root).glob("*/experiment.json")):
        match = RUN.match(path.parent.name)
        data = json.loads(path.read_text())
        runs[data.get("method") or match["method"]].append(data)
    return dict(sorted(runs.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))


def table(runs: dict[str, list[dict]], split: str) -> str:
    head = "| method | seeds | " + " | ".join(c for _, c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for method, results in runs.items():
        rows = [r["metrics"][split] for r in results if split in r["metrics"]]
        if not rows:
            continue
        cells = []
        for key, _ in COLUMNS:
            v = np.array([row[key] for row in rows], dtype=float)
            cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}")
        seeds = ",".join(str(r.get("seed")) for r in results if split in r["metrics"])
        lines.append(f"| {method} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rules(runs: dict[str, list[dict]]) -> str:
    """The CZSL rules the runs record (augmentation, epoch selection, open-world feasibility rule)."""
    seen = {json.dumps(r.get("czsl_rules"), sort_keys=True) for results in runs.values() for r in results}
    parts = [", ".join(f"{k}: {v}" for k, v in json.loads(s).items()) if s != "null" else "not recorded (before issue 15)"
             for s in sorted(seen)]
    return "rules: " + " | ".join(parts)


def plot(runs: dict[str, list[dict]], splits: list[str], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 * len(splits), figsize=(5.2 * 2 * len(splits), 4.2))
    methods = list(runs)
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for s, split in enumerate(splits):
        ax = axes[2 * s]
        width = 0.8 / 2
        for k, (key, label) in enumerate([("AUC", "AUC"), ("best_hm", "best HM")]):
            means, stds = [], []
            for m in methods:
                v = np.array([r["metrics"][split][key] for r in runs[m] if split in r["metrics"]], dtype=float)
                means.append(v.mean())
                stds.append(v.std(ddof=1) if len(v) > 1 else 0.0)
            x = np.arange(len(methods)) + (k - 0.5) * width
            bars = ax.bar(x, means, width, yerr=stds, capsize=3, label=label,
                          color=[colours[m] for m in methods], alpha=1.0 if k == 0 else 0.5)
            for b, mu in zip(bars, means):
                ax.text(b.get_x() + b.get_width() / 2, mu + 1, f"{mu:.1f}", ha="center", fontsize=7)
        ax.set_xticks(np.arange(len(methods)), methods)
        ax.set_title(f"{split}: AUC (solid) / best HM (light)")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax = axes[2 * s + 1]
        for m in methods:
            for i, r in enumerate(runs[m]):
                res = r["metrics"].get(split)
                if res and "curve_seen" in res:
                    ax.plot(res["curve_unseen"], res["curve_seen"], color=colours[m], alpha=0.7,
                            label=m if i == 0 else None)
        ax.set_xlabel("unseen accuracy (%)")
        ax.set_ylabel("seen accuracy (%)")
        ax.set_title(f"{split}: seen vs unseen (bias sweep)")
        ax.legend(fontsize=8)
    fig.suptitle("CZSL on the embedded world (world_czsl, vlprompt-tiny/world), mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs")
    parser.add_argument("--split", nargs="+", default=["closed/test", "open/test"])
    parser.add_argument("--png")
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    print(rules(runs) + "\n")
    for split in args.split:
        print(f"### {split}\n\n{table(runs, split)}\n")
    if args.png:
        plot(runs, args.split, args.png)


if __name__ == "__main__":
    main()
