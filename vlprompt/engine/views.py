"""Reproducible image views: every (item, view or epoch) gets its own seed.

Augmentations draw from torch's global RNG. Seeding each sample from what it *is* (file + view
index), not from when or in which worker it is loaded, makes cached views and in-loop augmentation
identical across runs, worker counts, ranks and resumes.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset

from vlprompt.data.images import load_image


class ItemLike(Protocol):
    path: Any
    label: int


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from `parts` (same parts -> same seed, on every machine)."""
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def item_fingerprint(path: str | os.PathLike) -> str:
    """Path + mtime + size: an edited or replaced image gets a new cache entry."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return f"{path.resolve()}|missing"
    return f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"


def augmentation_identity(path: str | os.PathLike) -> str:
    """What an image's augmentation seed is derived from: its folder and file name and its size.

    Not `item_fingerprint`: that holds the absolute path and the mtime (right for cache keys, which must
    notice an edited file), so seeds from it changed with every copy of the data (a regenerated world
    set, another user's checkout) and augmented training gave other numbers from a fresh clone. The
    class folder + name + size is the same in every copy of a dataset."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    return f"{path.parent.name}/{path.name}|{size}"


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe_transform(transform: Callable) -> str:
    """repr() of a transform without memory addresses, so equal pipelines describe equally."""
    return _ADDRESS.sub("", repr(transform))


class SeededImages(Dataset):
    """``(image, label, index)`` where sample ``index`` is transformed under ``seed_fn(index)``."""

    def __init__(
        self, items: Sequence[ItemLike], transform: Callable, seed_fn: Callable[[int], int]
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.seed_fn = seed_fn

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.items[index]
        image = load_image(item.path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed_fn(index))
            tensor = self.transform(image)
        return tensor, int(item.label), index
