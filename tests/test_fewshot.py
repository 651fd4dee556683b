"""Few-shot sampling and split files: determinism, K per class, short classes, exact round trips."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from vlprompt.data.classification import ClassificationDataset, Item
from vlprompt.data.fewshot import (
    few_shot_split,
    read_split_file,
    read_split_meta,
    sample_few_shot,
    sample_few_shot_val,
    short_classes,
    split_file_path,
    val_shots,
    write_split_file,
)
from vlprompt.errors import VLPromptError

ROOT = Path("/fake/images")


def make_items(counts: dict[str, int], root: Path = ROOT) -> list[Item]:
    items = []
    for label, (name, n) in enumerate(counts.items()):
        items += [Item(root / name / f"{i:03d}.jpg", label, name) for i in range(n)]
    return items


COUNTS = {"cat": 20, "dog": 20, "owl": 3, "fox": 20}


def test_k_per_class_and_short_class_takes_all(caplog):
    with caplog.at_level(logging.WARNING, logger="vlprompt.data.fewshot"):
        chosen = sample_few_shot(make_items(COUNTS), shots=4, seed=1)
    assert Counter(item.classname for item in chosen) == {"cat": 4, "dog": 4, "owl": 3, "fox": 4}
    assert short_classes(make_items(COUNTS), 4) == {"owl": 3}
    assert "owl" in caplog.text
    assert len(set(chosen)) == len(chosen)
    assert [item.label for item in chosen] == sorted(item.label for item in chosen)


def test_same_seed_same_items_different_seed_different_items():
    items = make_items(COUNTS)
    a = sample_few_shot(items, 4, seed=1)
    assert sample_few_shot(items, 4, seed=1) == a
    assert sample_few_shot(list(reversed(items)), 4, seed=1) == a  # input order does not matter
    assert sample_few_shot(items, 4, seed=2) != a


def test_class_sample_independent_of_other_classes():
    items = make_items(COUNTS)
    fewer = [item for item in items if item.classname != "dog"]
    more = items + [Item(ROOT / "zebra" / f"{i}.jpg", 4, "zebra") for i in range(30)]
    cat = lambda chosen: [i for i in chosen if i.classname == "cat"]  # noqa: E731
    reference = cat(sample_few_shot(items, 2, seed=3))
    assert cat(sample_few_shot(fewer, 2, seed=3)) == reference
    assert cat(sample_few_shot(more, 2, seed=3)) == reference


def test_val_is_min_shots_4_and_independent_draw():
    items = make_items({"cat": 40, "dog": 40})
    assert [val_shots(k) for k in (1, 2, 4, 8, 16)] == [1, 2, 4, 4, 4]
    val = sample_few_shot_val(items, 16, seed=1)
    assert Counter(i.classname for i in val) == {"cat": 4, "dog": 4}
    assert val != sample_few_shot(items, 4, seed=1)  # salted: not the first 4 of the train draw


def test_label_with_two_names_is_an_error():
    items = make_items({"cat": 3}) + [Item(ROOT / "x.jpg", 0, "dog")]
    with pytest.raises(VLPromptError, match="label 0 has two class names"):
        sample_few_shot(items, 1, seed=1)


@pytest.mark.parametrize("shots", [0, -1, 1.5, True])
def test_bad_shots(shots):
    with pytest.raises(VLPromptError, match="shots must be a positive integer"):
        sample_few_shot(make_items(COUNTS), shots, seed=1)


def test_split_file_round_trip(tmp_path):
    items = sample_few_shot(make_items(COUNTS), 2, seed=5)
    path = write_split_file(tmp_path / "s.json", items, ROOT, {"shots": 2, "seed": 5, "dataset": "toy"})
    data = json.loads(path.read_text())
    assert data["items"][0] == ["cat/" + items[0].path.name, 0, "cat"]  # relative, posix
    assert read_split_meta(path) == {"shots": 2, "seed": 5, "dataset": "toy"}
    assert read_split_file(path, ROOT) == items
    moved = read_split_file(path, Path("/elsewhere"))
    assert [i.path for i in moved] == [Path("/elsewhere") / i.path.relative_to(ROOT) for i in items]
    assert not list(tmp_path.glob("*.tmp"))


def test_split_file_errors(tmp_path):
    with pytest.raises(VLPromptError, match="not under root"):
        write_split_file(tmp_path / "s.json", [Item(Path("/other/x.jpg"), 0, "cat")], ROOT, {})
    assert not (tmp_path / "s.json").exists()
    with pytest.raises(VLPromptError, match="split file not found"):
        read_split_file(tmp_path / "missing.json", ROOT)
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "meta": {}, "items": [["a.jpg", "0", "cat"]]}')
    with pytest.raises(VLPromptError, match="entry 0"):
        read_split_file(bad, ROOT)


def toy_dataset(with_val: bool = True) -> ClassificationDataset:
    splits = {"train": make_items(COUNTS), "test": make_items({"cat": 5, "dog": 5, "owl": 5, "fox": 5})}
    if with_val:
        splits["val"] = [Item(ROOT / "val" / i.path.name, i.label, i.classname) for i in make_items(COUNTS)]
    return ClassificationDataset("toy", ROOT, list(COUNTS), "a photo of a {}.", splits)


def test_few_shot_split_caches_and_reuses(tmp_path, monkeypatch):
    dataset = toy_dataset()
    train, val = few_shot_split(dataset, 8, seed=1, cache_dir=tmp_path)
    assert Counter(i.classname for i in train) == {"cat": 8, "dog": 8, "owl": 3, "fox": 8}
    assert Counter(i.classname for i in val) == {"cat": 4, "dog": 4, "owl": 3, "fox": 4}
    assert all(i.path.parent.name == "val" for i in val)
    train_file = split_file_path(tmp_path, "toy", 8, 1, "train")
    meta = read_split_meta(train_file)
    assert meta["shots"] == 8 and meta["seed"] == 1 and meta["dataset"] == "toy"
    assert meta["short_classes"] == {"owl": 3}

    def no_sampling(*args, **kwargs):
        raise AssertionError("cached split must be reused, not re-sampled")

    monkeypatch.setattr("vlprompt.data.fewshot.sample_few_shot", no_sampling)
    assert few_shot_split(dataset, 8, seed=1, cache_dir=tmp_path) == (train, val)


def test_few_shot_split_mismatched_cache(tmp_path):
    dataset = toy_dataset()
    few_shot_split(dataset, 2, seed=1, cache_dir=tmp_path)
    wrong = split_file_path(tmp_path, "toy", 4, 1, "train")
    split_file_path(tmp_path, "toy", 2, 1, "train").rename(wrong)
    with pytest.raises(VLPromptError, match="shots=2 but this run needs shots=4"):
        few_shot_split(dataset, 4, seed=1, cache_dir=tmp_path)


def test_few_shot_split_without_val_holds_out_train(tmp_path):
    train, val = few_shot_split(toy_dataset(with_val=False), 4, seed=2, cache_dir=tmp_path)
    assert not set(train) & set(val)
    assert Counter(i.classname for i in val) == {"cat": 4, "dog": 4, "fox": 4}  # owl has nothing left
