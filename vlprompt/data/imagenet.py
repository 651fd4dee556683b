"""ImageNet and its variants in CoOp's layout (``imagenet.py``, ``imagenetv2.py``, ``imagenet_sketch.py``,
``imagenet_a.py``, ``imagenet_r.py`` of CoOp), with the class-name list ``classnames.txt``
(``<wnid> <class name>`` per line, 1000 lines, the label order).

- ``imagenet``: ``images/train/<wnid>/*`` and ``images/val/<wnid>/*``; val is also the test split.
- ``imagenet_sketch``: ``images/<wnid>/*``, all 1000 classes, test split only.
- ``imagenetv2``: ``imagenetv2-matched-frequency-format-val/<label 0..999>/*``, test only.
- ``imagenet_a`` / ``imagenet_r``: ``imagenet-a/<wnid>/*`` (200 classes): relabelled 0..199 in wnid order, as
  CoOp does; `imagenet_labels` maps each back to its ImageNet label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlprompt.data.classification import ClassificationDataset, Item
from vlprompt.data.fgvc import read_lines
from vlprompt.data.folder import IMAGE_EXTENSIONS
from vlprompt.errors import VLPromptError


@dataclass
class ImageNetDataset(ClassificationDataset):
    """A ClassificationDataset whose classes are ImageNet classes: ``imagenet_labels[i]`` is class i's
    label among ImageNet's 1000 (the identity for ImageNet itself)."""

    imagenet_labels: list[int] = field(default_factory=list)
    wnids: list[str] = field(default_factory=list)


def read_imagenet_classnames(path: str | Path) -> dict[str, str]:
    """``<wnid> <name>`` lines -> {wnid: name} in label order (the file's order)."""
    path = Path(path)
    names: dict[str, str] = {}
    for number, line in enumerate(read_lines(path, "ImageNet class names file"), start=1):
        wnid, _, name = line.partition(" ")
        if not name.strip():
            raise VLPromptError(f"{path}, line {number}: expected '<wnid> <class name>', got {line!r:.80}")
        if wnid in names:
            raise VLPromptError(f"{path}, line {number}: wnid {wnid} is listed twice")
        names[wnid] = name.strip()
    return names


def _dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _classnames_file(path: Path, name: str) -> dict[str, str]:
    if not path.is_file():
        raise VLPromptError(
            f"dataset {name!r}: class names file not found: {path} (CoOp's ImageNet classnames.txt: copy it from "
            "<root>/imagenet/classnames.txt; see datasets/imagenet.md)"
        )
    return read_imagenet_classnames(path)


def _read_wnid_folders(folder: Path, classnames: dict[str, str], where: str, complete: bool) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise VLPromptError(f"{where}: folder not found: {folder}")
    found = {d.name: d for d in _dirs(folder)}
    unknown = sorted(set(found) - set(classnames))
    if unknown:
        raise VLPromptError(
            f"{where}: folder {folder / unknown[0]} is not a class of the class names file "
            f"({len(unknown)} unknown folders); is the class names file the ImageNet one?"
        )
    missing = [w for w in classnames if w not in found]
    if complete and missing:
        raise VLPromptError(
            f"{where}: {len(missing)} of {len(classnames)} class folders listed in the class names file are missing "
            f"from {folder} (e.g. {folder / missing[0]})"
        )
    if not found:
        raise VLPromptError(f"{where}: no class folders in {folder}")
    images = {wnid: _images(found[wnid]) for wnid in sorted(found)}
    empty = [w for w, paths in images.items() if not paths]
    if empty:
        raise VLPromptError(f"{where}: class folder {folder / empty[0]} holds no images ({len(empty)} empty)")
    return images


def read_imagenet(
    image_dir: str | Path, classnames_file: str | Path, name: str, template: str, subset: bool = False
) -> ImageNetDataset:
    """ImageNet (``train``/``val`` folders inside `image_dir`) or a wnid-folder variant (Sketch, A, R).

    With `subset` (A, R) only the classes present are kept, relabelled 0..K-1 in ImageNet order.
    """
    image_dir = Path(image_dir)
    classnames = _classnames_file(Path(classnames_file), name)
    wnids = list(classnames)
    if not image_dir.is_dir():
        raise VLPromptError(f"dataset {name!r}: image folder not found: {image_dir}")
    split_dirs = {s: image_dir / s for s in ("train", "val") if (image_dir / s).is_dir()}
    if not split_dirs:
        split_dirs = {"test": image_dir}
    per_split = {
        split: _read_wnid_folders(folder, classnames, f"dataset {name!r}, split {split!r}", complete=not subset)
        for split, folder in split_dirs.items()
    }
    kept = [w for w in wnids if any(w in found for found in per_split.values())]
    label_of = {w: i for i, w in enumerate(kept)}
    splits = {
        split: [Item(path, label_of[w], classnames[w]) for w in kept if w in found for path in found[w]]
        for split, found in per_split.items()
    }
    if "val" in splits:  # CoOp: ImageNet's val is its test split
        splits["test"] = splits["val"]
    return ImageNetDataset(
        name, image_dir, [classnames[w] for w in kept], template, splits, source=str(classnames_file),
        imagenet_labels=[wnids.index(w) for w in kept], wnids=kept,
    )


def read_imagenet_v2(image_dir: str | Path, classnames_file: str | Path, name: str, template: str) -> ImageNetDataset:
    """ImageNet-V2: folders named by ImageNet label (``0`` .. ``999``), all in the test split."""
    image_dir = Path(image_dir)
    classnames = _classnames_file(Path(classnames_file), name)
    wnids = list(classnames)
    if not image_dir.is_dir():
        raise VLPromptError(f"dataset {name!r}: image folder not found: {image_dir}")
    folders = {d.name: d for d in _dirs(image_dir)}
    bad = sorted(f for f in folders if not f.isdigit() or int(f) >= len(wnids))
    if bad:
        raise VLPromptError(
            f"dataset {name!r}: folder {image_dir / bad[0]} is not an ImageNet label 0..{len(wnids) - 1} "
            f"({len(bad)} such folders)"
        )
    missing = [str(i) for i in range(len(wnids)) if str(i) not in folders]
    if missing:
        raise VLPromptError(
            f"dataset {name!r}: {len(missing)} of {len(wnids)} label folders are missing from {image_dir} "
            f"(e.g. {image_dir / missing[0]})"
        )
    items = [Item(path, i, classnames[wnids[i]]) for i in range(len(wnids)) for path in _images(folders[str(i)])]
    if not items:
        raise VLPromptError(f"dataset {name!r}: no images under {image_dir}")
    return ImageNetDataset(
        name, image_dir, [classnames[w] for w in wnids], template, {"test": items}, source=str(classnames_file),
        imagenet_labels=list(range(len(wnids))), wnids=wnids,
    )
