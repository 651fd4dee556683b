"""Generic ``root/<class>/<image>`` folders (optionally ``root/<split>/<class>/<image>``)."""

from __future__ import annotations

from pathlib import Path

from vlprompt.data.classification import SPLIT_NAMES, ClassificationDataset, Item
from vlprompt.errors import VLPromptError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_TEMPLATE = "a photo of a {}."


def _class_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_image_folder(root: str | Path, name: str | None = None, template: str = DEFAULT_TEMPLATE) -> ClassificationDataset:
    """Classes are the sorted sub-folder names; their images (searched recursively) are the items.

    If `root` holds ``train``/``val``/``test`` folders, each is a split with the same class
    folders; otherwise every image is in the ``test`` split (a folder is usually something to
    evaluate on).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise VLPromptError(f"image folder not found: {root}")
    split_dirs = {p.name: p for p in _class_dirs(root) if p.name in SPLIT_NAMES}
    if not split_dirs:
        split_dirs = {"test": root}
    classnames = sorted({d.name for folder in split_dirs.values() for d in _class_dirs(folder)})
    if not classnames:
        raise VLPromptError(f"image folder {root} has no class sub-folders (expected {root}/<class>/<image>)")
    label_of = {c: i for i, c in enumerate(classnames)}
    splits = {
        split: [Item(path, label_of[d.name], d.name) for d in _class_dirs(folder) for path in _images(d)]
        for split, folder in split_dirs.items()
    }
    if not any(splits.values()):
        raise VLPromptError(f"image folder {root} has class folders but no images ({', '.join(IMAGE_EXTENSIONS)})")
    return ClassificationDataset(name or root.name, root, classnames, template, splits, source=str(root))
