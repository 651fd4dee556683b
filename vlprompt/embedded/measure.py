"""Zero-shot accuracy of the world CLIP on the exported datasets (how the domain shift was tuned).

Reads the files exactly as written (PNG -> uint8 -> the eval transform's arithmetic) and scores
"a photo of a {classname}." prompts; for CZSL, closed-world test accuracy over all pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlprompt.embedded.batches import normalize_images
from vlprompt.embedded.export import CZSL_SPLIT
from vlprompt.embedded.pretrain import create_world_model, tokenizer
from vlprompt.embedded.weights import load_world_clip_state_dict

TEMPLATE = "a photo of a {}."


def load_world_clip() -> torch.nn.Module:
    """The pretrained world CLIP in eval mode (bundled/cached weights; trains only if neither)."""
    model = create_world_model()
    model.load_state_dict(load_world_clip_state_dict())
    return model.eval()


@torch.no_grad()
def _accuracy(model: torch.nn.Module, paths: list[Path], labels: list[int], classnames: list[str]) -> float:
    text = F.normalize(model.encode_text(tokenizer()([TEMPLATE.format(c) for c in classnames])), dim=-1)
    correct = 0
    for start in range(0, len(paths), 500):
        chunk = paths[start : start + 500]
        images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in chunk])
        feats = F.normalize(model.encode_image(normalize_images(images)), dim=-1)
        pred = (feats @ text.T).argmax(1)
        correct += int((pred == torch.tensor(labels[start : start + 500])).sum())
    return correct / len(paths)


def classification_zero_shot(model: torch.nn.Module, folder: Path, split: str = "test") -> float:
    """Top-1 on a CoOp-format dataset folder's `split`."""
    data = json.loads((folder / f"split_{folder.name}.json").read_text())
    names: dict[int, str] = {}
    for _, label, classname in data["train"] + data["val"] + data["test"]:
        names[label] = classname
    classnames = [names[i] for i in range(len(names))]
    items = data[split]
    return _accuracy(model, [folder / "images" / p for p, _, _ in items], [y for _, y, _ in items], classnames)


def czsl_zero_shot(model: torch.nn.Module, folder: Path, split: str = "test") -> float:
    """Closed-world pair accuracy over `train ∪ split` pairs, "a photo of a {attr} {obj}."."""
    pair_files = [folder / CZSL_SPLIT / f"{s}_pairs.txt" for s in ("train", split)]
    pairs = sorted({tuple(line.split()) for f in pair_files for line in f.read_text().splitlines() if line})
    index = {p: i for i, p in enumerate(pairs)}
    meta = torch.load(folder / f"metadata_{CZSL_SPLIT}.t7", weights_only=True)
    items = [m for m in meta if m["set"] == split]
    return _accuracy(
        model,
        [folder / "images" / m["image"] for m in items],
        [index[(m["attr"], m["obj"])] for m in items],
        [f"{a} {o}" for a, o in pairs],
    )


def measure_world_zero_shot(folders: dict[str, Path], model: torch.nn.Module | None = None) -> dict[str, float]:
    """Zero-shot test accuracy per exported dataset."""
    model = model or load_world_clip()
    return {
        name: (czsl_zero_shot if name == "world_czsl" else classification_zero_shot)(model, folder)
        for name, folder in folders.items()
    }
