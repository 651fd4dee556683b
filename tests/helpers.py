"""Data the tests generate: tiny PNGs in the layouts the readers expect."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vlprompt.data.classification import Item


def colour_items(
    folder: Path, classes: Sequence[str], n_per_class: int = 2, size: int = 40, seed: int = 0
) -> list[Item]:
    """One dominant RGB channel per class (class i -> channel i % 3) plus noise: easy to separate."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for label, name in enumerate(classes):
        for i in range(n_per_class):
            pixels = rng.integers(0, 60, (size, size, 3))
            pixels[..., label % 3] += 180
            path = folder / f"{name.replace(' ', '_')}_{i}.png"
            Image.fromarray(pixels.astype(np.uint8)).save(path)
            items.append(Item(path, label, name))
    return items
