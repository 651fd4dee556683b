"""Classify image files with a saved prompt: top-k labels and scores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.data.folder import IMAGE_EXTENSIONS
from vlprompt.data.images import load_image
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import PromptMethod
from vlprompt.methods.label_space import PairLabels
from vlprompt.zoo.checkpoint import load_prompt


@torch.inference_mode()
def predict_images(
    method: PromptMethod, images: Sequence[str | os.PathLike], top_k: int = 5, batch_size: int = 32
) -> list[dict[str, Any]]:
    """``[{"image": path, "top": [{"label", "score"}, ...]}, ...]``; scores are softmax probabilities."""
    if top_k < 1:
        raise VLPromptError(f"top-k must be at least 1, got {top_k}")
    backbone = method.backbone
    k = min(top_k, len(method.classnames))
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        paths = list(images[start : start + batch_size])
        pixels = torch.stack([backbone.eval_transform(load_image(p)) for p in paths]).to(backbone.device, backbone.dtype)
        probs = method({"images": pixels}).float().softmax(dim=-1)
        scores, indices = probs.topk(k, dim=-1)
        for path, row_scores, row_indices in zip(paths, scores.tolist(), indices.tolist()):
            top = [{"label": method.classnames[i], "score": s, **_parts(method, i)} for s, i in zip(row_scores, row_indices)]
            results.append({"image": str(path), "top": top})
    return results


def _parts(method: PromptMethod, index: int) -> dict[str, str]:
    """Attribute and object of a predicted pair (CZSL prompts); nothing for classes."""
    labels = method.label_space
    if isinstance(labels, PairLabels):
        a, o = labels.pairs[index]
        return {"attr": labels.attrs[a], "obj": labels.objs[o]}
    return {}


@torch.inference_mode()
def set_user_examples(method: PromptMethod, folder: str | os.PathLike, batch_size: int = 32) -> int:
    """Personalise `method` (a prompt adapter such as ``persoma``) with the images in `folder`: they are
    encoded by the frozen image tower and handed to ``method.set_user_examples``. Returns their count."""
    hook = getattr(method, "set_user_examples", None)
    if hook is None:
        raise VLPromptError(f"{method.name}: takes no user examples (a prompt adapter such as persoma does)")
    root = Path(folder)
    if not root.is_dir():
        raise VLPromptError(f"user examples folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise VLPromptError(f"user examples folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    backbone = method.backbone
    feats = []
    for start in range(0, len(paths), batch_size):
        pixels = torch.stack([backbone.eval_transform(load_image(p)) for p in paths[start : start + batch_size]])
        feats.append(F.normalize(backbone.encode_image(pixels.to(backbone.device, backbone.dtype)).float(), dim=-1))
    hook(torch.cat(feats).clone())
    return len(paths)


def predict(
    prompt: str | os.PathLike | PromptMethod,
    images: Sequence[str | os.PathLike],
    *,
    classnames: Sequence[str] | None = None,
    top_k: int = 5,
    backbone: Backbone | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    user_examples: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Top-k predictions of a prompt (path, zoo name or loaded method) for image files.

    `classnames` replaces the trained class names where the method allows it (a clear error otherwise);
    `user_examples`, a folder of the user's images, personalises a prompt adapter first (no gradient step).
    """
    if not images:
        raise VLPromptError("no images given")
    if isinstance(prompt, PromptMethod):
        method = prompt
        if classnames is not None and list(classnames) != method.classnames:
            method.set_label_space(list(classnames))
    else:
        method = load_prompt(prompt, backbone, classnames, device=device)
    if user_examples is not None:
        set_user_examples(method, user_examples, batch_size)
    return predict_images(method, images, top_k=top_k, batch_size=batch_size)


def format_predictions(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        lines.append(result["image"])
        shown = [f"{t['attr']} + {t['obj']}" if "attr" in t else t["label"] for t in result["top"]]
        width = max(len(s) for s in shown)
        lines.extend(f"  {s:<{width}}  {t['score']:.4f}" for s, t in zip(shown, result["top"]))
    return "\n".join(lines)
