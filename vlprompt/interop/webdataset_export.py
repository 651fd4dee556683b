"""Any dataset vlprompt reads, written as CLIP_benchmark webdataset shards (the layout
`vlprompt.data.webdataset_reader` reads and ``clip_benchmark eval --dataset wds/...`` streams):

    <out>/classnames.txt                          one class name per line, label order
    <out>/zeroshot_classification_templates.txt   the dataset's templates, "{c}" for the class name
    <out>/<split>/0.tar, 1.tar, ...               <key>.<png|jpg|webp...> + <key>.cls, in split order
    <out>/<split>/nshards.txt                     the number of shards

Image files go in byte for byte (no re-encoding, so the pixels are the source's); a format webdataset
does not decode (``.tif``, ``.gif``) is re-encoded as PNG. A ``wds:`` source is copied sample by
sample. Every shard is written atomically, with fixed member times, so the same input gives the same bytes.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image

from vlprompt.data.classification import ClassificationDataset
from vlprompt.data.images import load_image
from vlprompt.data.webdataset_reader import IMAGE_KEYS, WdsDataset, checked_shard_samples, image_key
from vlprompt.errors import VLPromptError
from vlprompt.paths import atomic_path

TEMPLATES_FILE = "zeroshot_classification_templates.txt"


def _image_bytes(path: Path) -> tuple[str, bytes]:
    """(extension, bytes) of an image file, re-encoded as PNG when webdataset would not decode it."""
    ext = path.suffix.lower().lstrip(".")
    if ext in IMAGE_KEYS:
        return ext, path.read_bytes()
    buffer = io.BytesIO()
    load_image(path).save(buffer, format="PNG")
    return "png", buffer.getvalue()


def _item_samples(items: Sequence) -> Iterator[tuple[str, bytes, int]]:
    for item in items:
        ext, data = _image_bytes(Path(item.path))
        yield ext, data, int(item.label)


def _wds_samples(dataset: WdsDataset, split: str) -> Iterator[tuple[str, bytes, int]]:
    shards = [{"url": str(p)} for p in dataset.split(split).shards]
    for sample in checked_shard_samples(shards):
        key = image_key(list(sample))
        if key is None or "cls" not in sample:
            raise VLPromptError(f"sample {sample.get('__key__', '?')}: no image or .cls label")
        yield key, sample[key], int(sample["cls"].decode() if isinstance(sample["cls"], bytes) else sample["cls"])


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def _write_shard(path: Path, samples: list[tuple[str, str, bytes, int]]) -> None:
    with atomic_path(path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, ext, data, label in samples:
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.cls", str(label).encode())


def _templates(dataset: ClassificationDataset | WdsDataset) -> list[str]:
    own = getattr(dataset, "templates", None) or [dataset.template]
    return [t.replace("{}", "{c}") for t in own]


def export_wds(
    dataset: ClassificationDataset | WdsDataset,
    out: str | Path,
    splits: Sequence[str] | None = None,
    shard_size: int = 1000,
) -> dict[str, int]:
    """Write `dataset` (all its splits, or `splits`) under `out`; returns the sample count per split."""
    if shard_size < 1:
        raise VLPromptError(f"shard size must be at least 1, got {shard_size}")
    out = Path(out).expanduser()
    available = dataset.split_names if isinstance(dataset, WdsDataset) else list(dataset.splits)
    chosen = list(splits) if splits else available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise VLPromptError(f"dataset {dataset.name!r} has no split {unknown[0]!r}. Valid: {', '.join(available)}")
    with atomic_path(out / "classnames.txt") as tmp:
        tmp.write_text("".join(f"{name}\n" for name in dataset.classnames), encoding="utf-8")
    with atomic_path(out / TEMPLATES_FILE) as tmp:
        tmp.write_text("".join(f"{t}\n" for t in _templates(dataset)), encoding="utf-8")
    counts: dict[str, int] = {}
    for split in chosen:
        samples = _wds_samples(dataset, split) if isinstance(dataset, WdsDataset) else _item_samples(dataset.split(split))
        folder = out / split
        for stale in folder.glob("*.tar") if folder.is_dir() else ():
            stale.unlink()  # a shorter export must not leave shards of a longer one behind
        shard, n_shards, n = [], 0, 0
        for ext, data, label in samples:
            shard.append((f"s{n:08d}", ext, data, label))
            n += 1
            if len(shard) == shard_size:
                _write_shard(folder / f"{n_shards}.tar", shard)
                shard, n_shards = [], n_shards + 1
        if shard or n_shards == 0:
            _write_shard(folder / f"{n_shards}.tar", shard)
            n_shards += 1
        with atomic_path(folder / "nshards.txt") as tmp:
            tmp.write_text(f"{n_shards}\n")
        counts[split] = n
    return counts


def decoded_split(dataset: WdsDataset, split: str) -> Iterator[tuple[Image.Image, int]]:
    """(RGB image, label) of every sample of a split, in shard order (for checks and tests)."""
    for _, data, label in _wds_samples(dataset, split):
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            yield image.convert("RGB"), label
