"""datasets/prepare_*.py scripts (standalone files, imported from their paths) on miniature trees."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from vlprompt.data import load_dataset

DATASETS_DIR = Path(__file__).resolve().parents[1] / "datasets"
CATEGORIES = ["a/abbey", "a/apse/indoor", "b/bakery/shop"]  # ClassName.txt order (sorted), without the leading "/"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, DATASETS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sun397():
    return load_script("prepare_sun397")


def make_sun397(root: Path, class_list: bool = True) -> Path:
    """3 categories x 3 JPEGs under <root>/sun397/SUN397, plus a Partitions folder (2 train, 1 test per class)."""
    image_dir = root / "sun397" / "SUN397"
    partitions = root / "Partitions"
    partitions.mkdir(parents=True)
    training, testing = [], []
    for category in CATEGORIES:
        (image_dir / category).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (4, 4), (40 * i, 0, 0)).save(image_dir / category / f"sun_{i}.jpg")
            (testing if i == 2 else training).append(f"/{category}/sun_{i}.jpg")
    if class_list:
        (image_dir / "ClassName.txt").write_text("".join(f"/{c}\n" for c in CATEGORIES))
    (partitions / "Training_01.txt").write_text("\n".join(reversed(training)) + "\n")  # order must not matter
    (partitions / "Testing_01.txt").write_text("\n".join(testing) + "\n")
    return partitions


def test_help_of_every_prepare_script(capsys):
    for name in ("prepare_sun397", "prepare_ucf101_midframes"):
        with pytest.raises(SystemExit) as exit_:
            load_script(name).main(["--help"])
        assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


def test_sun397_split_in_coop_format(tmp_path, sun397, capsys):
    partitions = make_sun397(tmp_path)
    args = ["--root", str(tmp_path), "--partitions", str(partitions), "--expected", "3", "--val-fraction", "0.5"]
    assert sun397.main(args) == 0
    split_file = tmp_path / "sun397" / "split_zhou_SUN397.json"
    split = json.loads(split_file.read_text())
    assert split["test"] == [
        ["a/abbey/sun_2.jpg", 0, "abbey"],
        ["a/apse/indoor/sun_2.jpg", 1, "indoor apse"],
        ["b/bakery/shop/sun_2.jpg", 2, "shop bakery"],
    ]
    assert [(e[1], e[2]) for e in split["train"]] == [(0, "abbey"), (1, "indoor apse"), (2, "shop bakery")]
    assert [e[1] for e in split["val"]] == [0, 1, 2]
    assert sorted(e[0] for e in split["train"] + split["val"]) == sorted(f"{c}/sun_{i}.jpg" for c in CATEGORIES for i in (0, 1))
    assert "train 3, val 3, test 3" in capsys.readouterr().out
    assert not list(split_file.parent.glob(".*partial"))  # the temporary file was moved into place

    ds = load_dataset("sun397", tmp_path, verify=True)  # what vlprompt reads
    assert ds.classnames == ["abbey", "indoor apse", "shop bakery"] and len(ds.split("train")) == 3

    before = split_file.read_text()
    assert sun397.main(args) == 2  # never overwrites without --force
    assert "exists; not overwriting" in capsys.readouterr().err and split_file.read_text() == before
    again = tmp_path / "again.json"
    assert sun397.main(args + ["--out", str(again)]) == 0 and again.read_text() == before  # same seed, same split
    assert sun397.main(args + ["--force", "--seed", "7"]) == 0


def test_sun397_without_class_list_uses_sorted_folders(tmp_path, sun397):
    partitions = make_sun397(tmp_path, class_list=False)
    assert sun397.main(["--root", str(tmp_path), "--partitions", str(partitions), "--expected", "3"]) == 0
    split = json.loads((tmp_path / "sun397" / "split_zhou_SUN397.json").read_text())
    assert {tuple(e[1:]) for e in split["test"]} == {(0, "abbey"), (1, "indoor apse"), (2, "shop bakery")}
    assert split["val"] == []  # round(2 * 0.2) = 0 per class


def test_sun397_check_reports_what_is_missing(tmp_path, sun397, capsys):
    partitions = make_sun397(tmp_path)
    assert sun397.main(["--root", str(tmp_path), "--expected", "3"]) == 1  # complete tree, but no split file
    assert "split_zhou_SUN397.json is missing: get CoOp's file (preferred)" in capsys.readouterr().out
    assert sun397.main(["--root", str(tmp_path)]) == 1
    assert "3 categories, expected 397" in capsys.readouterr().out
    for image in (tmp_path / "sun397" / "SUN397" / "b" / "bakery" / "shop").iterdir():
        image.unlink()
    assert sun397.main(["--root", str(tmp_path), "--expected", "3", "--partitions", str(partitions)]) == 2
    captured = capsys.readouterr()
    assert "1 of 3 categories in" in captured.out and "have no images, e.g. b/bakery/shop" in captured.out
    assert "not writing a split file for an incomplete tree" in captured.err


def test_sun397_partition_naming_a_missing_image(tmp_path, sun397, capsys):
    partitions = make_sun397(tmp_path)
    (tmp_path / "sun397" / "SUN397" / "a" / "abbey" / "sun_2.jpg").unlink()
    assert sun397.main(["--root", str(tmp_path), "--expected", "3", "--partitions", str(partitions)]) == 2
    assert "1 of 3 images listed in" in capsys.readouterr().err
    assert not (tmp_path / "sun397" / "split_zhou_SUN397.json").exists()


def test_sun397_misplaced_tree(tmp_path, sun397, capsys):
    (tmp_path / "SUN397" / "a" / "abbey").mkdir(parents=True)
    assert sun397.main(["--root", str(tmp_path)]) == 2
    assert f"found {tmp_path / 'SUN397'} but vlprompt reads {tmp_path / 'sun397' / 'SUN397'}" in capsys.readouterr().err
