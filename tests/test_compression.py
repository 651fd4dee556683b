"""Soft prompt compression: the target is the template ensemble's class features (checked against
open_clip's own text path), the loss is what it says, training reproduces the target without images,
and `vlprompt compress` writes an ordinary prompt that `load_prompt` / `predict` take."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vlprompt.cli import main
from vlprompt.errors import VLPromptError
from vlprompt.methods.compression import (
    CompressConfig,
    compress,
    compression_loss,
    compression_target,
    ensemble_cost,
    prompt_cost,
    read_descriptions,
)
from vlprompt.zoo import load_prompt, read_prompt_meta

CLASSES = ["red circle", "blue square", "green star", "yellow heart"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}.", "{} in a picture.", "itap of a {}."]


def _library_ensemble(backbone, classnames, templates) -> torch.Tensor:
    """CLIP's recipe through open_clip's own `encode_text` (not vlprompt's embedding path)."""
    rows = []
    with torch.no_grad():
        for name in classnames:
            feats = backbone.model.encode_text(backbone.tokenize([t.format(name) for t in templates]))
            rows.append(F.normalize(F.normalize(feats, dim=-1).mean(dim=0), dim=-1))
    return torch.stack(rows)


def test_target_is_the_ensembles_class_features(tiny_vit):
    target = compression_target(tiny_vit, CLASSES, templates=TEMPLATES)
    torch.testing.assert_close(target, _library_ensemble(tiny_vit, CLASSES, TEMPLATES), rtol=0, atol=1e-5)


def test_description_target_averages_each_class_own_sentences(tiny_vit, tmp_path):
    path = tmp_path / "desc.txt"
    path.write_text("# comment\nred circle: a round red thing\nred circle: a red disc\nblue square: four blue sides\n")
    descriptions = read_descriptions(path)
    assert descriptions == {"red circle": ["a round red thing", "a red disc"], "blue square": ["four blue sides"]}
    target = compression_target(tiny_vit, ["red circle", "blue square"], descriptions=descriptions)
    with torch.no_grad():
        red = tiny_vit.model.encode_text(tiny_vit.tokenize(descriptions["red circle"]))
        red = F.normalize(F.normalize(red, dim=-1).mean(0), dim=-1)
    torch.testing.assert_close(target[0], red, rtol=0, atol=1e-5)
    with pytest.raises(VLPromptError, match="no descriptions for 1 classes"):
        compression_target(tiny_vit, ["red circle", "green star"], descriptions=descriptions)
    (tmp_path / "bad.txt").write_text("no colon here\n")
    with pytest.raises(VLPromptError, match="line 1: expected 'class: description'"):
        read_descriptions(tmp_path / "bad.txt")


def test_loss_by_hand():
    target = torch.eye(3)
    features = F.normalize(torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    config = CompressConfig(temperature=0.5)
    loss, stats = compression_loss(features, target, config)
    cos = torch.tensor([2**-0.5, 1.0, 1.0])
    logits = target @ features.t() / 0.5
    expected = (1 - cos).mean() + F.cross_entropy(logits, torch.arange(3))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert stats["min_cosine"] == pytest.approx(2**-0.5, abs=1e-6) and stats["t2t_acc"] == pytest.approx(100.0)


def test_compress_reproduces_the_target_and_beats_its_start(tiny_vit):
    target = compression_target(tiny_vit, CLASSES, templates=TEMPLATES)
    _, start = compress(tiny_vit, CLASSES, target, CompressConfig(steps=1, lr=1e-8))
    method, stats = compress(tiny_vit, CLASSES, target, CompressConfig(steps=60, lr=0.05))
    assert stats["cosine"] > start["cosine"] + 0.15 and stats["cosine"] > 0.85
    assert stats["t2t_acc"] == 100.0
    assert method.ctx.shape == (4, tiny_vit.identity.width)
    # cost: the ensemble runs T passes per class; the compressed prompt one, of n_ctx + class + '.' tokens
    ens, comp = ensemble_cost(tiny_vit, CLASSES, TEMPLATES), prompt_cost(method)
    assert ens["passes"] == 16 and comp["passes"] == 4
    lengths = [int(tiny_vit.eot_index(tiny_vit.tokenize([c + "."]))[0]) + 4 + 1 for c in CLASSES]
    assert comp["positions"] == sum(lengths)


def test_cli_writes_an_ordinary_prompt(tiny_vit, tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES))
    bank = tmp_path / "bank.txt"
    bank.write_text("\n".join(TEMPLATES))
    out = tmp_path / "compressed"
    code = main(["compress", "--templates", str(bank), "--classes", str(classes), "--n-ctx", "2", "--steps", "5",
                 "--backbone", "vlprompt-test-vit", "--pretrained", "none", "--device", "cpu", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "16 passes" in printed and "-> 4 /" in printed
    meta = read_prompt_meta(out)
    assert meta["method"] == "coop" and meta["classnames"] == CLASSES
    assert meta["training"]["images"] == 0 and meta["compression"]["config"]["n_ctx"] == 2
    loaded = load_prompt(out, tiny_vit, classnames=["purple ring", "orange cross"])  # class-agnostic
    assert loaded.class_features().shape == (2, tiny_vit.identity.embed_dim)
    json.dumps(meta)
    assert main(["compress", "--classes", "a,b", "--out", str(out)]) == 2
    assert "needs --templates or --descriptions" in capsys.readouterr().err
