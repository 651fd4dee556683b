"""The embedded world: renderer, captions, bundled world CLIP, recipe determinism, dataset export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from vlprompt.embedded import weights as world_weights
from vlprompt.embedded.batches import normalize_images, positives_matrix
from vlprompt.embedded.captions import caption_scene, caption_words
from vlprompt.embedded.export import CZSL_SPLIT, MARKER, write_world_datasets
from vlprompt.embedded.pretrain import (
    PretrainConfig,
    create_world_model,
    evaluate_pretraining_zero_shot,
    train_world_clip,
    used_token_ids,
)
from vlprompt.embedded.render import render_scene
from vlprompt.embedded.scene import sample_scene
from vlprompt.embedded.styles import DATASET_STYLES
from vlprompt.embedded.vocab import COLOUR_NAMES, SHAPES, colour_shape_classnames


def _render(seed: int, n: int = 6, style=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kwargs = {} if style is None else {"style": style}
    return np.stack([render_scene(sample_scene(rng, **kwargs), rng) for _ in range(n)])


def test_renderer_is_deterministic_and_seed_dependent():
    a, b, c = _render(3), _render(3), _render(4)
    assert a.dtype == np.uint8 and a.shape == (6, 64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    shifted = _render(3, style=DATASET_STYLES["world_colored_shapes"])
    assert np.array_equal(shifted, _render(3, style=DATASET_STYLES["world_colored_shapes"]))


def test_every_shape_and_colour_is_drawn():
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        for colour in COLOUR_NAMES[:2]:
            image = render_scene(sample_scene(rng, shape=shape, colour=colour))
            assert (np.abs(image.astype(int) - image[0, 0].astype(int)).sum(-1) > 60).sum() > 50


def test_captions_name_colour_and_shape_and_use_known_words():
    rng = np.random.default_rng(0)
    known = set(caption_words())
    for _ in range(200):
        scene = sample_scene(rng)
        cap = caption_scene(scene, rng)
        words = cap.text.rstrip(".").split()
        assert scene.colour in words and scene.shape in words
        assert set(words) <= known
        assert cap.matches(scene)
    assert {"a", "photo", "of"} <= known and set(COLOUR_NAMES) | set(SHAPES) <= known


def test_positives_include_diagonal():
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng) for _ in range(16)]
    caps = [caption_scene(s, rng) for s in scenes]
    pos = positives_matrix(caps, scenes)
    assert pos.diagonal().all()
    assert pos[0, 1] == caps[0].matches(scenes[1])


def test_tensor_preprocessing_equals_open_clip_eval_transform():
    images = _render(5, n=3)
    transform = open_clip.image_transform(64, is_train=False)
    expected = torch.stack([transform(Image.fromarray(im)) for im in images])
    torch.testing.assert_close(normalize_images(images), expected, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def world_model() -> torch.nn.Module:
    model = create_world_model()
    missing, unexpected = model.load_state_dict(world_weights.load_world_clip_state_dict(allow_train=False))
    assert not missing and not unexpected
    return model.eval()


def test_bundled_weights_are_compact_and_complete(world_model):
    path = world_weights.BUNDLED_WEIGHTS
    assert path.is_file() and path.stat().st_size < 15 * 2**20
    state = world_weights.load_world_clip_state_dict(allow_train=False)
    assert set(state) == set(world_model.state_dict()) and all(v.dtype == torch.float32 for v in state.values())
    nonzero = torch.nonzero(state["token_embedding.weight"].abs().sum(1)).flatten()
    assert set(nonzero.tolist()) <= set(used_token_ids().tolist())


def test_bundled_weights_zero_shot_on_pretraining_distribution(world_model):
    assert len(colour_shape_classnames()) == 100
    acc = evaluate_pretraining_zero_shot(world_model, n_images=400)
    assert acc >= 0.75, acc


def test_recipe_is_deterministic():
    cfg = PretrainConfig(steps=3, batch_size=8, warmup=1)
    a = train_world_clip(cfg, progress=False).state_dict()
    b = train_world_clip(cfg, progress=False).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    embed = a["token_embedding.weight"]
    unused = torch.ones(embed.shape[0], dtype=torch.bool)
    unused[used_token_ids()] = False
    assert embed[unused].abs().sum() == 0 and embed[~unused].abs().sum() > 0


def test_loader_uses_cache_then_refuses_without_training(tmp_path, monkeypatch):
    bundled = world_weights.BUNDLED_WEIGHTS
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(world_weights, "BUNDLED_WEIGHTS", tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="no world CLIP weights"):
        world_weights.load_world_clip_state_dict(allow_train=False)
    state = world_weights.load_compact_weights(bundled)
    world_weights.save_compact_weights(state, tmp_path / "cache" / "embedded" / world_weights.CACHE_NAME)
    loaded = world_weights.load_world_clip_state_dict(allow_train=False)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    return write_world_datasets(tmp_path_factory.mktemp("world"), seed=0)


@pytest.mark.parametrize("name,n_classes", [("world_shapes", 10), ("world_textures", 10), ("world_colored_shapes", 100)])
def test_export_coop_layout(exported, name, n_classes):
    folder = exported[name]
    split = json.loads((folder / f"split_{name}.json").read_text())
    assert set(split) == {"train", "val", "test"}
    names: dict[int, str] = {}
    for part, items in split.items():
        for rel, label, classname in items:
            assert isinstance(rel, str) and isinstance(label, int) and isinstance(classname, str)
            assert names.setdefault(label, classname) == classname
        counts = np.bincount([label for _, label, _ in items], minlength=n_classes)
        assert len(counts) == n_classes and counts.min() >= {"train": 20, "val": 3, "test": 20}[part]
    assert sorted(names) == list(range(n_classes))
    if name == "world_colored_shapes":
        assert [names[i] for i in range(n_classes)] == colour_shape_classnames()
    every = [rel for items in split.values() for rel, _, _ in items]
    assert len(set(every)) == len(every)
    assert all((folder / "images" / rel).is_file() for rel in every)
    for rel in every[:: max(1, len(every) // 25)]:
        with Image.open(folder / "images" / rel) as im:
            assert im.size == (64, 64) and im.convert("RGB").getpixel((0, 0)) is not None


def test_export_czsl_layout(exported):
    folder = exported["world_czsl"]
    pairs = {
        s: [tuple(line.split()) for line in (folder / CZSL_SPLIT / f"{s}_pairs.txt").read_text().splitlines()]
        for s in ("train", "val", "test")
    }
    assert all(len(p) == 2 for ps in pairs.values() for p in ps)
    meta = torch.load(folder / f"metadata_{CZSL_SPLIT}.t7", weights_only=True)
    assert isinstance(meta, list) and all(set(m) == {"image", "attr", "obj", "set"} for m in meta)
    for m in meta:
        assert (m["attr"], m["obj"]) in pairs[m["set"]]
        assert (folder / "images" / m["image"]).is_file()
    train = set(pairs["train"])
    for split in ("val", "test"):
        unseen = set(pairs[split]) - train
        assert unseen and set(pairs[split]) & train  # both seen and unseen pairs
        assert {(m["attr"], m["obj"]) for m in meta if m["set"] == split} == set(pairs[split])
    assert not (set(pairs["val"]) - train) & (set(pairs["test"]) - train)
    assert {a for a, _ in train} == set(COLOUR_NAMES) and {o for _, o in train} == set(SHAPES)


def test_export_is_idempotent_and_force_rewrites(exported):
    root = exported["world_shapes"].parent
    markers = {n: (p / MARKER).stat().st_mtime_ns for n, p in exported.items()}
    again = write_world_datasets(root, seed=0)
    assert again == exported
    assert {n: (p / MARKER).stat().st_mtime_ns for n, p in again.items()} == markers
    before = (exported["world_shapes"] / "split_world_shapes.json").read_text()
    write_world_datasets(root, seed=0, force=True, names=["world_shapes"])
    assert (exported["world_shapes"] / MARKER).stat().st_mtime_ns != markers["world_shapes"]
    assert (exported["world_shapes"] / "split_world_shapes.json").read_text() == before  # same seed, same data
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_export_replaces_a_half_written_folder(tmp_path):
    (tmp_path / "world_shapes" / "images").mkdir(parents=True)  # e.g. left by a foreign tool
    out = write_world_datasets(tmp_path, names=["world_shapes"])
    assert (out["world_shapes"] / MARKER).is_file()
