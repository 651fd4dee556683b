"""The public Python API: load a backbone, get a dataset, train and evaluate a method, save a prompt.

The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from vlprompt.backbones import Backbone, load_backbone, resolve_device
from vlprompt.data import ClassificationDataset, load_dataset
from vlprompt.data.webdataset_reader import WdsDataset
from vlprompt.data.world import WORLD_PREFIX, get_dataset, world_data_root
from vlprompt.engine.evaluate import evaluate_method
from vlprompt.engine.zero_shot import evaluate_zero_shot
from vlprompt.runner import format_experiment, headline, run_experiment
from vlprompt.zoo import load_prompt

__all__ = [
    "WORLD_PREFIX", "evaluate", "evaluate_prompt", "format_experiment", "get_dataset", "headline", "load_backbone",
    "load_dataset", "resolve_device", "run_experiment", "world_data_root",
]


def evaluate(
    datasets: list[str],
    root: str | None = None,
    backbone: str = "vlprompt-tiny",
    pretrained: str | None = "world",
    device: str = "auto",
    split: str = "test",
    templates: str = "dataset",
    prompt: str | None = None,
    batch_size: int = 128,
    num_workers: int = 0,
) -> list[dict[str, Any]]:
    """Zero-shot (or trained-prompt) results, one JSON-able dict per dataset. The datasets are checked
    before the backbone loads: a missing folder fails at once, not after a download."""
    loaded = [get_dataset(name, root) for name in datasets]
    model = load_backbone(backbone, pretrained, device)
    results = []
    for dataset in loaded:
        if prompt is None:
            results.append(
                evaluate_zero_shot(
                    model, dataset, split=split, templates=templates, batch_size=batch_size, num_workers=num_workers
                )
            )
        else:
            results.append(evaluate_prompt(prompt, model, dataset, split=split, batch_size=batch_size))
        results[-1]["threads"] = torch.get_num_threads()
    return results


def evaluate_prompt(
    prompt: str | Path,
    backbone: Backbone,
    dataset: ClassificationDataset | WdsDataset,
    split: str = "test",
    batch_size: int = 128,
) -> dict[str, Any]:
    """A saved prompt evaluated on a dataset's split (its class names replace the trained ones)."""
    start = time.perf_counter()
    method = load_prompt(prompt, backbone, classnames=dataset.classnames)
    metrics = evaluate_method(method, backbone, dataset.split(split), batch_size=batch_size)
    return {
        "dataset": dataset.name,
        "split": split,
        "backbone": backbone.identity.to_dict(),
        "method": method.name,
        "prompt": str(prompt),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - start, 3),
    }
