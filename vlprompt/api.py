"""The public Python API: load a backbone, get a dataset, train and evaluate a method, save a prompt.

The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vlprompt.backbones import Backbone, create_backbone
from vlprompt.data import ClassificationDataset, load_dataset
from vlprompt.data.registry import DATA_ENV
from vlprompt.paths import cache_dir

WORLD_PREFIX = "world_"


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_backbone(name: str = "vlprompt-tiny", pretrained: str | None = "world", device: str = "auto") -> Backbone:
    """A frozen backbone; ``pretrained`` None/'none' means random weights."""
    if pretrained in (None, "", "none", "None"):
        pretrained = None
    return create_backbone(name, pretrained, device=resolve_device(device))


def world_data_root(root: str | Path | None = None) -> Path:
    """The embedded world's datasets, written on first use (idempotent)."""
    from vlprompt.embedded.export import write_world_datasets

    root = Path(root) if root else cache_dir("world-data")
    write_world_datasets(root)
    return root


def get_dataset(name: str, root: str | Path | None = None) -> ClassificationDataset:
    """A dataset by name; embedded world datasets are generated when no root is given."""
    if root is None and not os.environ.get(DATA_ENV) and name.startswith(WORLD_PREFIX):
        root = world_data_root()
    return load_dataset(name, root)


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
    """Zero-shot (or trained-prompt) results, one JSON-able dict per dataset."""
    from vlprompt.engine.zero_shot import evaluate_zero_shot

    model = load_backbone(backbone, pretrained, device)
    results = []
    for name in datasets:
        dataset = get_dataset(name, root)
        if prompt is None:
            results.append(
                evaluate_zero_shot(
                    model, dataset, split=split, templates=templates, batch_size=batch_size, num_workers=num_workers
                )
            )
        else:
            results.append(evaluate_prompt(prompt, model, dataset, split=split, batch_size=batch_size))
    return results


def evaluate_prompt(
    prompt: str | Path, backbone: Backbone, dataset: ClassificationDataset, split: str = "test", batch_size: int = 128
) -> dict[str, Any]:
    """A saved prompt evaluated on a dataset's split (its class names replace the trained ones)."""
    import time

    from vlprompt.engine.evaluate import evaluate_method
    from vlprompt.zoo import load_prompt

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
