"""What a method predicts over: a list of classes, or attribute-object pairs with their primitives.

A method is built from ``(backbone, label_space, config)``. The label space also names the task
(``classification`` or ``czsl``), so one registry, one runner and one checkpoint format serve both:
a checkpoint records ``label_space.to_dict()`` and `label_space_from_dict` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from vlprompt.errors import VLPromptError


@dataclass(frozen=True)
class ClassLabels:
    """Classification over named classes (label i is ``classnames[i]``)."""

    classnames: tuple[str, ...]
    task: ClassVar[str] = "classification"

    @property
    def names(self) -> list[str]:
        return list(self.classnames)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "classnames": list(self.classnames)}


@dataclass(frozen=True)
class PairLabels:
    """Compositional labels: pair i is ``(attrs[pairs[i][0]], objs[pairs[i][1]])``; its name "attr obj"."""

    attrs: tuple[str, ...]
    objs: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]
    task: ClassVar[str] = "czsl"

    def __post_init__(self) -> None:
        for a, o in self.pairs:
            if not (0 <= a < len(self.attrs) and 0 <= o < len(self.objs)):
                raise VLPromptError(
                    f"pair ({a}, {o}) is out of range: {len(self.attrs)} attributes, {len(self.objs)} objects"
                )

    @classmethod
    def create(cls, attrs: Sequence[str], objs: Sequence[str], pairs: torch.Tensor | Sequence) -> PairLabels:
        rows = torch.as_tensor(pairs, dtype=torch.long).reshape(-1, 2).tolist()
        return cls(tuple(attrs), tuple(objs), tuple((int(a), int(o)) for a, o in rows))

    def with_pairs(self, pairs: torch.Tensor | Sequence) -> PairLabels:
        """The same primitives over other candidate pairs (train pairs to train, all pairs to test)."""
        return PairLabels.create(self.attrs, self.objs, pairs)

    def pair_tensor(self) -> torch.Tensor:
        return torch.tensor(self.pairs, dtype=torch.long).reshape(-1, 2)

    @property
    def names(self) -> list[str]:
        return [f"{self.attrs[a]} {self.objs[o]}" for a, o in self.pairs]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "attrs": list(self.attrs), "objs": list(self.objs),
                "pairs": [list(p) for p in self.pairs]}


LabelSpace = ClassLabels | PairLabels


def as_label_space(labels: LabelSpace | Sequence[str]) -> LabelSpace:
    """A label space as given, or class names turned into `ClassLabels`."""
    if isinstance(labels, (ClassLabels, PairLabels)):
        return labels
    if isinstance(labels, str) or not all(isinstance(n, str) for n in labels):
        raise VLPromptError("a label space is a list of class names, ClassLabels or PairLabels")
    return ClassLabels(tuple(labels))


def label_space_from_dict(data: dict[str, Any]) -> LabelSpace:
    """Inverse of ``to_dict`` (what checkpoints record)."""
    task = data.get("task", "classification")
    if task == "classification":
        return ClassLabels(tuple(data["classnames"]))
    if task == "czsl":
        return PairLabels.create(data["attrs"], data["objs"], data["pairs"])
    raise VLPromptError(f"unknown task {task!r} in a recorded label space. Valid: classification, czsl")
