"""Frozen text features of hand-written prompts: the zero-shot classifier and the targets that LASP's
and KgCoOp's losses pull learned prompts towards. One implementation, so every frozen target is the
same tensor whatever calls it (no autograd, no autocast)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.prompts.templates import ClassDescriptions, fill_templates


def check_truncation(backbone: Backbone, classnames: Sequence[str], per_class: Sequence[Sequence[str]]) -> None:
    """Warn when prompts (`per_class`: each class's prompts) are cut to the text tower's context length,
    and refuse when the cut makes two classes' prompts identical (they would get identical features: a
    silent wrong answer).

    Cheap: a token covers at least one byte, so only prompts of at least L - 2 bytes are tokenized."""
    length = backbone.tokenize([""]).shape[1]
    candidates = [(c, p) for c, prompts in enumerate(per_class) for p in prompts if len(p.encode()) >= length - 2]
    if not candidates:
        return
    eot = backbone.eot_index(backbone.tokenize([p for _, p in candidates]))
    cut_classes = sorted({c for (c, _), e in zip(candidates, eot.tolist()) if e >= length - 1})
    if not cut_classes:
        return
    rows: dict[tuple, int] = {}
    for c in cut_classes:
        tokens = backbone.tokenize(list(per_class[c]))
        other = rows.setdefault(tuple(tuple(row.tolist()) for row in tokens), c)
        if other != c and classnames[other] != classnames[c]:
            raise VLPromptError(
                f"class names {classnames[other]!r:.80} and {classnames[c]!r:.80} give identical prompts once cut to the "
                f"text tower's {length} tokens: they would get identical features. Shorten the class names"
            )
    warnings.warn(
        f"{len(cut_classes)} class name(s) make prompts longer than the text tower's {length} tokens and are cut "
        f"(e.g. {classnames[cut_classes[0]]!r:.80})", stacklevel=3,
    )


def _encode_prompts(backbone: Backbone, prompts: list[str], batch_size: int, normalize: bool = True) -> torch.Tensor:
    """``[N, D]`` fp32 text features (L2-normalised unless `normalize` is False), without autograd and
    outside autocast."""
    device = backbone.device
    with torch.inference_mode(), torch.autocast(device.type, enabled=False):
        encoded = [backbone.encode_text(prompts[i : i + batch_size]).float() for i in range(0, len(prompts), batch_size)]
        return torch.cat([F.normalize(e, dim=-1) for e in encoded] if normalize else encoded)


def handcrafted_features(
    backbone: Backbone, classnames: Sequence[str], templates: Sequence[str] | ClassDescriptions, batch_size: int = 1024,
    normalize: bool = True,
) -> torch.Tensor:
    """``[T, C, D]`` fp32 on the backbone's device, each prompt's text feature L2-normalised (raw with
    ``normalize=False``, as PromptSRC averages them).

    Class names go in with underscores as spaces (`fill_templates`). Computed without autograd and
    outside autocast, so it is the exact frozen target whatever context it is called from. Per-class
    descriptions need the same number of sentences for every class here (template t of every class).
    """
    per_class = fill_templates(templates, classnames)
    counts = {len(p) for p in per_class}
    if len(counts) > 1:
        raise VLPromptError(
            "per-class descriptions with different numbers of sentences per class cannot serve as templates "
            f"shared by all classes here ({min(counts)}..{max(counts)} sentences); use '{{}}' templates"
        )
    check_truncation(backbone, classnames, per_class)
    encoded = _encode_prompts(backbone, [p for sentences in per_class for p in sentences], batch_size, normalize)
    return encoded.view(len(classnames), len(per_class[0]), -1).transpose(0, 1).contiguous().clone()


def raw_mean_classifier(
    backbone: Backbone, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 1024
) -> torch.Tensor:
    """``[C, D]``: the mean of the *unnormalised* text features over templates, then L2-normalised
    (PromptSRC's released frozen text features; CLIP's recipe, `text_classifier`, normalises first)."""
    raw = handcrafted_features(backbone, classnames, templates, batch_size, normalize=False)
    return F.normalize(raw.mean(dim=0), dim=-1)


def text_classifier(
    backbone: Backbone, classnames: Sequence[str], templates: Sequence[str] | ClassDescriptions, batch_size: int = 1024
) -> torch.Tensor:
    """Zero-shot class weights ``[C, D]`` (fp32, on the backbone's device): CLIP's ensembling recipe.

    Each class's prompts are encoded and L2-normalised, averaged over templates in feature space,
    then re-normalised. The result is an ordinary tensor, usable as a frozen target in a loss.
    Per-class descriptions (CuPL): each class averages its own sentences, however many.
    """
    per_class = fill_templates(templates, classnames)
    if len({len(p) for p in per_class}) == 1:
        per_template = handcrafted_features(backbone, classnames, templates, batch_size)
        return F.normalize(per_template.mean(dim=0), dim=-1)
    check_truncation(backbone, classnames, per_class)
    encoded = _encode_prompts(backbone, [p for sentences in per_class for p in sentences], batch_size)
    means, start = [], 0
    for sentences in per_class:
        means.append(encoded[start : start + len(sentences)].mean(dim=0))
        start += len(sentences)
    return F.normalize(torch.stack(means), dim=-1).clone()
