"""Frozen text features of hand-written prompts: the zero-shot classifier and the targets that LASP's
and KgCoOp's losses pull learned prompts towards. One implementation, so every frozen target is the
same tensor whatever calls it (no autograd, no autocast)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.prompts.templates import fill_templates


def handcrafted_features(
    backbone: Backbone, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 1024,
    normalize: bool = True,
) -> torch.Tensor:
    """``[T, C, D]`` fp32 on the backbone's device, each prompt's text feature L2-normalised (raw with
    ``normalize=False``, as PromptSRC averages them).

    Class names go in with underscores as spaces (`fill_templates`). Computed without autograd and
    outside autocast, so it is the exact frozen target whatever context it is called from.
    """
    prompts = [p for per_class in fill_templates(templates, classnames) for p in per_class]  # class-major
    device = backbone.device
    with torch.inference_mode(), torch.autocast(device.type, enabled=False):
        encoded = torch.cat(
            [
                _maybe_normalize(backbone.encode_text(prompts[i : i + batch_size]).float(), normalize)
                for i in range(0, len(prompts), batch_size)
            ]
        )
    return encoded.view(len(classnames), len(templates), -1).transpose(0, 1).contiguous().clone()


def _maybe_normalize(x: torch.Tensor, normalize: bool) -> torch.Tensor:
    return F.normalize(x, dim=-1) if normalize else x


def raw_mean_classifier(
    backbone: Backbone, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 1024
) -> torch.Tensor:
    """``[C, D]``: the mean of the *unnormalised* text features over templates, then L2-normalised
    (PromptSRC's released frozen text features; CLIP's recipe, `text_classifier`, normalises first)."""
    raw = handcrafted_features(backbone, classnames, templates, batch_size, normalize=False)
    return F.normalize(raw.mean(dim=0), dim=-1)


def text_classifier(
    backbone: Backbone, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 1024
) -> torch.Tensor:
    """Zero-shot class weights ``[C, D]`` (fp32, on the backbone's device): CLIP's ensembling recipe.

    Each class's prompts are encoded and L2-normalised, averaged over templates in feature space,
    then re-normalised. The result is an ordinary tensor, usable as a frozen target in a loss.
    """
    per_template = handcrafted_features(backbone, classnames, templates, batch_size)
    return F.normalize(per_template.mean(dim=0), dim=-1)
