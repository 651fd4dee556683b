"""Evaluate any method on labelled items, encoding what is frozen once.

Image features come from the feature cache (or are extracted once) unless the method needs images.
A streamed split (`StreamedSplit`, e.g. a ``wds:`` test split) is encoded as it is read, without the
cache (which is keyed by image file), and its labels are collected from the stream.
When the text side does not depend on the image (``class_features()`` is not None) it is encoded
once for the whole evaluation, not per batch as CoOp's trainer does (reference §4.2 step 6).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from vlprompt.backbones.base import Backbone
from vlprompt.engine.cache import FeatureCache
from vlprompt.engine.features import StreamedSplit, features_and_labels, image_batches
from vlprompt.engine.logging import progress_bar
from vlprompt.engine.metrics import classification_metrics
from vlprompt.engine.views import ItemLike, SeededImages
from vlprompt.methods.base import PromptMethod


def _eval_features(
    backbone: Backbone, items: Sequence[ItemLike] | StreamedSplit, cache: FeatureCache | None, batch_size: int,
    num_workers: int, progress: bool | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if cache is not None and not isinstance(items, StreamedSplit):
        labels = torch.tensor([int(item.label) for item in items], dtype=torch.long)
        return cache.get(backbone, items, backbone.eval_transform, views=1)[0], labels
    return features_and_labels(
        backbone, items, backbone.eval_transform, batch_size=batch_size, num_workers=num_workers,
        progress=progress is not False,
    )


def _no_seed(index: int) -> int:
    return 0  # the eval transform is deterministic


def _eval_image_batches(
    backbone: Backbone, items: Sequence[ItemLike] | StreamedSplit, batch_size: int, num_workers: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(eval-transformed images on the device, labels) for methods that need images."""
    if isinstance(items, StreamedSplit):
        yield from image_batches(backbone, items.image_dataset, backbone.eval_transform, batch_size, num_workers, False)
        return
    dataset = SeededImages(items, backbone.eval_transform, _no_seed)
    for images, labels, _ in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        yield images.to(backbone.device), labels


@torch.no_grad()
def _logits_and_labels(
    method: PromptMethod,
    backbone: Backbone,
    items: Sequence[ItemLike] | StreamedSplit,
    cache: FeatureCache | None,
    batch_size: int,
    num_workers: int,
    progress: bool | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    was_training = method.training
    method.eval()
    device = backbone.device
    try:
        text = method.class_features()
        text = text.float().to(device) if text is not None else None
        scale = backbone.logit_scale.float()
        outputs, labels = [], []
        if not method.needs_images:
            features, all_labels = _eval_features(backbone, items, cache, batch_size, num_workers, progress)
            labels = [all_labels]
            chunks = features.split(batch_size)
            for feats in progress_bar(chunks, desc="evaluate", enabled=progress):
                feats = feats.to(device)
                if text is not None:
                    logits = scale * feats @ text.t()
                else:
                    logits = method({"features": feats})
                outputs.append(logits.float().cpu())
        else:
            batches = _eval_image_batches(backbone, items, batch_size, num_workers)
            for images, batch_labels in progress_bar(batches, desc="evaluate", enabled=progress):
                batch = {"images": images}
                if text is not None:
                    logits = scale * method.image_features(batch).float() @ text.t()
                else:
                    logits = method(batch)
                outputs.append(logits.float().cpu())
                labels.append(batch_labels.long().cpu())
        if not outputs:
            return torch.empty(0, len(method.classnames)), torch.empty(0, dtype=torch.long)
        return torch.cat(outputs), torch.cat(labels)
    finally:
        method.train(was_training)


def predict_logits(
    method: PromptMethod,
    backbone: Backbone,
    items: Sequence[ItemLike] | StreamedSplit,
    cache: FeatureCache | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool | None = None,
) -> torch.Tensor:
    """Logits ``[N, C]`` (fp32, CPU) of `method` over `items`, in item order (stream order for a streamed split)."""
    return _logits_and_labels(method, backbone, items, cache, batch_size, num_workers, progress)[0]


def evaluate_method(
    method: PromptMethod,
    backbone: Backbone,
    items: Sequence[ItemLike] | StreamedSplit,
    cache: FeatureCache | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool | None = None,
) -> dict:
    """top1 / top5 / mean per-class recall (percent) and n_images of `method` on `items` (or a streamed split)."""
    logits, labels = _logits_and_labels(method, backbone, items, cache, batch_size, num_workers, progress)
    return classification_metrics(logits, labels)
