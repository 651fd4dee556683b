"""Streamed image features: batch-level ToTensor/Normalize and the prefetch thread change no number."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlprompt.data.classification import Item
from vlprompt.engine import features as fm
from vlprompt.errors import VLPromptError


def _items(tmp_path, n=7):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        mode = "L" if i == 3 else "RGB"
        shape = (40 + i, 50) if mode == "L" else (40 + i, 50, 3)
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
        items.append(Item(str(path), i % 2, "x"))
    return items


def test_split_transform_is_bit_identical(tiny_vit, tmp_path):
    items = _items(tmp_path)
    head, finish = fm.split_transform(tiny_vit.eval_transform)
    from vlprompt.data.images import load_image

    ref = torch.stack([tiny_vit.eval_transform(load_image(it.path)) for it in items])
    batch = fm._collate_uint8([(head(load_image(it.path)), it.label, i) for i, it in enumerate(items)])
    assert batch[0].dtype == torch.uint8
    assert torch.equal(finish(batch[0]), ref)


def test_streamed_features_equal_plain_loop(tiny_vit, tmp_path):
    items = _items(tmp_path)
    from vlprompt.data.images import load_image

    with torch.inference_mode():
        ref = torch.cat([F.normalize(tiny_vit.encode_image(torch.stack(
            [tiny_vit.eval_transform(load_image(it.path)) for it in items[s : s + 3]])).float(), dim=-1)
            for s in range(0, len(items), 3)])
    assert torch.equal(fm.extract_image_features(tiny_vit, items, batch_size=3, progress=False), ref)


def test_prefetch_reraises_and_stops():
    def gen():
        yield 1
        raise VLPromptError("boom")

    it = fm.prefetch(gen())
    assert next(it) == 1
    with pytest.raises(VLPromptError, match="boom"):
        next(it)
    early = fm.prefetch(iter(range(100)), depth=1)
    assert next(early) == 0
    early.close()  # the thread is told to stop and joined


def test_missing_image_error_surfaces(tiny_vit, tmp_path):
    with pytest.raises(VLPromptError, match="image not found"):
        fm.extract_image_features(tiny_vit, [Item(str(tmp_path / "nope.png"), 0, "x")], progress=False)


def test_unknown_transform_is_not_split():
    assert fm.split_transform(lambda image: image) is None


def test_plain_pngs_at_model_size_skip_pil_with_equal_features(tiny_vit, tmp_path):
    """8-bit RGB PNGs at the model's size take the libpng path; other files (grey, RGBA, 16-bit,
    JPEG, another size) the PIL path; the features equal the plain per-image transform loop."""
    from vlprompt.data.images import decode_plain_png, load_image

    width, height = tiny_vit.image_size[1], tiny_vit.image_size[0]
    rng = np.random.default_rng(1)
    files = {
        "rgb.png": Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
        "rgb2.png": Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
        "grey.png": Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), mode="L"),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), mode="RGBA"),
        "deep.png": Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16)),
        "photo.jpg": Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)),
        "big.png": Image.fromarray(rng.integers(0, 256, (height + 8, width + 8, 3), dtype=np.uint8)),
    }
    items = []
    for i, (name, image) in enumerate(files.items()):
        image.save(tmp_path / name)
        items.append(Item(str(tmp_path / name), i % 2, "x"))
    fast = [decode_plain_png(it.path, (width, height)) is not None for it in items]
    assert fast == [True, True, False, False, False, False, False]
    assert torch.equal(decode_plain_png(items[0].path, (width, height)).permute(1, 2, 0),
                       torch.from_numpy(np.array(load_image(items[0].path))))
    head, _ = fm.split_transform(tiny_vit.eval_transform)
    assert head.identity_size == (width, height)
    with torch.inference_mode():
        ref = F.normalize(tiny_vit.encode_image(torch.stack(
            [tiny_vit.eval_transform(load_image(it.path)) for it in items])).float(), dim=-1)
    assert torch.equal(fm.extract_image_features(tiny_vit, items, batch_size=len(items), progress=False), ref)


def test_identity_size_only_for_known_steps(tiny_vit):
    from torchvision import transforms as T

    assert fm.identity_size([T.Resize(32), T.CenterCrop(32)]) == (32, 32)
    assert fm.identity_size([T.Resize(32), T.CenterCrop(28)]) is None  # crops: not an identity
    assert fm.identity_size([T.Resize((32, 40))]) is None
    assert fm.identity_size([T.Resize(32), T.RandomHorizontalFlip()]) is None
    assert fm.identity_size([]) is None
    assert fm.split_transform(tiny_vit.train_transform) is None or fm.split_transform(
        tiny_vit.train_transform)[0].identity_size is None
