"""`vlprompt predict`: top-k labels and scores for image files, JSON output, replaced class names."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlprompt.cli import main
from vlprompt.methods import build_method
from vlprompt.zoo import predict, save_prompt

CLASSES = ["red circle", "blue square", "green triangle"]


@pytest.fixture
def images(tmp_path):
    paths = []
    for i, color in enumerate(["red", "blue"]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (40, 30), color).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture
def prompt(tiny_vit, tmp_path, monkeypatch):
    monkeypatch.delenv("VLPROMPT_ZOO", raising=False)
    torch.manual_seed(7)
    return str(save_prompt(tmp_path / "coop", build_method("coop", tiny_vit, CLASSES, {"n_ctx": 2})))


def test_predict_api_matches_the_method(prompt, images, tiny_vit):
    results = predict(prompt, images, top_k=2, backbone=tiny_vit)
    assert [r["image"] for r in results] == images
    for result in results:
        assert len(result["top"]) == 2 and result["top"][0]["label"] in CLASSES
        assert result["top"][0]["score"] >= result["top"][1]["score"]
    everything = predict(prompt, images[:1], top_k=10, backbone=tiny_vit)[0]["top"]
    assert len(everything) == 3 and abs(sum(t["score"] for t in everything) - 1) < 1e-5


def test_cli_prints_table_and_json(prompt, images, capsys):
    assert main(["predict", "--prompt", prompt, *images, "--top-k", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and len(lines) == 6 and lines[1].split()[-1].replace(".", "").isdigit()
    assert main(["predict", "--prompt", prompt, images[0], "--json", "--classes", "cat,dog"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert {t["label"] for t in result["top"]} == {"cat", "dog"}


def test_cli_classes_from_a_file(prompt, images, tmp_path, capsys):
    (tmp_path / "classes.txt").write_text("sun\nmoon\n\nstar\n")
    assert main(["predict", "--prompt", prompt, images[0], "--json", "--classes", str(tmp_path / "classes.txt")]) == 0
    assert {t["label"] for t in json.loads(capsys.readouterr().out)[0]["top"]} == {"sun", "moon", "star"}


def test_cli_refuses_new_classes_for_class_specific_prompts(tiny_vit, images, tmp_path, capsys):
    path = save_prompt(tmp_path / "csc", build_method("coop", tiny_vit, CLASSES, {"n_ctx": 2, "class_specific": True}))
    assert main(["predict", "--prompt", str(path), images[0], "--classes", "a,b,c"]) == 2
    assert "cannot take new class names" in capsys.readouterr().err


def test_cli_bad_inputs_fail_with_one_line(prompt, tmp_path, capsys):
    assert main(["predict", "--prompt", prompt, str(tmp_path / "missing.png")]) == 2
    assert capsys.readouterr().err.strip() == f"error: image not found: {tmp_path / 'missing.png'}"
    assert main(["predict", "--prompt", "no-such-prompt", str(tmp_path / "x.png")]) == 2
    assert "no prompt checkpoint at 'no-such-prompt'" in capsys.readouterr().err
