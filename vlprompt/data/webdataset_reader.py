"""Webdataset shards in the CLIP_benchmark layout, streamed (no folder scan):

    <folder>/classnames.txt                          one class name per line, label order
    <folder>/zeroshot_classification_templates.txt   one template per line, "{c}" for the class name
    <folder>/<split>/0.tar, 1.tar, ...               samples: <key>.{webp,jpg,png,...} + <key>.cls (label)
    <folder>/<split>/nshards.txt                     optional: the number of shards

Written against webdataset's public API only (runs on 0.2.x and 1.x).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset

from vlprompt.data.fgvc import read_lines
from vlprompt.errors import VLPromptError

IMAGE_KEYS = ("webp", "jpg", "jpeg", "png", "ppm", "bmp")


@dataclass
class WdsInfo:
    folder: Path
    classnames: list[str]
    templates: list[str]  # with "{}" for the class name (CLIP_benchmark writes "{c}")
    shards: dict[str, list[Path]]


def read_wds_info(folder: str | Path) -> WdsInfo:
    """Class names, templates and the shards of every split; names what is missing."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise VLPromptError(f"webdataset folder not found: {folder}")
    classnames = read_lines(folder / "classnames.txt", "class names file")
    template_file = folder / "zeroshot_classification_templates.txt"
    templates = [t.replace("{c}", "{}") for t in read_lines(template_file, "templates file")] if template_file.is_file() else []
    shards: dict[str, list[Path]] = {}
    for split_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        tars = sorted(split_dir.glob("*.tar"), key=lambda p: (len(p.stem), p.stem))
        if not tars:
            continue
        count_file = split_dir / "nshards.txt"
        if count_file.is_file():
            expected = int(count_file.read_text().strip() or 0)
            names = {p.name for p in tars}
            missing = [f"{i}.tar" for i in range(expected) if f"{i}.tar" not in names]
            if missing:
                raise VLPromptError(
                    f"webdataset split {split_dir}: {len(missing)} of {expected} shards listed by nshards.txt are "
                    f"missing (e.g. {split_dir / missing[0]})"
                )
        shards[split_dir.name] = tars
    if not shards:
        raise VLPromptError(f"webdataset folder {folder} has no <split>/*.tar shards")
    return WdsInfo(folder, classnames, templates, shards)


def _decode(sample: dict, shard: str, num_classes: int) -> tuple[Image.Image, int]:
    key = sample.get("__key__", "?")
    where = f"sample {key} in {shard}"
    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
    if image_key is None or "cls" not in sample:
        raise VLPromptError(f"{where}: expected an image ({'/'.join(IMAGE_KEYS)}) and a .cls label, got {sorted(sample)}")
    try:
        with Image.open(io.BytesIO(sample[image_key])) as image:
            image.load()
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise VLPromptError(f"cannot decode image of {where}: {error}") from None
    raw = sample["cls"]
    try:
        label = int(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError:
        raise VLPromptError(f"{where}: label {raw!r:.40} is not an integer") from None
    if not 0 <= label < num_classes:
        raise VLPromptError(f"{where}: label {label} is outside 0..{num_classes - 1} (classnames.txt)")
    return image, label


class WdsClassification(IterableDataset):
    """Streams ``(image_tensor, label, index)`` from one split's shards, split across DataLoader workers
    (and ranks, through webdataset's node splitter)."""

    def __init__(self, info: WdsInfo, split: str, transform: Callable) -> None:
        if split not in info.shards:
            raise VLPromptError(f"webdataset {info.folder} has no split {split!r}. Valid: {', '.join(info.shards)}")
        self.info, self.split, self.transform = info, split, transform

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, int]]:
        import webdataset as wds

        urls = [str(p) for p in self.info.shards[self.split]]
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.split_by_node,
            wds.split_by_worker,
            wds.tarfile_to_samples(),
        )
        for index, sample in enumerate(pipeline):
            image, label = _decode(sample, sample.get("__url__", self.split), len(self.info.classnames))
            yield self.transform(image), label, index
