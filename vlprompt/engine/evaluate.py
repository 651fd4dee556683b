"""Evaluate any method on labelled items, encoding what is frozen once.

Image features come from the feature cache (or are extracted once) unless the method needs images.
When the text side does not depend on the image (``class_features()`` is not None) it is encoded
once for the whole evaluation, not per batch as CoOp's trainer does (reference §4.2 step 6).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from vlprompt.backbones.base import Backbone
from vlprompt.engine.cache import FeatureCache
from vlprompt.engine.logging import progress_bar
from vlprompt.engine.metrics import classification_metrics
from vlprompt.engine.views import ItemLike, SeededImages
from vlprompt.methods.base import PromptMethod


def _eval_features(
    backbone: Backbone, items: Sequence[ItemLike], cache: FeatureCache | None, batch_size: int, num_workers: int,
    progress: bool | None,
) -> torch.Tensor:
    if cache is not None:
        return cache.get(backbone, items, backbone.eval_transform, views=1)[0]
    from vlprompt.engine.features import extract_image_features

    return extract_image_features(
        backbone, items, backbone.eval_transform, batch_size=batch_size, num_workers=num_workers,
        progress=progress is not False,
    )


def _no_seed(index: int) -> int:
    return 0  # the eval transform is deterministic


@torch.no_grad()
def predict_logits(
    method: PromptMethod,
    backbone: Backbone,
    items: Sequence[ItemLike],
    cache: FeatureCache | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool | None = None,
) -> torch.Tensor:
    """Logits ``[N, C]`` (fp32, CPU) of `method` over `items`, in item order."""
    was_training = method.training
    method.eval()
    device = backbone.device
    try:
        text = method.class_features()
        text = text.float().to(device) if text is not None else None
        scale = backbone.logit_scale.float()
        outputs = []
        if not method.needs_images:
            features = _eval_features(backbone, items, cache, batch_size, num_workers, progress)
            chunks = features.split(batch_size)
            for feats in progress_bar(chunks, desc="evaluate", enabled=progress):
                feats = feats.to(device)
                if text is not None:
                    logits = scale * feats @ text.t()
                else:
                    logits = method({"features": feats})
                outputs.append(logits.float().cpu())
        else:
            dataset = SeededImages(items, backbone.eval_transform, _no_seed)
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
            for images, _, _ in progress_bar(loader, desc="evaluate", enabled=progress):
                batch = {"images": images.to(device)}
                if text is not None:
                    logits = scale * method.image_features(batch).float() @ text.t()
                else:
                    logits = method(batch)
                outputs.append(logits.float().cpu())
        if not outputs:
            return torch.empty(0, len(method.classnames))
        return torch.cat(outputs)
    finally:
        method.train(was_training)


def evaluate_method(
    method: PromptMethod,
    backbone: Backbone,
    items: Sequence[ItemLike],
    cache: FeatureCache | None = None,
    batch_size: int = 256,
    num_workers: int = 0,
    progress: bool | None = None,
) -> dict:
    """top1 / top5 / mean per-class recall (percent) and n_images of `method` on `items`."""
    logits = predict_logits(method, backbone, items, cache, batch_size, num_workers, progress)
    labels = torch.tensor([int(item.label) for item in items], dtype=torch.long)
    return classification_metrics(logits, labels)
