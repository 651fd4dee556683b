"""CLIP_benchmark's result files: one JSON object per (dataset, model), as ``clip_benchmark eval`` dumps
it and ``clip_benchmark build`` reads it::

    {"dataset": "cifar10", "model": "ViT-B-16", "pretrained": "openai", "task": "zeroshot_classification",
     "metrics": {"acc1": 0.8, "acc5": 0.99, "mean_per_class_recall": 0.8}, "language": "en"}

Metrics are fractions (vlprompt's results hold percentages) rounded to 6 decimals, so float noise
(``80.0000011920929``) does not reach the file. The output pattern takes CLIP_benchmark's fields
(``{dataset}``, ``{model}``, ``{pretrained}``, ``{language}``, ``{task}``) plus ``{method}``, with its
slugs: ``/`` in a dataset name becomes ``_``, a pretrained file becomes its base name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlprompt.engine.logging import write_json
from vlprompt.errors import VLPromptError
from vlprompt.paths import read_json

TASK = "zeroshot_classification"
METRICS = {"acc1": "top1", "acc5": "top5", "mean_per_class_recall": "mean_per_class_recall"}
DIGITS = 6


def _fraction(percent: float) -> float:
    return round(float(percent) / 100.0, DIGITS)


def to_clip_benchmark(result: dict[str, Any], language: str = "en") -> dict[str, Any]:
    """A vlprompt evaluation result (`api.evaluate`) as CLIP_benchmark's result object."""
    backbone = result.get("backbone") or {}
    metrics = result.get("metrics") or {}
    record: dict[str, Any] = {
        "dataset": str(result.get("dataset")),
        "model": str(backbone.get("name", "?")),
        "pretrained": str(backbone.get("pretrained") or "none"),
        "task": TASK,
        "metrics": {key: _fraction(metrics[ours]) for key, ours in METRICS.items() if ours in metrics},
        "language": language,
    }
    if result.get("method") not in (None, "zero-shot"):
        record["method"] = result["method"]  # extra keys become columns in `clip_benchmark build`
    if result.get("prompt"):
        record["prompt"] = str(result["prompt"])
    return record


def output_path(pattern: str, record: dict[str, Any]) -> Path:
    """`pattern` filled as CLIP_benchmark fills its ``--output``."""
    pretrained = record["pretrained"]
    fields = {
        "dataset": record["dataset"].replace("/", "_"),
        "model": record["model"].replace("/", "_"),
        "pretrained": os.path.basename(pretrained) if os.path.isfile(pretrained) else pretrained.replace("/", "_"),
        "pretrained_full_path": pretrained.replace("/", "_"),
        "language": record["language"],
        "task": record["task"],
        "method": record.get("method", "zero-shot"),
    }
    try:
        return Path(pattern.format(**fields))
    except (KeyError, IndexError, ValueError) as error:
        raise VLPromptError(
            f"--output {pattern!r}: cannot fill it ({error}); fields are {', '.join('{' + k + '}' for k in fields)}"
        ) from None


def write_clip_benchmark(results: Sequence[dict[str, Any]], pattern: str, language: str = "en") -> list[Path]:
    """One file per result; two results that would land in one file are an error (add a field)."""
    records = [to_clip_benchmark(r, language) for r in results]
    paths = [output_path(pattern, r) for r in records]
    if len(set(paths)) < len(paths):
        raise VLPromptError(f"--output {pattern!r} gives the same file for several results; add {{dataset}} or {{model}}")
    for path, record in zip(paths, records):
        write_json(path, record)
    return paths


def read_clip_benchmark(path: str | Path) -> dict[str, Any]:
    """A CLIP_benchmark result file as a vlprompt-style result (metrics in percent, ``top1``...)."""
    path = Path(path)
    data = read_json(path, "CLIP_benchmark result")
    missing = [k for k in ("dataset", "model", "pretrained", "metrics") if k not in data]
    if missing:
        raise VLPromptError(f"{path} is not a CLIP_benchmark result: no {', '.join(missing)}")
    metrics = {ours: 100.0 * float(data["metrics"][key]) for key, ours in METRICS.items() if key in data["metrics"]}
    return {
        "dataset": data["dataset"],
        "backbone": {"name": data["model"], "pretrained": data["pretrained"]},
        "method": data.get("method", "zero-shot"),
        "task": data.get("task", TASK),
        "language": data.get("language", "en"),
        "metrics": metrics,
    }
