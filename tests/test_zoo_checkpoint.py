"""Prompt checkpoint format: contents, plain readability, backbone/class checks, export."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlprompt.errors import VLPromptError
from vlprompt.methods import build_method
from vlprompt.zoo import export_classifier, load_prompt, read_prompt_meta, save_prompt
from vlprompt.zoo.checkpoint import HUB_CONFIG, HUB_TENSORS, classnames_hash, tensors_hash, write_prompt_files

CLASSES = ["red circle", "blue square", "green triangle"]


@pytest.fixture
def coop(tiny_vit):
    torch.manual_seed(3)
    return build_method("coop", tiny_vit, CLASSES, {"n_ctx": 4})


def test_config_records_what_the_prompt_means(coop, tmp_path):
    path = save_prompt(
        tmp_path / "p", coop, training={"dataset": "world_shapes", "shots": 4, "seed": 1, "split_file_sha256": "ab"},
        metrics={"top1": 50.0},
    )
    meta = json.loads((tmp_path / "p.json").read_text())  # plain JSON, no vlprompt needed
    assert path == tmp_path / "p.safetensors"
    assert meta["format_version"] == 2 and meta["method"] == "coop" and meta["method_config"]["n_ctx"] == 4
    assert meta["backbone"]["name"] == "vlprompt-test-vit" and "weights_hash" in meta["backbone"]
    assert meta["classnames"] == CLASSES and meta["classnames_sha256"] == classnames_hash(CLASSES)
    assert meta["templates"] == ["{ctx} {class}."]
    assert meta["training"]["shots"] == 4 and meta["metrics"] == {"top1": 50.0}
    assert meta["tensors"] == {"ctx": {"shape": [4, 32], "dtype": "float32"}}
    tensors = load_file(str(path))  # plain safetensors
    assert meta["tensors_sha256"] == tensors_hash(tensors)
    assert torch.equal(tensors["ctx"], coop.ctx.detach())
    with safe_open(str(path), framework="pt") as handle:  # the same config travels in the header
        assert json.loads(handle.metadata()["vlprompt_config"]) == meta


def test_run_experiment_result_summary_fills_training_and_metrics(coop, tmp_path):
    result = {"dataset": "d", "protocol": {"name": "few-shot", "shots": 2, "seed": 3}, "metrics": {"all": {"top1": 1.0}},
              "num_train_items": 6}
    meta = read_prompt_meta(save_prompt(tmp_path / "p", coop, extra={"result": result}))
    assert meta["training"] == {"dataset": "d", "protocol": "few-shot", "shots": 2, "seed": 3, "num_train_items": 6}
    assert meta["metrics"] == {"all": {"top1": 1.0}} and meta["result"] == result


def test_round_trip_gives_the_same_classifier(coop, tiny_vit, tmp_path):
    save_prompt(tmp_path / "p", coop)
    loaded = load_prompt(tmp_path / "p.json", backbone=tiny_vit)
    assert not loaded.training and loaded.classnames == CLASSES
    with torch.no_grad():
        assert torch.allclose(loaded.class_features(), coop.class_features())


def test_lone_safetensors_and_hub_folder_are_complete_checkpoints(coop, tiny_vit, tmp_path):
    save_prompt(tmp_path / "p", coop)
    (tmp_path / "p.json").unlink()
    assert torch.equal(load_prompt(tmp_path / "p.safetensors", tiny_vit).ctx, coop.ctx)
    tensors, meta = load_file(str(tmp_path / "p.safetensors")), read_prompt_meta(tmp_path / "p.safetensors")
    write_prompt_files(tensors, meta, tmp_path / "hub" / HUB_TENSORS, tmp_path / "hub" / HUB_CONFIG)
    assert torch.equal(load_prompt(tmp_path / "hub", tiny_vit).ctx, coop.ctx)


def test_backbone_is_built_from_the_checkpoint_when_not_given(coop, tmp_path):
    save_prompt(tmp_path / "p", coop)
    loaded = load_prompt(tmp_path / "p")
    assert loaded.backbone.identity == coop.backbone.identity and torch.equal(loaded.ctx, coop.ctx)


def test_another_backbone_is_refused_naming_both(coop, tiny_rn, tmp_path):
    save_prompt(tmp_path / "p", coop)
    with pytest.raises(VLPromptError, match=r"trained on backbone vlprompt-test-vit .*not vlprompt-test-rn"):
        load_prompt(tmp_path / "p", backbone=tiny_rn)


def test_changed_tensors_are_detected(coop, tiny_vit, tmp_path):
    path = save_prompt(tmp_path / "p", coop)
    save_file({"ctx": torch.zeros(4, 32)}, str(path))
    with pytest.raises(VLPromptError, match="do not match the hash"):
        load_prompt(path, tiny_vit)


def test_missing_file_and_unknown_name_fail_clearly(tiny_vit, tmp_path, monkeypatch):
    monkeypatch.delenv("VLPROMPT_ZOO", raising=False)
    with pytest.raises(VLPromptError, match="no prompt checkpoint at .*unknown zoo entry"):
        load_prompt(tmp_path / "nothing", tiny_vit)


@pytest.mark.parametrize(
    "method, config, accepts",
    [
        ("coop", {"n_ctx": 2}, True),
        ("cocoop", {"n_ctx": 2, "ctx_init": ""}, True),
        ("coop", {"n_ctx": 2, "class_specific": True}, False),
        ("linear-probe", {}, False),
    ],
)
def test_new_class_names_only_for_class_agnostic_methods(tiny_vit, tmp_path, method, config, accepts):
    save_prompt(tmp_path / "p", build_method(method, tiny_vit, CLASSES, config))
    new = ["yellow star", "purple moon", "white cloud"]  # same count: still refused when class-specific
    if accepts:
        assert load_prompt(tmp_path / "p", tiny_vit, classnames=new).classnames == new
    else:
        with pytest.raises(VLPromptError, match="cannot take new class names"):
            load_prompt(tmp_path / "p", tiny_vit, classnames=new)
    assert load_prompt(tmp_path / "p", tiny_vit, classnames=CLASSES).classnames == CLASSES


def test_export_is_a_dxc_linear_classifier(coop, tiny_vit, tmp_path):
    save_prompt(tmp_path / "p", coop)
    out = tmp_path / "clf.pt"
    classifier = export_classifier(tmp_path / "p", out, backbone=tiny_vit)
    loaded = torch.load(out, map_location="cpu")  # what CLIP_benchmark --load_clfs does
    assert isinstance(loaded, torch.Tensor) and loaded.shape == (32, 3) and torch.equal(loaded, classifier)
    assert json.loads(out.with_suffix(".json").read_text())["classnames"] == CLASSES
    image = F.normalize(torch.randn(5, 32), dim=-1)
    with torch.no_grad():
        logits = coop({"features": image})
    assert torch.equal((100 * image @ loaded).argmax(-1), logits.argmax(-1))
    other = export_classifier(tmp_path / "p", backbone=tiny_vit, classnames=["a", "b"])
    assert other.shape == (32, 2)


def test_export_refuses_image_conditioned_methods(tiny_vit, tmp_path):
    save_prompt(tmp_path / "p", build_method("cocoop", tiny_vit, CLASSES, {"n_ctx": 2, "ctx_init": ""}))
    with pytest.raises(VLPromptError, match="cocoop: has no fixed class text features"):
        export_classifier(tmp_path / "p", tmp_path / "clf.pt", backbone=tiny_vit)
    assert not (tmp_path / "clf.pt").exists()
