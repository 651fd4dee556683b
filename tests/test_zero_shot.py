"""Zero-shot evaluation against a direct computation with the backbone's own calls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlprompt.backbones import create_backbone
from vlprompt.data import read_coop_split
from vlprompt.engine import (
    classification_metrics,
    evaluate_zero_shot,
    extract_image_features,
    format_results_table,
)
from vlprompt.prompts.handcrafted import text_classifier

CLASSES = ["cat", "golden_retriever", "fish"]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("vlprompt-test-vit")


@pytest.fixture()
def dataset(tmp_path):
    """Five images per class in CoOp layout, each class a different base colour plus noise."""
    rng = np.random.default_rng(0)
    image_dir = tmp_path / "mini" / "images"
    entries = []
    for label, classname in enumerate(CLASSES):
        for i in range(5):
            pixels = np.clip(rng.normal(80 * label + 40, 30, (20, 24, 3)), 0, 255).astype(np.uint8)
            relative = f"{classname}/{i}.jpg"
            (image_dir / classname).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(image_dir / relative)
            entries.append([relative, label, classname])
    split_file = tmp_path / "mini" / "split_mini.json"
    split_file.write_text(json.dumps({"train": entries[:3], "test": entries}))
    return read_coop_split(image_dir, split_file, "mini", "a photo of a {}.", verify=True)


def direct_image_features(backbone, paths: list[Path]) -> torch.Tensor:
    images = torch.stack([backbone.eval_transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return F.normalize(backbone.encode_image(images), dim=-1)


def test_image_features_match_direct_encoding(backbone, dataset):
    items = dataset.split("test")
    features = extract_image_features(backbone, items, batch_size=4, progress=False)
    assert features.shape == (15, 32) and features.dtype == torch.float32
    torch.testing.assert_close(features, direct_image_features(backbone, [i.path for i in items]))


def test_ensemble_averages_normalised_features(backbone):
    templates = ["a photo of a {}.", "a {} in a video game.", "itap of my {}."]
    weights = text_classifier(backbone, CLASSES, templates, batch_size=4)  # batches cross class boundaries
    with torch.no_grad():
        expected = []
        for classname in CLASSES:
            prompts = [t.format(classname.replace("_", " ")) for t in templates]
            per_template = F.normalize(backbone.encode_text(prompts), dim=-1)
            expected.append(F.normalize(per_template.mean(dim=0), dim=-1))
    torch.testing.assert_close(weights, torch.stack(expected))
    assert torch.allclose(weights.norm(dim=-1), torch.ones(3))


def test_zero_shot_equals_direct_computation(backbone, dataset):
    result = evaluate_zero_shot(backbone, dataset, split="test", batch_size=4, progress=False)
    items = dataset.split("test")
    images = direct_image_features(backbone, [i.path for i in items])
    with torch.no_grad():
        text = F.normalize(backbone.encode_text([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES]), dim=-1)
    logits = images @ text.T
    labels = torch.tensor([i.label for i in items])
    top1 = 100.0 * (logits.argmax(dim=1) == labels).float().mean().item()
    assert result["metrics"]["top1"] == pytest.approx(top1)
    expected = classification_metrics(logits, labels)
    assert result["metrics"] == pytest.approx(expected)
    assert result["templates"] == ["a photo of a {}."]
    assert (result["dataset"], result["split"], result["method"]) == ("mini", "test", "zero-shot")
    assert result["backbone"]["name"] == "vlprompt-test-vit"
    json.dumps(result)  # JSON-able as is


def test_results_table(backbone, dataset):
    result = evaluate_zero_shot(backbone, dataset, split="train", templates="imagenet_select7", progress=False)
    assert len(result["templates"]) == 7 and result["metrics"]["n_images"] == 3
    table = format_results_table([result, {**result, "dataset": "a_longer_name"}])
    lines = table.splitlines()
    assert lines[0].split() == ["dataset", "method", "backbone", "top1", "top5", "mean", "recall", "n"]
    assert len(lines) == 4 and len({len(line) for line in lines[:2]}) == 1
    assert "vlprompt-test-vit/random" in lines[2] and lines[3].startswith("a_longer_name")


def test_frozen_features_usable_in_autograd(backbone, dataset):
    """Inference-mode tensors cannot be saved for backward; the outputs must be ordinary tensors."""
    images = extract_image_features(backbone, dataset.split("train"), progress=False)
    text = text_classifier(backbone, CLASSES, ["a photo of a {}."])
    learned = torch.zeros_like(text, requires_grad=True)
    ((images @ (text + learned).T).sum() + (learned * text).sum()).backward()
    assert learned.grad is not None
