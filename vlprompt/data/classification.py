"""Image classification datasets: items, splits, the CoOp split-file reader and a torch Dataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vlprompt.data.images import load_image
from vlprompt.errors import VLPromptError
from vlprompt.paths import read_json

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    """One labelled image: where it is, its label index and its class name."""

    path: Path
    label: int
    classname: str


@dataclass
class ClassificationDataset:
    """Class names (index = label), the dataset's hand-crafted template and its splits."""

    name: str
    root: Path
    classnames: list[str]
    template: str
    splits: dict[str, list[Item]] = field(default_factory=dict)
    source: str | None = None  # the file the splits were read from, for error messages

    def split(self, name: str) -> list[Item]:
        """The items of one split; an unknown split name lists the valid ones."""
        if name not in self.splits:
            valid = ", ".join(self.splits) or "(none)"
            raise VLPromptError(f"dataset {self.name!r} has no split {name!r}. Valid: {valid}")
        return self.splits[name]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def check_labels(entries: Sequence[tuple[int, str]], where: str) -> list[str]:
    """Class names ordered by label, after checking labels are 0..C-1 and map one-to-one to names."""
    by_label: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for label, classname in entries:
        if by_label.setdefault(label, classname) != classname:
            raise VLPromptError(f"{where}: label {label} has two class names, {by_label[label]!r} and {classname!r}")
        if by_name.setdefault(classname, label) != label:
            raise VLPromptError(f"{where}: class name {classname!r} has two labels, {by_name[classname]} and {label}")
    if not by_label:
        raise VLPromptError(f"{where}: no items in any split")
    missing = sorted(set(range(len(by_label))) - set(by_label))
    if missing or min(by_label) < 0:
        raise VLPromptError(
            f"{where}: labels must be 0..{len(by_label) - 1} without gaps; "
            f"found {min(by_label)}..{max(by_label)} with {len(by_label)} distinct labels"
        )
    return [by_label[i] for i in range(len(by_label))]


def verify_images(items: Sequence[Item], source: str) -> None:
    """Fail if a listed image does not exist, naming the first missing file and how many are missing."""
    missing = [item.path for item in items if not item.path.is_file()]
    if missing:
        more = f" ({len(missing)} of {len(items)} listed images are missing)" if len(missing) > 1 else ""
        raise VLPromptError(f"image not found: {missing[0]} (listed in {source}){more}")


def parse_split_entry(entry: object, image_dir: Path, where: str) -> Item:
    """One ``[relative_path, label, classname]`` entry (CoOp split files and our few-shot files)."""
    if (
        not isinstance(entry, (list, tuple))
        or len(entry) != 3
        or not isinstance(entry[0], str)
        or isinstance(entry[1], bool)
        or not isinstance(entry[1], int)
        or not isinstance(entry[2], str)
    ):
        raise VLPromptError(f"{where}: expected [relative_path, label, classname], got {entry!r:.120}")
    return Item(image_dir / entry[0], entry[1], entry[2])


def read_coop_split(
    image_dir: str | Path, split_file: str | Path, name: str, template: str, verify: bool = False
) -> ClassificationDataset:
    """Read a CoOp ``split_zhou_*.json`` file: ``{"train"|"val"|"test": [[relpath, label, classname]]}``.

    Paths are relative to `image_dir`. With `verify`, every listed image must exist (a stat per file:
    cheap locally, slower on network storage, hence opt-in).
    """
    image_dir, split_file = Path(image_dir), Path(split_file)
    if not image_dir.is_dir():
        raise VLPromptError(f"dataset {name!r}: image folder not found: {image_dir}")
    if not split_file.is_file():
        raise VLPromptError(f"dataset {name!r}: split file not found: {split_file}")
    data = read_json(split_file, "split file")
    if not isinstance(data, dict) or not data:
        raise VLPromptError(
            f"split file {split_file}: expected an object with splits {', '.join(SPLIT_NAMES)}, got {type(data).__name__}"
        )
    splits: dict[str, list[Item]] = {}
    for split_name, entries in data.items():
        where = f"split file {split_file}, split {split_name!r}"
        if not isinstance(entries, list):
            raise VLPromptError(f"{where}: expected a list of [relative_path, label, classname]")
        splits[split_name] = [parse_split_entry(entry, image_dir, f"{where}, entry {i}") for i, entry in enumerate(entries)]
    all_items = [item for items in splits.values() for item in items]
    classnames = check_labels([(item.label, item.classname) for item in all_items], f"split file {split_file}")
    if verify:
        verify_images(all_items, str(split_file))
    return ClassificationDataset(name, image_dir, classnames, template, splits, source=str(split_file))


class ImageItems(Dataset):
    """Items as ``(image_tensor, label, index)``; the index lets callers key caches by item."""

    def __init__(self, items: Sequence[Item], transform: Callable, source: str | None = None) -> None:
        self.items = list(items)
        self.transform = transform
        self.context = f"listed in {source}" if source else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.items[index]
        image = load_image(item.path, self.context)
        return self.transform(image), item.label, index
