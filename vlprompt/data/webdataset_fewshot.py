"""Few-shot training on webdataset shards without decoding (or copying) the whole train split.

1. One pass over the tar headers of a split (`read_wds_labels`): the small ``.cls`` members are read,
   image members are skipped by seeking past them; nothing is decoded.
2. The records become `Item`s at the paths their images *would* have once extracted
   (``<image_dir>/<split>/<shard>/<key>.<ext>``), and `few_shot_split` samples and writes split files
   from them exactly as for any other dataset (same per-class seeded draw, same val rule, same files,
   so runs are reproducible and resumable).
3. Only the sampled images are extracted (`extract_samples`): bytes read at their tar offsets, checked
   to decode, written atomically; files already there are re-used.

The trainer and the feature cache then see ordinary image files.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vlprompt.data.classification import ClassificationDataset, Item
from vlprompt.data.fewshot import few_shot_split, read_split_file, read_split_meta, split_file_path
from vlprompt.data.webdataset_reader import IMAGE_KEYS, WdsDataset, WdsInfo, decode_image, image_key, parse_label
from vlprompt.errors import VLPromptError
from vlprompt.paths import atomic_path

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's rule: the key ends at the first dot of the basename
_META = re.compile(r"__[^/]*__($|/)")  # webdataset skips such members


@dataclass(frozen=True)
class WdsRecord:
    """Where one sample's image lies in its shard, and its label (read without touching the image)."""

    shard: Path
    key: str
    ext: str
    offset: int  # of the image bytes in the shard file
    size: int
    label: int

    @property
    def where(self) -> str:
        return f"sample {self.key} in {self.shard}"


def _safe_key(key: str, shard: Path) -> str:
    parts = PurePosixPath(key).parts
    if PurePosixPath(key).is_absolute() or ".." in parts or not parts:
        raise VLPromptError(f"sample key {key!r} in {shard} is not a relative name; it cannot be extracted safely")
    return key


def _shard_records(shard: Path, num_classes: int) -> list[WdsRecord]:
    members: dict[str, dict[str, tarfile.TarInfo]] = {}
    labels: dict[str, int] = {}
    try:
        with tarfile.open(shard, "r:") as tar:  # a seekable plain tar: next() seeks past member data
            for member in tar:
                match = _KEY_EXT.match(member.name)
                if not member.isreg() or match is None or _META.match(member.name):
                    continue
                key, ext = match.group(1), match.group(2).lower()
                if ext == "cls":
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file
                    labels[key] = parse_label(handle.read(), f"sample {key} in {shard}", num_classes)
                if members.setdefault(key, {}).setdefault(ext, member) is not member:
                    raise VLPromptError(f"sample {key} in {shard}: member {member.name!r} appears twice")
    except (tarfile.TarError, OSError) as error:
        raise VLPromptError(f"cannot read webdataset shard {shard}: {error}") from None
    records = []
    for key, files in members.items():
        ext = image_key(list(files))
        if ext is None or key not in labels:
            where = f"sample {key} in {shard}"
            raise VLPromptError(f"{where}: expected an image ({'/'.join(IMAGE_KEYS)}) and a .cls label, got {sorted(files)}")
        image = files[ext]
        records.append(WdsRecord(shard, _safe_key(key, shard), ext, image.offset_data, image.size, labels[key]))
    return records


def read_wds_labels(info: WdsInfo, split: str) -> list[WdsRecord]:
    """Every sample of a split as a `WdsRecord`, in shard order: labels read, images skipped, not decoded."""
    if split not in info.shards:
        raise VLPromptError(f"webdataset {info.folder} has no split {split!r}. Valid: {', '.join(info.shards)}")
    return [record for shard in info.shards[split] for record in _shard_records(shard, len(info.classnames))]


def record_path(image_dir: Path, split: str, record: WdsRecord) -> Path:
    """Where a sample's image is extracted: ``<image_dir>/<split>/<shard name>/<key>.<ext>``."""
    return image_dir / split / record.shard.stem / f"{record.key}.{record.ext}"


