"""CZSL reader: reference ordering rules on miniature copies of MIT-States, UT-Zappos and C-GQA."""

from __future__ import annotations

import itertools

import pytest
import torch

from vlprompt.cli import main
from vlprompt.config import load_yaml
from vlprompt.czsl.data import CZSLDataset, make_pair_files, read_pair_file
from vlprompt.czsl.synthetic import write_miniature
from vlprompt.errors import VLPromptError


@pytest.mark.parametrize("flavour", ["mit-states", "ut-zappos", "cgqa"])
def test_reader_ordering(tmp_path, flavour):
    root = write_miniature(tmp_path / flavour, flavour)
    ds = CZSLDataset.load(root)
    split = root / "compositional-split-natural"
    train = read_pair_file(split / "train_pairs.txt")
    every = train + read_pair_file(split / "val_pairs.txt") + read_pair_file(split / "test_pairs.txt")
    assert ds.attrs == sorted({a for a, _ in every}) and ds.objs == sorted({o for _, o in every})
    assert ds.pairs == sorted(set(every))
    assert ds.train_pairs == train and train != sorted(train)  # file order kept (deliberately unsorted)
    # train labels index the train pairs in file order; others index ds.pairs
    for item in ds.items["train"]:
        assert train[item.label] == (ds.attrs[item.attr], ds.objs[item.obj])
        assert ds.pairs[item.pair] == train[item.label]
    for item in ds.items["test"]:
        assert item.label == item.pair
    assert len(ds.items["train"]) == 12 and len(ds.items["val"]) == 10  # NA entries skipped
    assert all(item.path.is_file() for items in ds.items.values() for item in items)
    seen = ds.seen_mask()
    assert seen.sum() == 6
    closed = ds.closed_mask("test")
    assert closed.sum() == len(set(train) | set(ds.test_pairs))
    ow = CZSLDataset.load(root, open_world=True)
    assert ow.pairs == list(itertools.product(ow.attrs, ow.objs)) and bool(ow.closed_mask("test").all())


def test_set_other_than_train_val_is_test_and_unknown_pairs_skipped(tmp_path):
    root = write_miniature(tmp_path / "m", "mit-states")
    meta = torch.load(root / "metadata_compositional-split-natural.t7", weights_only=True)
    a, o = meta[-3]["attr"], meta[-3]["obj"]
    meta.append({"image": meta[-3]["image"], "attr": a, "obj": o, "set": "holdout"})
    meta.append({"image": "x.jpg", "attr": "nonexistent", "obj": o, "set": "train"})
    torch.save(meta, root / "metadata_compositional-split-natural.t7")
    ds = CZSLDataset.load(root)
    assert len(ds.items["test"]) == 11 and len(ds.items["train"]) == 12


def test_make_pairs_regenerates_the_split(tmp_path):
    root = write_miniature(tmp_path / "z", "ut-zappos")
    split = root / "compositional-split-natural"
    before = {p: set(read_pair_file(split / f"{p}_pairs.txt")) for p in ("train", "val", "test")}
    with pytest.raises(VLPromptError, match="exists"):
        make_pair_files(root)
    for p in before:
        (split / f"{p}_pairs.txt").unlink()
    assert main(["czsl", "make-pairs", str(root)]) == 0
    after = {p: set(read_pair_file(split / f"{p}_pairs.txt")) for p in before}
    assert after == before


def test_missing_files_fail_clearly(tmp_path):
    with pytest.raises(VLPromptError, match="not found"):
        CZSLDataset.load(tmp_path)
    root = write_miniature(tmp_path / "c", "cgqa")
    (root / "compositional-split-natural" / "val_pairs.txt").unlink()
    with pytest.raises(VLPromptError, match="make-pairs"):
        CZSLDataset.load(root)


@pytest.mark.parametrize("name", ["mit-states", "ut-zappos", "cgqa", "world"])
def test_dataset_configs_load(name):
    data = load_yaml(f"czsl/datasets/{name}.yaml")
    assert data["dataset"]["split_dir"] == "compositional-split-natural"


@pytest.mark.parametrize("name", ["mit-states_csp", "mit-states_dfsp", "ut-zappos_dfsp", "cgqa_csp", "cgqa_dfsp",
                                  "ut-zappos_csp", "cgqa_zero-shot", "world"])
def test_experiment_configs_are_valid(name):
    from vlprompt.config import ExperimentConfig
    from vlprompt.tasks.czsl import CZSLDatasetSection, CZSLEvalSection

    config = ExperimentConfig.load(f"czsl/{name}.yaml")  # every section checked when loaded
    assert config.task == "czsl"
    assert isinstance(config.dataset, CZSLDatasetSection) and isinstance(config.eval, CZSLEvalSection)
