"""Evaluation protocols beyond plain few-shot: base-to-new splits, their harmonic mean, and class mapping
for cross-dataset (XD) and domain-generalisation (DG) test sets.

- Base-to-new (CoCoOp): train on the base half of the classes, test on base and on the unseen new half.
- XD: prompts learned on a source dataset are evaluated on other datasets with their own classes; no
  mapping is needed, the target's class names are used as they are.
- DG: a variant test set (ImageNet-V2/-Sketch/-A/-R) names its classes like the source, sometimes a
  subset; `map_classes` puts its items into the source label space, failing loudly on any name it
  cannot place rather than silently scoring them as wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from vlprompt.data.classification import Item
from vlprompt.errors import VLPromptError


@dataclass(frozen=True)
class ClassSubset:
    """Some of a dataset's classes, relabelled 0..k-1: their names, original labels and items."""

    classnames: list[str]
    source_labels: list[int]  # source_labels[new_label] = label in the full dataset
    items: list[Item]


def base_new_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """Original labels of the base and new halves: CoOp's subsample_classes, base = first ceil(n/2)."""
    if num_classes < 2:
        raise VLPromptError(f"base-to-new needs at least 2 classes, got {num_classes}")
    m = math.ceil(num_classes / 2)
    return list(range(m)), list(range(m, num_classes))


def _subset(classnames: Sequence[str], labels: list[int], items: Sequence[Item]) -> ClassSubset:
    relabel = {old: new for new, old in enumerate(labels)}
    chosen = [replace(item, label=relabel[item.label]) for item in items if item.label in relabel]
    return ClassSubset([classnames[i] for i in labels], labels, chosen)


def base_new_split(classnames: Sequence[str], items: Sequence[Item]) -> tuple[ClassSubset, ClassSubset]:
    """Split items into base (first ceil(n/2) labels) and new (the rest) halves, each relabelled from 0.

    `classnames[i]` is the name of label i. Call it once per split (train, test) with the same class
    names; the relabelling depends only on the class list, so the halves agree across splits.
    """
    n = len(classnames)
    for item in items:
        if not 0 <= item.label < n:
            raise VLPromptError(f"item {item.path} has label {item.label}; valid labels are 0..{n - 1}")
        if classnames[item.label] != item.classname:
            raise VLPromptError(
                f"item {item.path} has label {item.label} named {item.classname!r}, "
                f"but the class list names label {item.label} {classnames[item.label]!r}"
            )
    base, new = base_new_classes(n)
    return _subset(classnames, base, items), _subset(classnames, new, items)


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2·base·new / (base + new): the base-to-new headline number (0 when both are 0)."""
    if base < 0 or new < 0 or math.isnan(base) or math.isnan(new):
        raise VLPromptError(f"harmonic mean needs non-negative accuracies, got base={base!r}, new={new!r}")
    if base + new == 0:
        return 0.0
    return 2 * base * new / (base + new)


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").casefold().split())


def map_classes(
    source_classnames: Sequence[str], target_items: Sequence[Item], mapping: Mapping[str, str] | None = None
) -> list[Item]:
    """Relabel a variant test set's items into the source label space (label = index in the source list).

    A target class name is looked up through `mapping` first (target name -> source name), then
    exactly, then ignoring case, underscores and repeated spaces when that match is unique. Items
    come back with the source label and source class name. Any name that cannot be placed raises one
    error listing all of them.
    """
    mapping = dict(mapping or {})
    index = {name: i for i, name in enumerate(source_classnames)}
    bad_targets = sorted({source for source in mapping.values() if source not in index})
    if bad_targets:
        raise VLPromptError(f"class mapping points to names missing from the source classes: {', '.join(map(repr, bad_targets))}")
    loose: dict[str, list[int]] = {}
    for i, name in enumerate(source_classnames):
        loose.setdefault(_normalise(name), []).append(i)

    resolved: dict[str, int] = {}
    unmapped: set[str] = set()
    for name in {item.classname for item in target_items}:
        if name in mapping:
            resolved[name] = index[mapping[name]]
        elif name in index:
            resolved[name] = index[name]
        elif len(loose.get(_normalise(name), [])) == 1:
            resolved[name] = loose[_normalise(name)][0]
        else:
            unmapped.add(name)
    if unmapped:
        listed = sorted(unmapped)
        shown = ", ".join(map(repr, listed[:10])) + (f" and {len(listed) - 10} more" if len(listed) > 10 else "")
        raise VLPromptError(
            f"{len(listed)} target classes are not among the {len(source_classnames)} source classes: {shown}; "
            "pass mapping={target_name: source_name} for them"
        )
    return [
        replace(item, label=resolved[item.classname], classname=source_classnames[resolved[item.classname]])
        for item in target_items
    ]


def labels_present(items: Sequence[Item]) -> list[int]:
    """Sorted source labels that occur in `items`: the logit columns to keep when a DG set is a subset."""
    return sorted({item.label for item in items})
