"""CoOp split reader, image decoding and image folders on miniature layouts written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlprompt.data import ImageItems, load_image, read_coop_split, read_image_folder
from vlprompt.data.fgvc import read_fgvc_variants
from vlprompt.errors import VLPromptError

CLASSES = ["cat", "golden_retriever", "fish"]


def write_png(path: Path, seed: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_coop_layout(folder: Path, per_split: dict[str, int] | None = None) -> tuple[Path, Path]:
    """``<folder>/images/<class>/<i>.png`` + ``<folder>/split_mini.json``, exactly CoOp's layout."""
    per_split = per_split or {"train": 1, "val": 1, "test": 2}
    image_dir = folder / "images"
    split: dict[str, list] = {}
    seed = 0
    for name, count in per_split.items():
        split[name] = []
        for label, classname in enumerate(CLASSES):
            for i in range(count):
                relative = f"{classname}/{name}_{i}.png"
                write_png(image_dir / relative, seed)
                seed += 1
                split[name].append([relative, label, classname])
    split_file = folder / "split_mini.json"
    split_file.write_text(json.dumps(split))
    return image_dir, split_file


def test_reader_reads_coop_layout(tmp_path):
    image_dir, split_file = make_coop_layout(tmp_path / "mini")
    ds = read_coop_split(image_dir, split_file, "mini", "a photo of a {}.", verify=True)
    assert ds.classnames == CLASSES
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [3, 3, 6]
    item = ds.split("test")[0]
    assert item.path == image_dir / "cat/test_0.png" and item.label == 0 and item.classname == "cat"
    with pytest.raises(VLPromptError, match=r"no split 'tset'.*train, val, test"):
        ds.split("tset")


def test_missing_folder_and_split_file(tmp_path):
    image_dir, split_file = make_coop_layout(tmp_path / "mini")
    with pytest.raises(VLPromptError, match="image folder not found: .*nowhere"):
        read_coop_split(tmp_path / "nowhere", split_file, "mini", "{}")
    with pytest.raises(VLPromptError, match="split file not found: .*split_missing.json"):
        read_coop_split(image_dir, tmp_path / "mini" / "split_missing.json", "mini", "{}")


def test_malformed_json_and_entries(tmp_path):
    image_dir, split_file = make_coop_layout(tmp_path / "mini")
    split_file.write_text('{"train": [')
    with pytest.raises(VLPromptError, match="split_mini.json is not valid JSON"):
        read_coop_split(image_dir, split_file, "mini", "{}")
    split_file.write_text(json.dumps({"train": [["a.png", "0", "cat"]]}))
    with pytest.raises(VLPromptError, match=r"split 'train', entry 0: expected \[relative_path, label, classname\]"):
        read_coop_split(image_dir, split_file, "mini", "{}")


@pytest.mark.parametrize(
    "entries, message",
    [
        ([["a.png", 0, "cat"], ["b.png", 0, "dog"]], "label 0 has two class names, 'cat' and 'dog'"),
        ([["a.png", 0, "cat"], ["b.png", 1, "cat"]], "class name 'cat' has two labels, 0 and 1"),
        ([["a.png", 0, "cat"], ["b.png", 2, "dog"]], "labels must be 0..1 without gaps"),
    ],
)
def test_inconsistent_labels(tmp_path, entries, message):
    image_dir, split_file = make_coop_layout(tmp_path / "mini")
    split_file.write_text(json.dumps({"test": entries}))
    with pytest.raises(VLPromptError, match=message):
        read_coop_split(image_dir, split_file, "mini", "{}")


def test_verify_reports_first_missing_image_and_count(tmp_path):
    image_dir, split_file = make_coop_layout(tmp_path / "mini")
    (image_dir / "cat/train_0.png").unlink()
    (image_dir / "fish/test_1.png").unlink()
    read_coop_split(image_dir, split_file, "mini", "{}")  # not verified: loads
    with pytest.raises(VLPromptError) as error:
        read_coop_split(image_dir, split_file, "mini", "{}", verify=True)
    message = str(error.value)
    assert "image not found:" in message and "cat/train_0.png" in message
    assert "split_mini.json" in message and "2 of 12 listed images are missing" in message


def test_missing_and_corrupt_image_named_when_loading(tmp_path):
    image_dir, split_file = make_coop_layout(tmp_path / "mini")
    ds = read_coop_split(image_dir, split_file, "mini", "{}")
    (image_dir / "cat/test_0.png").write_bytes(b"this is not an image at all")
    (image_dir / "cat/test_1.png").unlink()
    items = ImageItems(ds.split("test"), lambda im: torch.zeros(1), source=str(split_file))
    with pytest.raises(VLPromptError, match=r"cannot decode image .*cat/test_0.png \(listed in .*split_mini.json\)"):
        items[0]
    with pytest.raises(VLPromptError, match=r"image not found: .*cat/test_1.png \(listed in .*split_mini.json\)"):
        items[1]
    image, label, index = items[2]
    assert label == 1 and index == 2


def test_load_image_is_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)
    assert load_image(path).mode == "RGB"


def test_image_folder_sorted_classes_and_splits(tmp_path):
    for classname in ("zebra", "ant"):
        write_png(tmp_path / "flat" / classname / "a.png", 1)
        write_png(tmp_path / "flat" / classname / "sub" / "b.JPG".lower(), 2)
        write_png(tmp_path / "split" / "train" / classname / "a.png", 3)
        write_png(tmp_path / "split" / "test" / classname / "a.png", 4)
    (tmp_path / "flat" / "ant" / "notes.txt").write_text("not an image")
    flat = read_image_folder(tmp_path / "flat")
    assert flat.classnames == ["ant", "zebra"] and list(flat.splits) == ["test"]
    assert [(i.label, i.path.name) for i in flat.split("test")] == [(0, "a.png"), (0, "b.jpg"), (1, "a.png"), (1, "b.jpg")]
    split = read_image_folder(tmp_path / "split")
    assert sorted(split.splits) == ["test", "train"] and len(split.split("train")) == 2
    with pytest.raises(VLPromptError, match="image folder not found"):
        read_image_folder(tmp_path / "nowhere")


def test_fgvc_variant_lists(tmp_path):
    folder = tmp_path / "fgvc_aircraft"
    (folder / "variants.txt").parent.mkdir(parents=True)
    (folder / "variants.txt").write_text("707-320\nA300B4\n")
    for split in ("train", "val", "test"):
        write_png(folder / "images" / f"{split}1.jpg", 0)
        (folder / f"images_variant_{split}.txt").write_text(f"{split}1 A300B4\n")
    ds = read_fgvc_variants(
        folder / "images", folder / "images_variant_{split}.txt", folder / "variants.txt", "fgvc", "{}", verify=True
    )
    assert ds.classnames == ["707-320", "A300B4"] and ds.split("val")[0].label == 1
    (folder / "images_variant_test.txt").write_text("test1 Boeing\n")
    with pytest.raises(VLPromptError, match="images_variant_test.txt, line 1: class 'Boeing' is not in"):
        read_fgvc_variants(folder / "images", folder / "images_variant_{split}.txt", folder / "variants.txt", "f", "{}")
