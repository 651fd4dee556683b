"""FeatureCache: computed once, reused across objects, keyed by backbone/transform/file/view."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import colour_items
from PIL import Image

from vlprompt.backbones import create_backbone
from vlprompt.engine.cache import FeatureCache, backbone_key
from vlprompt.engine.features import extract_image_features


def make_items(folder, n_per_class=2, classes=("red", "green", "blue"), size=40):
    return colour_items(folder, classes, n_per_class, size)


class CountingEncoder:
    """Wraps backbone.encode_image to count how many images went through the image tower."""

    def __init__(self, backbone, monkeypatch):
        self.images = 0
        original = backbone.encode_image

        def encode(images):
            self.images += images.shape[0]
            return original(images)

        monkeypatch.setattr(backbone, "encode_image", encode)


@pytest.fixture
def items(tmp_path):
    return make_items(tmp_path / "images")


def test_second_get_does_not_run_the_encoder(tiny_vit, items, tmp_path, monkeypatch):
    counter = CountingEncoder(tiny_vit, monkeypatch)
    first = FeatureCache(tmp_path / "cache", progress=False).get(tiny_vit, items, tiny_vit.eval_transform)
    assert counter.images == len(items)
    assert first.shape == (1, len(items), tiny_vit.identity.embed_dim)
    again = FeatureCache(tmp_path / "cache", progress=False)  # a new run: reads the shards from disk
    second = again.get(tiny_vit, items, tiny_vit.eval_transform)
    assert counter.images == len(items) and again.computed == 0
    assert torch.equal(first, second)
    reference = extract_image_features(tiny_vit, items, tiny_vit.eval_transform, progress=False)
    torch.testing.assert_close(first[0], reference)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(1, len(items)))


def test_more_views_compute_only_the_new_ones(tiny_vit, items, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache", progress=False)
    two = cache.get(tiny_vit, items, tiny_vit.train_transform, views=2)
    counter = CountingEncoder(tiny_vit, monkeypatch)
    three = cache.get(tiny_vit, items, tiny_vit.train_transform, views=3)
    assert counter.images == len(items)
    assert torch.equal(three[:2], two)
    assert not torch.allclose(three[0], three[2])  # augmented views differ
    # Seeded views: another cache folder computes exactly the same views.
    other = FeatureCache(tmp_path / "other", progress=False).get(tiny_vit, items, tiny_vit.train_transform, views=3)
    torch.testing.assert_close(other, three)


def test_key_changes_with_backbone_transform_view_seed_and_file(tiny_vit, items, tmp_path):
    cache = FeatureCache(tmp_path / "cache", progress=False)
    item = items[0]
    base = cache.key(tiny_vit, tiny_vit.eval_transform, item, 0)
    assert cache.key(tiny_vit, tiny_vit.eval_transform, item, 0) == base
    assert cache.key(tiny_vit, tiny_vit.train_transform, item, 0) != base
    assert cache.key(tiny_vit, tiny_vit.eval_transform, item, 1) != base
    assert cache.key(tiny_vit, tiny_vit.eval_transform, items[1], 0) != base
    assert FeatureCache(tmp_path / "cache", seed=1).key(tiny_vit, tiny_vit.eval_transform, item, 0) != base
    torch.manual_seed(123)
    other = create_backbone("vlprompt-test-vit")  # same identity, other random weights
    assert other.identity.cache_key() == tiny_vit.identity.cache_key()
    assert backbone_key(other) != backbone_key(tiny_vit)
    assert cache.key(other, other.eval_transform, item, 0) != base
    # Editing the file (new mtime/size) gives a new key.
    Image.new("RGB", (40, 40), (1, 2, 3)).save(item.path)
    stat = item.path.stat()
    os.utime(item.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert cache.key(tiny_vit, tiny_vit.eval_transform, item, 0) != base


def test_corrupt_shard_is_ignored_and_rebuilt(tiny_vit, items, tmp_path, monkeypatch):
    first = FeatureCache(tmp_path / "cache", progress=False).get(tiny_vit, items, tiny_vit.eval_transform)
    shards = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(shards) == 1
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2])  # truncated
    counter = CountingEncoder(tiny_vit, monkeypatch)
    rebuilt = FeatureCache(tmp_path / "cache", progress=False).get(tiny_vit, items, tiny_vit.eval_transform)
    assert counter.images == len(items)
    torch.testing.assert_close(rebuilt, first)
    shards[0].write_bytes(b"not a safetensors file")
    again = FeatureCache(tmp_path / "cache", progress=False).get(tiny_vit, items, tiny_vit.eval_transform)
    torch.testing.assert_close(again, first)


def test_partial_hits_and_duplicates(tiny_vit, items, tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path / "cache", progress=False)
    cache.get(tiny_vit, items[:3], tiny_vit.eval_transform)
    counter = CountingEncoder(tiny_vit, monkeypatch)
    full = cache.get(tiny_vit, items + items[:1], tiny_vit.eval_transform)
    assert counter.images == len(items) - 3
    assert torch.equal(full[0, 0], full[0, -1])


def test_image_precision_is_part_of_the_key(tiny_vit, monkeypatch, tmp_path):
    """bf16 features (CUDA) and fp32 features (CPU) of one backbone never share cache entries."""
    from vlprompt.engine import cache as cache_module
    from vlprompt.engine.features import image_precision

    assert image_precision("cpu") == "fp32"
    cache = cache_module.FeatureCache(tmp_path, progress=False)
    fp32 = cache.folder(tiny_vit, tiny_vit.eval_transform)
    monkeypatch.setattr(cache_module, "image_precision", lambda device: "bf16")
    assert cache.folder(tiny_vit, tiny_vit.eval_transform) != fp32


def test_augmented_views_are_the_same_in_every_copy_of_the_data(tiny_vit, items, tmp_path):
    """Augmentation seeds come from folder/name + size, not the absolute path and mtime: a copy of the
    dataset elsewhere, written later (a fresh clone regenerating the world), gets the same views."""
    import shutil

    from vlprompt.data.classification import Item

    copy_root = tmp_path / "elsewhere" / "images"
    shutil.copytree(tmp_path / "images", copy_root)
    copies = [Item(copy_root / os.path.relpath(i.path, tmp_path / "images"), i.label, i.classname) for i in items]
    for item in copies:
        os.utime(item.path, (1_000_000_000, 1_000_000_000))
    transform = tiny_vit.train_transform
    first = FeatureCache(root=tmp_path / "cache-a").get(tiny_vit, items, transform, views=2)
    second = FeatureCache(root=tmp_path / "cache-b").get(tiny_vit, copies, transform, views=2)
    assert torch.equal(first, second)
    assert not torch.equal(first[0], first[1])  # the views are augmented, not all equal
