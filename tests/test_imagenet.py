"""ImageNet and its variants on generated miniature copies of CoOp's layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vlprompt.data import ImageItems, load_dataset
from vlprompt.errors import VLPromptError

WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def _image(path: Path, color=(200, 10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)


def _classnames(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in WNIDS.items()))


def make_imagenet(root: Path) -> Path:
    folder = root / "imagenet"
    _classnames(folder)
    for split, count in (("train", 2), ("val", 1)):
        for wnid in WNIDS:
            for i in range(count):
                _image(folder / "images" / split / wnid / f"{wnid}_{i}.JPEG")
    return folder


def test_imagenet_splits_labels_and_names(tmp_path):
    make_imagenet(tmp_path)
    dataset = load_dataset("imagenet", tmp_path)
    assert dataset.classnames == ["tench", "goldfish", "great white shark"]
    assert {s: len(v) for s, v in dataset.splits.items()} == {"train": 6, "val": 3, "test": 3}
    assert dataset.splits["test"] == dataset.splits["val"]
    assert [item.label for item in dataset.split("train")] == [0, 0, 1, 1, 2, 2]
    assert dataset.imagenet_labels == [0, 1, 2] and dataset.template == "a photo of a {}."


def test_imagenet_missing_class_folder_and_unknown_folder(tmp_path):
    folder = make_imagenet(tmp_path)
    for path in (folder / "images/val/n01484850").iterdir():
        path.unlink()
    (folder / "images/val/n01484850").rmdir()
    with pytest.raises(VLPromptError, match=r"split 'val'.*1 of 3 class folders.*n01484850"):
        load_dataset("imagenet", tmp_path)
    _image(folder / "images/val/n01484850/x.JPEG")
    _image(folder / "images/val/n99999999/x.JPEG")  # a folder the class list does not know
    with pytest.raises(VLPromptError, match="n99999999 is not a class"):
        load_dataset("imagenet", tmp_path)


def test_imagenet_missing_classnames_and_corrupt_image(tmp_path):
    folder = make_imagenet(tmp_path)
    bad = folder / "images/val/n01440764/n01440764_0.JPEG"
    bad.write_bytes(b"not a jpeg")
    dataset = load_dataset("imagenet", tmp_path)
    items = ImageItems(dataset.split("test"), transform=lambda image: image)
    with pytest.raises(VLPromptError, match="cannot decode image .*n01440764_0.JPEG"):
        items[0]
    (folder / "classnames.txt").unlink()
    with pytest.raises(VLPromptError, match="class names file not found.*classnames.txt"):
        load_dataset("imagenet", tmp_path)


def test_imagenet_sketch_is_test_only(tmp_path):
    folder = tmp_path / "imagenet-sketch"
    _classnames(folder)
    for wnid in WNIDS:
        _image(folder / "images" / wnid / "sketch_0.JPEG")
    dataset = load_dataset("imagenet_sketch", tmp_path)
    assert list(dataset.splits) == ["test"] and dataset.num_classes == 3


@pytest.mark.parametrize("name,dataset_dir,image_dir", [
    ("imagenet_a", "imagenet-adversarial", "imagenet-a"), ("imagenet_r", "imagenet-rendition", "imagenet-r"),
])
def test_subsets_relabel_and_map_to_imagenet(tmp_path, name, dataset_dir, image_dir):
    folder = tmp_path / dataset_dir
    _classnames(folder)
    for wnid in ("n01484850", "n01443537"):
        _image(folder / image_dir / wnid / "0.jpg")
    (folder / image_dir / "README.txt").write_text("ignored")
    dataset = load_dataset(name, tmp_path)
    assert dataset.classnames == ["goldfish", "great white shark"]
    assert dataset.imagenet_labels == [1, 2] and [i.label for i in dataset.split("test")] == [0, 1]


def test_imagenet_v2_numbered_folders(tmp_path):
    folder = tmp_path / "imagenetv2"
    _classnames(folder)
    image_dir = folder / "imagenetv2-matched-frequency-format-val"
    for label in range(3):
        _image(image_dir / str(label) / "a.jpeg")
    dataset = load_dataset("imagenetv2", tmp_path)
    assert [(i.label, i.classname) for i in dataset.split("test")] == [(0, "tench"), (1, "goldfish"), (2, "great white shark")]
    for path in (image_dir / "2").iterdir():
        path.unlink()
    (image_dir / "2").rmdir()
    _image(image_dir / "7" / "a.jpeg")  # label folder beyond the class list
    with pytest.raises(VLPromptError, match="not an ImageNet label 0..2"):
        load_dataset("imagenetv2", tmp_path)
    (image_dir / "7" / "a.jpeg").unlink()
    (image_dir / "7").rmdir()
    with pytest.raises(VLPromptError, match="1 of 3 label folders are missing"):
        load_dataset("imagenetv2", tmp_path)
