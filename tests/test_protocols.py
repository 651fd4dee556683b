"""Base-to-new halves (CoOp's subsample_classes), harmonic mean, and DG class mapping."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlprompt.data.classification import Item
from vlprompt.data.protocols import base_new_classes, base_new_split, harmonic_mean, labels_present, map_classes
from vlprompt.errors import VLPromptError


def items_for(classnames: list[str], per_class: int = 2) -> list[Item]:
    return [Item(Path(f"/fake/{c}/{i}.jpg"), label, c) for label, c in enumerate(classnames) for i in range(per_class)]


def test_halves_odd_count_ceil_and_relabel():
    names = ["a", "b", "c", "d", "e"]
    base, new = base_new_split(names, items_for(names))
    assert base.classnames == ["a", "b", "c"] and base.source_labels == [0, 1, 2]
    assert new.classnames == ["d", "e"] and new.source_labels == [3, 4]
    assert [(i.label, i.classname) for i in base.items] == [(0, "a"), (0, "a"), (1, "b"), (1, "b"), (2, "c"), (2, "c")]
    assert [(i.label, i.classname) for i in new.items] == [(0, "d"), (0, "d"), (1, "e"), (1, "e")]
    assert all(base.classnames[i.label] == i.classname for i in base.items)


@pytest.mark.parametrize("n, m", [(2, 1), (3, 2), (10, 5), (37, 19), (101, 51), (1000, 500)])
def test_base_size_matches_coop(n, m):
    base, new = base_new_classes(n)
    assert len(base) == m and base + new == list(range(n))


def test_base_new_split_checks_labels():
    with pytest.raises(VLPromptError, match="valid labels are 0..1"):
        base_new_split(["a", "b"], [Item(Path("/x.jpg"), 2, "c")])
    with pytest.raises(VLPromptError, match="names label 1 'b'"):
        base_new_split(["a", "b"], [Item(Path("/x.jpg"), 1, "a")])
    with pytest.raises(VLPromptError, match="at least 2 classes"):
        base_new_split(["a"], [])


def test_harmonic_mean_exact():
    assert harmonic_mean(80.0, 80.0) == 80.0
    assert harmonic_mean(60.0, 90.0) == 72.0
    assert harmonic_mean(0.0, 50.0) == 0.0
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(82.69, 63.22) == pytest.approx(71.66, abs=0.01)  # CoOp's B2N row
    with pytest.raises(VLPromptError, match="non-negative"):
        harmonic_mean(-1.0, 50.0)


def test_map_classes_subset_with_mapping_and_loose_match():
    source = ["goldfish", "great white shark", "hammerhead", "tench"]
    target = [
        Item(Path("/r/1.jpg"), 0, "hammerhead"),
        Item(Path("/r/2.jpg"), 1, "Great_White_Shark"),
        Item(Path("/r/3.jpg"), 2, "carassius auratus"),
    ]
    mapped = map_classes(source, target, {"carassius auratus": "goldfish"})
    assert [(i.label, i.classname) for i in mapped] == [(2, "hammerhead"), (1, "great white shark"), (0, "goldfish")]
    assert [i.path for i in mapped] == [i.path for i in target]
    assert labels_present(mapped) == [0, 1, 2]


def test_map_classes_errors_name_unmapped():
    source = ["cat", "dog"]
    target = [Item(Path("/t/1.jpg"), 0, "cat"), Item(Path("/t/2.jpg"), 1, "wolf"), Item(Path("/t/3.jpg"), 2, "yak")]
    with pytest.raises(VLPromptError, match=r"2 target classes are not among the 2 source classes: 'wolf', 'yak'"):
        map_classes(source, target)
    with pytest.raises(VLPromptError, match="missing from the source classes: 'lion'"):
        map_classes(source, target, {"wolf": "lion"})