def extract_samples(items: Sequence[Item], records: Mapping[Path, WdsRecord]) -> int:
    """Write the image of every item not already on disk from its shard (atomically); returns how many.

    Each image is read at its offset (one open per shard, reads in file order) and checked to decode,
    so a corrupt sample fails here, named with its shard, not later inside the trainer.
    """
    todo: dict[Path, list[tuple[Item, WdsRecord]]] = {}
    for item in items:
        if item.path.is_file():
            continue
        record = records.get(item.path)
        if record is None:
            raise VLPromptError(
                f"few-shot sample {item.path} is not in the shards any more (the webdataset changed since "
                "the split files were written); delete the run's splits/ folder to draw again"
            )
        todo.setdefault(record.shard, []).append((item, record))
    for shard, wanted in todo.items():
        with open(shard, "rb") as handle:
            for item, record in sorted(wanted, key=lambda pair: pair[1].offset):
                handle.seek(record.offset)
                data = handle.read(record.size)
                if len(data) != record.size:
                    raise VLPromptError(f"{record.where}: the shard ends inside the image (truncated file?)")
                decode_image(data, record.where)
                with atomic_path(item.path) as tmp:
                    tmp.write_bytes(data)
    return sum(len(wanted) for wanted in todo.values())


def _resume(
    dataset: WdsDataset, shots: int, seed: int, cache_dir: str | Path, image_dir: Path
) -> tuple[list[Item], list[Item]] | None:
    """(train, val) from split files written by an earlier run, if they and all their images are there."""
    paths = [split_file_path(cache_dir, dataset.name, shots, seed, split) for split in ("train", "val")]
    if not all(path.is_file() for path in paths):
        return None
    pools = ClassificationDataset(dataset.name, image_dir, dataset.classnames, dataset.template, {}, dataset.source)
    for path in paths:  # same checks as few_shot_split (dataset, shots, seed)
        meta = read_split_meta(path)
        if (meta.get("dataset"), meta.get("shots"), meta.get("seed")) != (dataset.name, shots, seed):
            return None
    train, val = (read_split_file(path, pools.root) for path in paths)
    if not all(item.path.is_file() for item in [*train, *val]):
        return None
    return train, val


def wds_few_shot_split(
    dataset: WdsDataset, shots: int, seed: int, cache_dir: str | Path, image_dir: str | Path
) -> tuple[list[Item], list[Item]]:
    """`few_shot_split` for a webdataset: (train, val) items whose images are extracted under `image_dir`.

    Train is K per class from the ``train`` split; val is min(K, 4) per class from ``val`` if the
    webdataset has one, else held out from train. Split files go to `cache_dir` (paths relative to
    `image_dir`), so a rerun reads the same sample back and re-uses the extracted files.
    """
    image_dir = Path(image_dir)
    dataset.split("train")  # a clear error when there is no train split
    resumed = _resume(dataset, shots, seed, cache_dir, image_dir)
    if resumed is not None:  # a rerun or --resume: no pass over the shards at all
        return resumed
    splits: dict[str, list[Item]] = {}
    records: dict[Path, WdsRecord] = {}
    for split in ("train", "val"):
        if split not in dataset.info.shards:
            continue
        splits[split] = []
        for record in read_wds_labels(dataset.info, split):
            path = record_path(image_dir, split, record)
            if records.setdefault(path, record) is not record:
                raise VLPromptError(f"{record.where}: key {record.key!r} appears twice in the shard")
            splits[split].append(Item(path, record.label, dataset.classnames[record.label]))
    pools = ClassificationDataset(dataset.name, image_dir, dataset.classnames, dataset.template, splits, dataset.source)
    train, val = few_shot_split(pools, shots, seed, cache_dir)
    extract_samples([*train, *val], records)
    return train, val
