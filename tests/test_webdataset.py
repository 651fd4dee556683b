"""CLIP_benchmark-layout webdataset shards, written by the test with tarfile, streamed back."""

from __future__ import annotations

import io
import tarfile

import pytest
from PIL import Image

from vlprompt.data.webdataset_reader import WdsClassification, read_wds_info
from vlprompt.errors import VLPromptError

pytest.importorskip("webdataset")


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def _shard(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def make_wds(root, corrupt=False):
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("cat\ndog\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    _shard(root / "test/0.tar", [(f"s{i}", {"png": _png((i, 0, 0)), "cls": str(i % 2).encode()}) for i in range(3)])
    last = {"png": b"broken" if corrupt else _png((9, 9, 9)), "cls": b"1"}
    _shard(root / "test/1.tar", [("s3", last)])
    (root / "test/nshards.txt").write_text("2\n")
    return root


def test_stream_all_samples(tmp_path):
    info = read_wds_info(make_wds(tmp_path))
    assert info.classnames == ["cat", "dog"] and info.templates == ["a photo of a {}."]
    items = list(WdsClassification(info, "test", transform=lambda image: image.size))
    assert [(size, label) for size, label, _ in items] == [((8, 8), 0), ((8, 8), 1), ((8, 8), 0), ((8, 8), 1)]


def test_missing_shard_corrupt_image_and_bad_split(tmp_path):
    folder = make_wds(tmp_path / "a", corrupt=True)
    info = read_wds_info(folder)
    with pytest.raises(VLPromptError, match="cannot decode image of sample s3"):
        list(WdsClassification(info, "test", transform=lambda image: image))
    with pytest.raises(VLPromptError, match="no split 'train'"):
        WdsClassification(info, "train", transform=lambda image: image)
    (folder / "test/nshards.txt").write_text("3\n")  # the listing does not match the folder
    with pytest.raises(VLPromptError, match="1 of 3 shards .* missing .*2.tar"):
        read_wds_info(folder)
    (folder / "classnames.txt").unlink()
    with pytest.raises(VLPromptError, match="class names file not found"):
        read_wds_info(folder)


# -- wds:<folder> wired into evaluation and training -------------------------------------------

CLASSES = ["red", "green", "blue"]


def colour_wds(root, counts=None, shards=2, templates=("a photo of a {c}.", "a {c} thing.")):
    """wds:<root> with class-coloured 32x32 PNGs (tests/helpers.colour_items), each split over `shards` tars.

    Returns (root, {split: [Item of the PNG written beside the shards, in stream order]}).
    """
    from helpers import colour_items

    from vlprompt.data.classification import Item

    counts = counts or {"train": 5, "test": 3}
    root.mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    if templates:
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    order = {}
    for seed, (split, n) in enumerate(counts.items()):
        items = colour_items(root / "png" / split, CLASSES, n_per_class=n, size=32, seed=seed)
        per_shard = [items[i::shards] for i in range(shards)]
        (root / split).mkdir()
        for number, chunk in enumerate(per_shard):
            samples = [(item.path.stem, {"png": item.path.read_bytes(), "cls": str(item.label).encode()}) for item in chunk]
            _shard(root / split / f"{number}.tar", samples)
        order[split] = [Item(item.path, item.label, item.classname) for chunk in per_shard for item in chunk]
    return root, order


def test_wds_dataset_templates_and_lazy_splits(tmp_path):
    from vlprompt.data import load_dataset
    from vlprompt.data.webdataset_reader import WdsSplit
    from vlprompt.prompts.templates import get_templates

    folder, _ = colour_wds(tmp_path / "d")
    dataset = load_dataset(f"wds:{folder}")
    assert dataset.classnames == CLASSES and dataset.name == "d"
    assert get_templates("dataset", dataset) == ["a photo of a {}.", "a {} thing."]
    assert get_templates("coop", dataset) == ["a photo of a {}."]  # the first one stands for "the" template
    split = dataset.split("test")
    assert isinstance(split, WdsSplit) and len(split.shards) == 2 and not hasattr(split, "__len__")
    bare, _ = colour_wds(tmp_path / "bare", counts={"test": 1}, templates=())
    assert get_templates("dataset", load_dataset(f"wds:{bare}")) == ["a photo of a {}."]


def test_zero_shot_on_wds_equals_the_same_images_as_files(tiny_vit, tmp_path):
    import torch

    from vlprompt import api
    from vlprompt.data.classification import ClassificationDataset
    from vlprompt.engine import evaluate_zero_shot, extract_image_features
    from vlprompt.engine.features import stream_image_features

    folder, order = colour_wds(tmp_path / "d")
    dataset = api.get_dataset(f"wds:{folder}")
    items = order["test"]  # the same PNG files, in stream order
    features, labels = stream_image_features(tiny_vit, dataset.split("test"), batch_size=4, progress=False)
    assert torch.equal(features, extract_image_features(tiny_vit, items, batch_size=4, progress=False))
    assert labels.tolist() == [item.label for item in items]

    streamed = evaluate_zero_shot(tiny_vit, dataset, batch_size=4, progress=False)
    as_items = ClassificationDataset("d", folder, CLASSES, "x {}", {"test": items})
    files = evaluate_zero_shot(tiny_vit, as_items, templates=dataset.templates, batch_size=4, progress=False)
    assert streamed["templates"] == dataset.templates and streamed["metrics"] == files["metrics"]
    for item in items:  # and as a folder: dataset (other order, so other batches: equal to float rounding)
        target = tmp_path / "as_folder" / item.classname / item.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.path.read_bytes())
    as_folder = api.get_dataset(f"folder:{tmp_path / 'as_folder'}").split("test")
    by_folder = extract_image_features(tiny_vit, as_folder, batch_size=4, progress=False)
    index = {item.path.name: i for i, item in enumerate(items)}
    torch.testing.assert_close(by_folder, features[[index[item.path.name] for item in as_folder]], rtol=0, atol=1e-6)


def test_evaluate_method_streams_features_and_images(tiny_vit, tmp_path):
    import torch

    from vlprompt import api
    from vlprompt.engine.evaluate import evaluate_method, predict_logits
    from vlprompt.methods import build_method

    folder, order = colour_wds(tmp_path / "d", counts={"test": 3})
    split = api.get_dataset(f"wds:{folder}").split("test")
    method = build_method("zero-shot", tiny_vit, CLASSES)
    expected = predict_logits(method, tiny_vit, order["test"], batch_size=4)
    assert torch.equal(predict_logits(method, tiny_vit, split, batch_size=4), expected)
    assert evaluate_method(method, tiny_vit, split) == evaluate_method(method, tiny_vit, order["test"])
    method.needs_images = True  # as LASP with image LayerNorms: batches of images from the stream
    torch.testing.assert_close(predict_logits(method, tiny_vit, split, batch_size=4), expected, rtol=0, atol=1e-5)
    assert evaluate_method(method, tiny_vit, split)["n_images"] == 9
    halves = split.subset([2, 0])  # blue -> 0, red -> 1, green dropped before decoding
    method.set_classnames(["blue", "red"])
    result = evaluate_method(method, tiny_vit, halves)
    assert result["n_images"] == 6


def test_cli_eval_on_wds(tmp_path, capsys, monkeypatch):
    import json

    from vlprompt.cli import main

    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    folder, _ = colour_wds(tmp_path / "d", counts={"test": 2})
    out = tmp_path / "r.json"
    argv = ["eval", "--dataset", f"wds:{folder}", "--backbone", "vlprompt-test-vit", "--pretrained", "none",
            "--device", "cpu", "--batch-size", "4", "--json", str(out)]
    assert main(argv) == 0
    (result,) = json.loads(out.read_text())
    assert result["dataset"] == "d" and result["metrics"]["n_images"] == 6 and len(result["templates"]) == 2
    assert "d" in capsys.readouterr().out
    assert main([*argv[:2], f"wds:{tmp_path / 'nope'}", *argv[3:]]) == 2
    assert "webdataset folder not found" in capsys.readouterr().err
    assert main([*argv, "--split", "val"]) == 2
    assert "no split 'val'. Valid: test" in capsys.readouterr().err


def test_few_shot_from_shards_is_seeded_and_extracts_the_same_pixels(tmp_path):
    import numpy as np

    from vlprompt.data import load_dataset
    from vlprompt.data.webdataset_fewshot import read_wds_labels, wds_few_shot_split

    folder, order = colour_wds(tmp_path / "d", counts={"train": 5, "test": 1})
    dataset = load_dataset(f"wds:{folder}")
    records = read_wds_labels(dataset.info, "train")
    assert [r.label for r in records] == [item.label for item in order["train"]]

    def draw(seed, run):
        return wds_few_shot_split(dataset, 2, seed, tmp_path / run / "splits", tmp_path / run / "images")

    train, val = draw(1, "a")
    assert sorted(item.label for item in train) == [0, 0, 1, 1, 2, 2]
    assert sorted(item.label for item in val) == [0, 0, 1, 1, 2, 2] and not set(train) & set(val)  # held out
    again, _ = draw(1, "b")
    other, _ = draw(7, "c")
    keys = [(item.path.parent.name, item.path.name) for item in train]
    assert keys == [(item.path.parent.name, item.path.name) for item in again]
    assert keys != [(item.path.parent.name, item.path.name) for item in other]
    source = {item.path.name: item.path for item in order["train"]}
    for item in train + val:  # extracted files hold the original bytes: the same pixels
        assert np.array_equal(np.array(Image.open(item.path)), np.array(Image.open(source[item.path.name])))
    assert (tmp_path / "a/splits/d/shot_2-seed_1.train.json").is_file()
    stamp = train[0].path.stat().st_mtime_ns
    assert draw(1, "a") == (train, val) and train[0].path.stat().st_mtime_ns == stamp  # re-read, not re-extracted
    import vlprompt.data.webdataset_fewshot as wf

    def no_pass(*args):
        raise AssertionError("a rerun must not read the shards")

    original, wf.read_wds_labels = wf.read_wds_labels, no_pass
    try:
        assert draw(1, "a") == (train, val)  # split files + extracted images: no pass over the shards
    finally:
        wf.read_wds_labels = original
    train[0].path.unlink()  # an image lost since: the shards are read again and it is re-extracted
    assert draw(1, "a") == (train, val) and train[0].path.is_file()


def test_run_experiment_trains_on_wds_and_evaluates_the_stream(tiny_vit, tmp_path, monkeypatch):
    from vlprompt import api
    from vlprompt.config import ExperimentConfig

    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    folder, _ = colour_wds(tmp_path / "d", counts={"train": 4, "val": 2, "test": 2})

    def config(run, protocol, method=None):
        return ExperimentConfig.from_dict({
            "dataset": {"name": f"wds:{folder}"}, "method": method or {"name": "coop", "n_ctx": 2}, "protocol": protocol,
            "train": {"epochs": 2, "batch_size": 4}, "output_dir": str(tmp_path / run),
        })

    result = api.run_experiment(config("fs", {"shots": 2, "seed": 1}), backbone=tiny_vit)
    assert result["num_train_items"] == 6 and result["metrics"]["all"]["n_images"] == 6
    assert result["training"] and (tmp_path / "fs/splits/d/shot_2-seed_1.val.json").is_file()
    assert len(list((tmp_path / "fs/wds-images/val").rglob("*.png"))) == 6  # val drawn from the val split
    reloaded = api.evaluate_prompt(result["prompt"], tiny_vit, api.get_dataset(f"wds:{folder}"))
    assert reloaded["metrics"] == result["metrics"]["all"]

    # zero-shot: nothing to train, the streamed base / new halves are the point
    b2n = api.run_experiment(config("b2n", {"name": "base-to-new", "shots": 1}, {"name": "zero-shot"}), backbone=tiny_vit)
    assert b2n["train_classnames"] == ["red", "green"]
    assert b2n["metrics"]["base"]["n_images"] == 4 and b2n["metrics"]["new"]["n_images"] == 2 and "hm" in b2n["metrics"]
    with pytest.raises(VLPromptError, match="protocol 'all' on webdataset"):
        api.run_experiment(config("all", {"name": "all"}), backbone=tiny_vit)


def test_streaming_eval_names_the_corrupt_sample_and_its_shard(tiny_vit, tmp_path):
    from vlprompt import api
    from vlprompt.engine import evaluate_zero_shot

    folder = make_wds(tmp_path / "a", corrupt=True)
    dataset = api.get_dataset(f"wds:{folder}")
    with pytest.raises(VLPromptError, match=r"cannot decode image of sample s3 in .*test/1\.tar"):
        evaluate_zero_shot(tiny_vit, dataset, batch_size=2, progress=False)
    with pytest.raises(VLPromptError, match="no split 'train'. Valid: test"):
        dataset.split("train")
    from vlprompt.data.webdataset_fewshot import wds_few_shot_split

    with pytest.raises(VLPromptError, match="no split 'train'"):
        wds_few_shot_split(dataset, 1, 0, tmp_path / "s", tmp_path / "i")


def test_datasets_check_on_wds(tmp_path, capsys):
    from vlprompt.cli import main

    good = make_wds(tmp_path / "good")
    assert main(["datasets", "check", f"wds:{good}", "--decode"]) == 0
    assert "OK, 2 classes, test 2 shards" in capsys.readouterr().out
    bad = make_wds(tmp_path / "bad", corrupt=True)
    assert main(["datasets", "check", f"wds:{bad}"]) == 0  # the listing is complete; images not decoded
    capsys.readouterr()
    assert main(["datasets", "check", f"wds:{bad}", "--decode"]) == 2
    out = capsys.readouterr().out
    assert "INCOMPLETE" in out and "split test: cannot decode image of sample s3" in out
