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
