"""Zero-shot CLIP evaluation: the baseline every learned prompt is compared against."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vlprompt.backbones.base import Backbone
from vlprompt.data.classification import ClassificationDataset
from vlprompt.engine.features import features_and_labels
from vlprompt.engine.metrics import classification_metrics
from vlprompt.prompts.handcrafted import text_classifier
from vlprompt.prompts.templates import get_templates

if TYPE_CHECKING:
    from vlprompt.data.webdataset_reader import WdsDataset


def evaluate_zero_shot(
    backbone: Backbone,
    dataset: ClassificationDataset | WdsDataset,
    split: str = "test",
    templates: str | Sequence[str] = "dataset",
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
) -> dict:
    """Classify a split with hand-crafted prompts; returns a JSON-able result.

    `templates` is a spec for `get_templates` (bank name, "dataset", file) or a list. The class
    text features are computed once; images are encoded in batches. A streamed split (``wds:``
    datasets) is encoded as it is read, its labels taken from the stream.
    """
    start = time.perf_counter()
    items = dataset.split(split)
    template_list = get_templates(templates, dataset)
    weights = text_classifier(backbone, dataset.classnames, template_list)
    features, labels = features_and_labels(
        backbone, items, batch_size=batch_size, num_workers=num_workers, progress=progress, source=dataset.source
    )
    logits = backbone.logit_scale.float().cpu() * features @ weights.cpu().T
    return {
        "dataset": dataset.name,
        "split": split,
        "backbone": backbone.identity.to_dict(),
        "method": "zero-shot",
        "templates": template_list,
        "metrics": classification_metrics(logits, labels),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _backbone_label(backbone: dict | str) -> str:
    if isinstance(backbone, dict):
        return f"{backbone.get('name', '?')}/{backbone.get('pretrained') or 'random'}"
    return str(backbone)


def format_results_table(results: Sequence[dict]) -> str:
    """A short aligned text table: dataset, method, backbone, top1, top5, mean recall, n."""
    header = ("dataset", "method", "backbone", "top1", "top5", "mean recall", "n")
    rows = [header]
    for result in results:
        m = result.get("metrics", {})
        rows.append(
            (
                str(result.get("dataset", "?")),
                str(result.get("method", "?")),
                _backbone_label(result.get("backbone", "?")),
                f"{m.get('top1', float('nan')):.2f}",
                f"{m.get('top5', float('nan')):.2f}",
                f"{m.get('mean_per_class_recall', float('nan')):.2f}",
                str(m.get("n_images", "?")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {3, 4, 5, 6}
    lines = [
        "  ".join(cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
