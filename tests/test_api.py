"""The public API end to end on a tiny random backbone and a generated image-folder dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlprompt import api
from vlprompt.config import ExperimentConfig
from vlprompt.errors import VLPromptError
from vlprompt.zoo import load_prompt

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 40)}


@pytest.fixture()
def colour_folder(tmp_path, monkeypatch):
    """folder:<root> with train/val/test splits of solid-colour images (+ noise), 4 classes."""
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, count in {"train": 6, "val": 2, "test": 4}.items():
        for name, rgb in COLOURS.items():
            for i in range(count):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                path = tmp_path / "colours" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return f"folder:{tmp_path / 'colours'}"


def _config(dataset: str, out, method: dict, protocol: dict, **train) -> ExperimentConfig:
    return ExperimentConfig.from_dict(
        {
            "dataset": {"name": dataset},
            "method": method,
            "protocol": protocol,
            "train": {"epochs": 2, "batch_size": 4, **train},
            "output_dir": str(out),
        }
    )


def test_coop_few_shot_trains_saves_and_reloads(tiny_vit, colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path / "run", {"name": "coop", "n_ctx": 2}, {"shots": 2, "seed": 1})
    result = api.run_experiment(config, backbone=tiny_vit)
    assert set(result["metrics"]["all"]) >= {"top1", "top5", "mean_per_class_recall", "n_images"}
    assert result["metrics"]["all"]["n_images"] == 16 and result["num_train_items"] == 8
    saved = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert saved["metrics"] == result["metrics"]
    assert saved["threads"] == 1  # a tiny model trains on one intra-op thread (vlprompt.threads)
    assert (tmp_path / "run" / "splits").is_dir()  # the sampled items, for an exact repeat
    dataset = api.get_dataset(colour_folder)
    reloaded = api.evaluate_prompt(result["prompt"], tiny_vit, dataset)
    assert reloaded["metrics"] == result["metrics"]["all"]
    method = load_prompt(result["prompt"], tiny_vit)
    assert method.classnames == dataset.classnames


def test_base_to_new_reports_harmonic_mean(tiny_vit, colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path / "b2n", {"name": "coop", "n_ctx": 2}, {"name": "base-to-new", "shots": 2})
    result = api.run_experiment(config, backbone=tiny_vit)
    base, new = result["metrics"]["base"]["top1"], result["metrics"]["new"]["top1"]
    assert result["train_classnames"] == ["blue", "green"]  # sorted folders: first half is base
    assert result["metrics"]["base"]["n_images"] == 8 and result["metrics"]["new"]["n_images"] == 8
    expected = 0.0 if base + new == 0 else 2 * base * new / (base + new)
    assert result["metrics"]["hm"] == pytest.approx(expected)


def test_linear_probe_and_zero_shot_need_no_trainer(tiny_vit, colour_folder, tmp_path):
    probe = api.run_experiment(
        _config(colour_folder, tmp_path / "lp", {"name": "linear-probe"}, {"shots": 4}), backbone=tiny_vit
    )
    assert probe["metrics"]["all"]["top1"] == 100.0  # solid colours are linearly separable
    zero = api.run_experiment(
        _config(colour_folder, tmp_path / "zs", {"name": "zero-shot"}, {"name": "all"}), backbone=tiny_vit
    )
    assert "prompt" not in zero and zero["metrics"]["all"]["n_images"] == 16


def test_config_errors_name_the_key_when_loaded(tmp_path):
    """Typos fail when the config is built: before any backbone, dataset or file is touched."""
    with pytest.raises(VLPromptError, match="Did you mean 'epochs'"):
        _config("world_shapes", tmp_path / "e1", {"name": "coop"}, {"shots": 1}, epoch=3)
    with pytest.raises(VLPromptError, match="Did you mean 'n_ctx'"):
        _config("world_shapes", tmp_path / "e2", {"name": "coop", "nctx": 2}, {"shots": 1})
    with pytest.raises(VLPromptError, match="unknown protocol 'fewshot'. Did you mean 'few-shot'"):
        _config("world_shapes", tmp_path / "e3", {"name": "coop"}, {"name": "fewshot"})
    with pytest.raises(VLPromptError, match="Did you mean 'protocol'"):
        ExperimentConfig.load(None, ["protocl.shots=3"])
    with pytest.raises(VLPromptError, match="lr must be float, got str 'abc'"):
        ExperimentConfig.load(None, ["train.lr=abc"])
    with pytest.raises(VLPromptError, match="unknown method 'copo'. Did you mean 'coop'"):
        ExperimentConfig.load(None, ["method.name=copo"])
    with pytest.raises(VLPromptError, match="does not do czsl"):
        ExperimentConfig.load(None, ["task=czsl", "method.name=lasp"])
    assert ExperimentConfig.load(None, ["train.lr=2e-3"]).train.lr == 0.002  # YAML 1.2 numbers
    assert not any(tmp_path.iterdir())  # nothing written


def test_virtual_classes_new_are_the_new_half_and_recorded(tiny_vit, colour_folder, tmp_path):
    method = {"name": "lasp", "n_ctx": 2, "templates": ["a photo of a {}."], "virtual_classes": "new"}
    config = _config(colour_folder, tmp_path / "lv", method, {"name": "base-to-new", "shots": 2}, epochs=1)
    result = api.run_experiment(config, backbone=tiny_vit)
    assert result["virtual_classnames"] == ["red", "yellow"]
    assert result["loss_classnames"] == ["blue", "green", "red", "yellow"]
    bad = _config(colour_folder, tmp_path / "lv2", method, {"shots": 2}, epochs=1)
    with pytest.raises(VLPromptError, match="needs protocol base-to-new"):
        api.run_experiment(bad, backbone=tiny_vit)
