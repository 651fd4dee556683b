"""`vlprompt datasets check`: says precisely what is missing or broken in a user's copy."""

from __future__ import annotations

import json

from PIL import Image
from test_imagenet import make_imagenet

from vlprompt.cli import main


def _dtd(root, listed_extra: bool = False):
    folder = root / "dtd"
    entries = []
    for label, cls in enumerate(["banded", "blotchy"]):
        for i in range(2):
            rel = f"{cls}/{cls}_{i}.jpg"
            (folder / "images" / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(folder / "images" / rel)
            entries.append([rel, label, cls])
    if listed_extra:  # the split file names an image the folder does not have
        entries.append(["blotchy/blotchy_9.jpg", 1, "blotchy"])
    split = {"train": entries[:2], "val": entries[2:3], "test": entries[3:]}
    (folder / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    return folder


def test_check_ok(tmp_path, capsys):
    _dtd(tmp_path)
    make_imagenet(tmp_path)
    assert main(["datasets", "check", "dtd", "imagenet", "--root", str(tmp_path), "--decode"]) == 0
    out = capsys.readouterr().out
    assert "dtd: OK, 2 classes, train 2, val 1, test 1" in out and "imagenet: OK, 3 classes" in out


def test_check_names_missing_listed_image(tmp_path, capsys):
    _dtd(tmp_path, listed_extra=True)
    assert main(["datasets", "check", "dtd", "--root", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "1 of 5 listed images are missing" in captured.out and "blotchy_9.jpg" in captured.out
    assert "1 dataset(s) incomplete: dtd" in captured.err


def test_check_names_missing_split_file_and_folder(tmp_path, capsys):
    folder = _dtd(tmp_path)
    (folder / "split_zhou_DescribableTextures.json").unlink()
    assert main(["datasets", "check", "dtd", "food101", "--root", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert f"missing: {folder / 'split_zhou_DescribableTextures.json'}" in out
    assert f"folder {tmp_path / 'food-101'}" in out or "food" in out


def test_check_decode_finds_corrupt_image(tmp_path, capsys):
    folder = _dtd(tmp_path)
    (folder / "images/banded/banded_1.jpg").write_bytes(b"\x00garbage")
    assert main(["datasets", "check", "dtd", "--root", str(tmp_path)]) == 0  # existence only
    assert main(["datasets", "check", "dtd", "--root", str(tmp_path), "--decode"]) == 2
    assert "1 images cannot be decoded: cannot decode image" in capsys.readouterr().out


def test_list(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "imagenet_a" in out and "dtd" in out
