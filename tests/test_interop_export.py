"""Interop outputs read back by the other side: CLIP_benchmark result files, a plain open_clip checkpoint
of the world CLIP, webdataset shards of any dataset, the class order of an exported classifier."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch

from vlprompt.backbones import load_backbone
from vlprompt.data import load_dataset
from vlprompt.data.images import load_image
from vlprompt.data.webdataset_reader import read_wds_dataset
from vlprompt.embedded.export import write_world_datasets
from vlprompt.engine.zero_shot import evaluate_zero_shot
from vlprompt.errors import VLPromptError
from vlprompt.interop.clip_benchmark import output_path, read_clip_benchmark, to_clip_benchmark, write_clip_benchmark
from vlprompt.interop.open_clip_export import export_open_clip
from vlprompt.interop.webdataset_export import decoded_split, export_wds
from vlprompt.methods import build_method
from vlprompt.zoo.checkpoint import export_classifier


@pytest.fixture(scope="module")
def world():
    return load_backbone("vlprompt-tiny", "world", "cpu")


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world_datasets(root, names=["world_textures"])
    return root


@pytest.fixture(scope="module")
def textures(world_root):
    return load_dataset("world_textures", world_root)


def test_clip_benchmark_record_format(tmp_path):
    result = {
        "dataset": "wds/vtab/cifar10",
        "backbone": {"name": "ViT-B-16", "pretrained": "openai"},
        "method": "zero-shot",
        "metrics": {"top1": 80.0000011920929, "top5": 99.5, "mean_per_class_recall": 79.99999, "n_images": 10},
    }
    record = to_clip_benchmark(result)
    assert record == {
        "dataset": "wds/vtab/cifar10",
        "model": "ViT-B-16",
        "pretrained": "openai",
        "task": "zeroshot_classification",
        "metrics": {"acc1": 0.8, "acc5": 0.995, "mean_per_class_recall": 0.8},
        "language": "en",
    }
    pattern = str(tmp_path / "{dataset}_{model}_{pretrained}.json")
    assert output_path(pattern, record).name == "wds_vtab_cifar10_ViT-B-16_openai.json"  # CLIP_benchmark's slug
    [path] = write_clip_benchmark([result], pattern)
    assert json.loads(path.read_text()) == record
    back = read_clip_benchmark(path)
    assert back["metrics"] == {"top1": 80.0, "top5": 99.5, "mean_per_class_recall": 80.0}
    prompt_result = {**result, "method": "coop", "prompt": "runs/coop/prompt.safetensors"}
    assert to_clip_benchmark(prompt_result)["method"] == "coop"  # an extra column in `clip_benchmark build`
    assert output_path("{dataset}_{method}.json", to_clip_benchmark(prompt_result)).name == "wds_vtab_cifar10_coop.json"
    with pytest.raises(VLPromptError, match="same file for several results"):
        write_clip_benchmark([result, result], str(tmp_path / "{model}.json"))
    with pytest.raises(VLPromptError, match="cannot fill"):
        output_path("{nope}.json", record)


def test_export_backbone_is_a_plain_open_clip_checkpoint(world, tmp_path):
    files = export_open_clip(world, tmp_path / "oc")
    from_dir, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'oc'}")
    open_clip.add_model_config(files["model_config"])
    from_file, _, _ = open_clip.create_model_and_transforms("vlprompt-tiny", pretrained=str(files["weights"]))
    torch.manual_seed(0)
    images = torch.randn(3, 3, 64, 64)
    texts = ["a photo of a red circle.", "a blue square.", "a photo of a dotted green star."]
    ids = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'oc'}")(texts)
    with torch.no_grad():
        want_image, want_text = world.encode_image(images), world.encode_text(texts)
        for model in (from_dir.eval(), from_file.eval()):
            torch.testing.assert_close(model.encode_image(images), want_image, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model.encode_text(ids), want_text, atol=1e-5, rtol=1e-5)
    assert json.loads(files["config"].read_text())["preprocess_cfg"]["size"] == [64, 64]
    assert any("Resize" in type(t).__name__ for t in preprocess.transforms)


def test_export_wds_round_trip_and_same_accuracy(world, textures, tmp_path):
    counts = export_wds(textures, tmp_path / "wds", splits=["test"], shard_size=128)
    assert counts == {"test": 300}
    assert (tmp_path / "wds" / "test" / "nshards.txt").read_text() == "3\n"
    back = read_wds_dataset(tmp_path / "wds", name="world_textures")
    assert back.classnames == textures.classnames and back.templates == ["a photo of a {}."]
    items = textures.split("test")
    decoded = list(decoded_split(back, "test"))
    assert [label for _, label in decoded] == [item.label for item in items]
    for (image, _), item in zip(decoded[::37], items[::37]):
        assert np.array_equal(np.asarray(image), np.asarray(load_image(item.path)))
    ours = evaluate_zero_shot(world, textures, progress=False)["metrics"]
    streamed = evaluate_zero_shot(world, back, progress=False)["metrics"]
    assert streamed == ours and ours["top1"] > 50
    again = export_wds(back, tmp_path / "copy", shard_size=1000)  # a wds: source is copied sample by sample
    assert again == {"test": 300} and (tmp_path / "copy" / "test" / "nshards.txt").read_text() == "1\n"
    with pytest.raises(VLPromptError, match="no split 'dev'"):
        export_wds(textures, tmp_path / "bad", splits=["dev"])


def test_zoo_export_writes_and_checks_the_class_order(tiny_vit, tmp_path):
    method = build_method("zero-shot", tiny_vit, ["red", "green_apple"], {})
    out = tmp_path / "clf.pt"
    export_classifier(method, out)
    assert (tmp_path / "clf.classnames.txt").read_text() == "red\ngreen_apple\n"
    good = tmp_path / "classnames.txt"
    good.write_text("Red\ngreen apple\n")
    export_classifier(method, out, check_classnames=good)
    bad = tmp_path / "other.txt"
    bad.write_text("green apple\nred\n")
    with pytest.raises(VLPromptError, match="at line 1: classifier column 0 is 'red', the file says 'green apple'"):
        export_classifier(method, tmp_path / "x.pt", check_classnames=bad)
    assert not (tmp_path / "x.pt").exists()


def test_eval_cli_writes_clip_benchmark_files(tmp_path, monkeypatch, world_root):
    from vlprompt.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "eval",
            "--dataset",
            "world_textures",
            "--root",
            str(world_root),
            "--format",
            "clip_benchmark",
            "--output",
            "{dataset}_{model}_{pretrained}.json",
            "--templates",
            "a photo of a {c}.",
        ]
    )
    assert code == 0
    record = json.loads((tmp_path / "world_textures_vlprompt-tiny_world.json").read_text())
    assert set(record) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert record["metrics"]["acc1"] == 0.703333  # zero-shot top1 70.33 on the world's textures


def test_cli_export_wds_and_backbone(tmp_path, world_root, capsys):
    from vlprompt.cli import main

    assert (
        main(["datasets", "export-wds", "world_textures", str(tmp_path / "wds"), "--root", str(world_root), "--splits", "val"])
        == 0
    )
    assert "wrote" in capsys.readouterr().out and (tmp_path / "wds" / "val" / "0.tar").is_file()
    assert read_wds_dataset(tmp_path / "wds").split_names == ["val"]
    assert main(["export-backbone", str(tmp_path / "oc"), "--backbone", "vlprompt-test-vit", "--pretrained", "none"]) == 0
    assert json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())["model_cfg"]["embed_dim"] > 0
    assert (
        main(["datasets", "export-wds", "world_textures", str(tmp_path / "x"), "--root", str(world_root), "--splits", "dev"]) == 2
    )
