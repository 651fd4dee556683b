"""FGVC-Aircraft's own split lists (CoOp uses them instead of a ``split_zhou`` JSON)."""

from __future__ import annotations

from pathlib import Path

from vlprompt.data.classification import ClassificationDataset, Item, verify_images
from vlprompt.errors import VLPromptError


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty stripped lines of a text file, or a clear error naming it."""
    if not path.is_file():
        raise VLPromptError(f"{what} not found: {path}")
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as error:
        raise VLPromptError(f"{what} {path} is not UTF-8 text: {error}") from None


def read_fgvc_variants(
    image_dir: str | Path,
    split_pattern: str | Path,
    classnames_file: str | Path,
    name: str,
    template: str,
    splits: tuple[str, ...] = ("train", "val", "test"),
    verify: bool = False,
) -> ClassificationDataset:
    """Read ``images_variant_{split}.txt`` lines ``<image id> <variant name>``; labels follow
    the order of ``variants.txt``, and images are ``<image_dir>/<id>.jpg`` (as CoOp's reader)."""
    image_dir, classnames_file = Path(image_dir), Path(classnames_file)
    if not image_dir.is_dir():
        raise VLPromptError(f"dataset {name!r}: image folder not found: {image_dir}")
    classnames = read_lines(classnames_file, "class names file")
    label_of = {c: i for i, c in enumerate(classnames)}
    result: dict[str, list[Item]] = {}
    for split in splits:
        split_file = Path(str(split_pattern).replace("{split}", split))
        items = []
        for number, line in enumerate(read_lines(split_file, "split file"), start=1):
            image_id, _, classname = line.partition(" ")
            if classname not in label_of:
                raise VLPromptError(f"{split_file}, line {number}: class {classname!r} is not in {classnames_file}")
            items.append(Item(image_dir / f"{image_id}.jpg", label_of[classname], classname))
        if verify:
            verify_images(items, str(split_file))
        result[split] = items
    return ClassificationDataset(name, image_dir, classnames, template, result, source=str(split_pattern))
