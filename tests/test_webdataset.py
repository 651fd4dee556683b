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
