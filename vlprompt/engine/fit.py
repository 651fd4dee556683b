"""Fit any method on training items: by the trainer, or in one shot on cached features (a method that
declares ``fits_in_one_shot``, such as the linear probe), or not at all (nothing trainable)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from vlprompt.engine.cache import FeatureCache
from vlprompt.engine.selection import EpochSelector
from vlprompt.engine.train_config import TrainConfig
from vlprompt.engine.trainer import Trainer
from vlprompt.engine.views import ItemLike
from vlprompt.methods.base import PromptMethod


def fit_method(
    method: PromptMethod,
    train: Sequence[ItemLike],
    val: Sequence[ItemLike] | None,
    config: TrainConfig,
    cache: FeatureCache,
    resume: bool = False,
    train_transform: Callable | None = None,
    selector: EpochSelector | None = None,
) -> dict[str, Any]:
    """Train or fit `method`; returns what the trainer (or the one-shot fit) reports. `train_transform`
    and `selector` go to the `Trainer` (a task's own augmentation and epoch selection)."""
    backbone = method.backbone
    if method.fits_in_one_shot:
        features = cache.get(backbone, list(train), backbone.eval_transform)[0]
        labels = torch.tensor([int(i.label) for i in train])
        val_features = cache.get(backbone, list(val), backbone.eval_transform)[0] if val else None
        val_labels = torch.tensor([int(i.label) for i in val]) if val else None
        return method.fit_features(features, labels, val_features, val_labels)
    if any(p.requires_grad for p in method.parameters()):
        return Trainer(method, config, cache=cache, train_transform=train_transform, selector=selector).fit(
            train, val or None, resume=resume)
    return {}
