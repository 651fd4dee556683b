"""Frozen features computed once: L2-normalised image features and ensembled class text features."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vlprompt.backbones.base import Backbone
from vlprompt.data.classification import ImageItems, Item
from vlprompt.prompts.templates import fill_templates


def show_progress(progress: bool) -> bool:
    """Bars only for a person watching: off when asked, or when stderr is not a terminal (logs, CI)."""
    return progress and sys.stderr.isatty()


def extract_image_features(
    backbone: Backbone,
    items: Sequence[Item],
    transform: Callable | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    source: str | None = None,
) -> torch.Tensor:
    """Encode every item's image once: ``[N, D]`` fp32, L2-normalised, in item order, on the CPU.

    `transform` defaults to the backbone's eval transform; `source` (the split file) is named in
    decode errors. The result is an ordinary tensor (cloned out of inference mode), so training
    code may use it in autograd graphs.
    """
    with torch.inference_mode():
        features = _encode_images(backbone, items, transform, batch_size, num_workers, progress, source)
    return features.clone()


def _encode_images(
    backbone: Backbone,
    items: Sequence[Item],
    transform: Callable | None,
    batch_size: int,
    num_workers: int,
    progress: bool,
    source: str | None,
) -> torch.Tensor:
    device = backbone.device
    loader = DataLoader(
        ImageItems(items, transform or backbone.eval_transform, source),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    features = []
    bar = tqdm(loader, desc="image features", unit="batch", disable=not show_progress(progress), leave=False)
    for images, _, _ in bar:
        encoded = backbone.encode_image(images.to(device, non_blocking=True))
        features.append(F.normalize(encoded.float(), dim=-1).cpu())
    if not features:
        return torch.empty(0, backbone.identity.embed_dim)
    return torch.cat(features)


def text_classifier(
    backbone: Backbone, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 1024
) -> torch.Tensor:
    """Zero-shot class weights ``[C, D]`` (fp32, on the backbone's device): CLIP's ensembling recipe.

    Each class's prompts are encoded and L2-normalised, averaged over templates in feature space,
    then re-normalised. All ``C * T`` prompts go through the text tower in batches of `batch_size`.
    The result is an ordinary tensor, usable as a frozen target in a loss.
    """
    with torch.inference_mode():
        weights = _ensemble(backbone, classnames, templates, batch_size)
    return weights.clone()


def _ensemble(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str], batch_size: int) -> torch.Tensor:
    prompts = [p for per_class in fill_templates(templates, classnames) for p in per_class]
    encoded = torch.cat(
        [
            F.normalize(backbone.encode_text(prompts[i : i + batch_size]).float(), dim=-1)
            for i in range(0, len(prompts), batch_size)
        ]
    )
    per_class = encoded.view(len(classnames), len(templates), -1)
    return F.normalize(per_class.mean(dim=1), dim=-1)
