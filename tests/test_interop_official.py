"""Interop with the CoOp-family repositories: Dassl's few-shot draw, and their released prompt files."""

from __future__ import annotations

import os
import pickle
import random
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from vlprompt.data.classification import ClassificationDataset, Item
from vlprompt.data.fewshot import few_shot_split, read_split_meta, sample_dassl, split_file_path
from vlprompt.errors import VLPromptError
from vlprompt.interop.official import import_official, read_tensors
from vlprompt.methods import build_method


def _dassl_reference(data_source, num_shots):
    """Dassl's DatasetBase.generate_fewshot_dataset (repeat=True) on the global `random`, as documented."""
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    dataset = []
    for _, items in tracker.items():
        if len(items) >= num_shots:
            dataset.extend(random.sample(items, num_shots))
        else:
            dataset.extend(random.choices(items, k=num_shots))
    return dataset


def _items(root: Path, split: str, per_class: dict[int, int]) -> list[Item]:
    rows = [Item(root / f"{split}_{c}_{i}.png", c, f"class{c}") for c, n in per_class.items() for i in range(n)]
    random.Random(len(rows)).shuffle(rows)  # a split file lists classes interleaved, not grouped
    return rows


def test_dassl_sampling_is_the_coop_draw(tmp_path):
    train = _items(tmp_path, "train", {0: 20, 1: 3, 2: 17, 3: 40})  # class 1 is short: sampled with repeats
    val = _items(tmp_path, "val", {0: 5, 1: 5, 2: 5, 3: 5})
    for seed in (1, 2, 3):
        state = random.getstate()
        random.seed(seed)  # Dassl's set_random_seed, then the dataset class draws train, then val
        want_train, want_val = _dassl_reference(train, 16), _dassl_reference(val, min(16, 4))
        random.setstate(state)
        got_train, got_val = sample_dassl(train, val, 16, seed)
        assert got_train == want_train and got_val == want_val
    counts = defaultdict(int)
    for item in got_train:
        counts[item.label] += 1
    assert dict(counts) == {0: 16, 1: 16, 2: 16, 3: 16} and len({i.path for i in got_train if i.label == 1}) == 3
    assert sample_dassl(train, val, 4, 1)[0] != sample_dassl(train, val, 4, 2)[0]


def test_few_shot_split_with_dassl_sampler_writes_its_own_file(tmp_path):
    train = _items(tmp_path, "train", {0: 10, 1: 10})
    val = _items(tmp_path, "val", {0: 6, 1: 6})
    dataset = ClassificationDataset("toy", tmp_path, ["class0", "class1"], "{}", {"train": train, "val": val})
    got = few_shot_split(dataset, 4, 7, tmp_path / "splits", sampler="dassl")
    assert got == sample_dassl(train, val, 4, 7)
    path = split_file_path(tmp_path / "splits", "toy", 4, 7, "train", "dassl")
    assert path.name == "shot_4-seed_7.dassl.train.json" and read_split_meta(path)["sampler"] == "dassl"
    assert few_shot_split(dataset, 4, 7, tmp_path / "splits", sampler="dassl") == got  # read back
    with pytest.raises(VLPromptError, match="sampler 'coop' is not one of"):
        few_shot_split(dataset, 4, 7, tmp_path / "splits", sampler="coop")


class _RunsCode:
    """Pickles as a call of os.system, like a malicious checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _official_file(tmp_path, official_state, marker):
    payload = {
        "state_dict": official_state,
        "epoch": 10,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.002}]},
        "scheduler": {"successor": _RunsCode(marker), "last_epoch": 10},  # Dassl pickles scheduler objects
        "val_result": None,
    }
    path = tmp_path / "prompt_learner" / "model.pth.tar-10"
    path.parent.mkdir(parents=True)
    torch.save(payload, path)
    return path


def test_import_official_cocoop_reads_tensors_only(tiny_vit, tmp_path):
    classes = ["cat", "dog", "fish"]
    ours = build_method("cocoop", tiny_vit, classes, {"n_ctx": 3, "ctx_init": ""})
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.normal_()
    state = ours.trainable_state()
    official = {
        "ctx": state["ctx"].half(),  # the official runs train in fp16
        "meta_net.linear1.weight": state["meta_net.0.weight"],
        "meta_net.linear1.bias": state["meta_net.0.bias"],
        "meta_net.linear2.weight": state["meta_net.2.weight"],
        "meta_net.linear2.bias": state["meta_net.2.bias"],
        "token_prefix": torch.zeros(3, 1, tiny_vit.identity.width),
        "token_suffix": torch.zeros(3, 10, tiny_vit.identity.width),
    }
    marker = tmp_path / "code-ran"
    path = _official_file(tmp_path, official, marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what the fallback is for
    assert set(read_tensors(path)) == set(official)
    imported = import_official(path, "cocoop", tiny_vit, classes)
    assert not marker.exists()
    assert imported.config.n_ctx == 3
    torch.testing.assert_close(imported.ctx.data, state["ctx"].half().float())
    torch.testing.assert_close(imported.meta_net[2].weight.data, state["meta_net.2.weight"])


def test_import_official_coop_class_specific_and_errors(tiny_vit, tmp_path):
    width = tiny_vit.identity.width
    ctx = torch.randn(2, 4, width)
    path = _official_file(tmp_path, {"module.prompt_learner.ctx": ctx}, tmp_path / "m")
    coop = import_official(path, "coop", tiny_vit, ["cat", "dog"], {"class_position": "middle"})
    assert coop.config.class_specific and coop.config.n_ctx == 4 and torch.equal(coop.ctx.data, ctx)
    with pytest.raises(VLPromptError, match="class-specific context for 2 classes, 3 class names given"):
        import_official(path, "coop", tiny_vit, ["a", "b", "c"])
    wide = _official_file(tmp_path / "w", {"ctx": torch.randn(4, 512)}, tmp_path / "m")
    with pytest.raises(VLPromptError, match=f"context vectors are 512 wide, backbone vlprompt-test-vit embeds tokens in {width}"):
        import_official(wide, "kgcoop", tiny_vit, ["a"])
    with pytest.raises(VLPromptError, match="no meta_net.linear1.weight"):
        import_official(path, "cocoop", tiny_vit, ["a", "b"])
