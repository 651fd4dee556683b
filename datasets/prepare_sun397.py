#!/usr/bin/env python3
"""Check an extracted SUN397 tree against CoOp's layout and, optionally, rebuild a split file.

Layout vlprompt (and CoOp) read, ``configs/datasets/sun397.yaml``:

    <root>/sun397/SUN397/<letter>/<category>[/<sub>]/*.jpg     (the extracted SUN397.tar.gz)
    <root>/sun397/split_zhou_SUN397.json                       ([relative_path, label, classname] per split)

Without ``--partitions`` the script only checks the tree: the category folders (against
``ClassName.txt`` when the tarball's copy is there, else against ``--expected``, 397), the image
count, and whether the split file is present.

With ``--partitions DIR`` (the official ``Partitions.zip`` extracted: ``Training_01.txt`` ...
``Testing_10.txt``, lines like ``/a/abbey/sun_aaalbzqrimafwbiv.jpg``) it also writes a split file in
CoOp's format, the way CoOp's own SUN397 reader built it:

- labels follow ``ClassName.txt`` (sorted category paths); without it, the sorted category folders;
- class names drop the letter folder and reverse the rest, so qualifiers come first
  (``/b/bakery/shop`` -> ``shop bakery``, ``/a/apse/indoor`` -> ``indoor apse``; underscores stay);
- test = ``Testing_<fold>.txt``; ``Training_<fold>.txt`` is split per class into train and val, val
  taking ``round(n * --val-fraction)`` images (CoOp: 0.2) chosen with ``random.Random(--seed)``.

CoOp drew its val images with an unseeded shuffle, so a rebuilt file never equals CoOp's
``split_zhou_SUN397.json``: prefer CoOp's file (Google Drive link in CoOp's DATASETS.md) for numbers
comparable with published ones. An existing split file is never overwritten without ``--force``;
the new file is written to a temporary name and moved into place, so an interrupted run leaves no
half-written file. Standard library only.

Example:
    python datasets/prepare_sun397.py --root "$VLPROMPT_DATA"
    python datasets/prepare_sun397.py --root "$VLPROMPT_DATA" --partitions /data/Partitions
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

DATASET_DIR = "sun397"
IMAGE_DIR = "SUN397"
SPLIT_FILE = "split_zhou_SUN397.json"
CLASS_LIST = "ClassName.txt"
EXPECTED_CATEGORIES = 397
IMAGE_SUFFIXES = (".jpg", ".jpeg")
SHOW = 5  # how many missing names a report lists


class PrepareError(Exception):
    pass


def readable_name(category: str) -> str:
    """CoOp's class name for a category path: ``b/bakery/shop`` -> ``shop bakery``."""
    return " ".join(reversed(category.strip("/").split("/")[1:]))


def find_categories(image_dir: Path) -> dict[str, int]:
    """Category path (``a/abbey``, ``b/bakery/shop``) -> image count, for every folder that holds images."""
    counts: dict[str, int] = {}
    for folder, _, files in os.walk(image_dir):
        images = sum(1 for name in files if name.lower().endswith(IMAGE_SUFFIXES))
        if images:
            counts[Path(folder).relative_to(image_dir).as_posix()] = images
    return counts


def read_class_list(folder: Path) -> tuple[Path, list[str]] | None:
    """``ClassName.txt`` (``/a/abbey`` lines) from ``sun397/`` (where CoOp reads it) or ``sun397/SUN397/`` (the tarball's)."""
    for path in (folder / CLASS_LIST, folder / IMAGE_DIR / CLASS_LIST):
        if path.is_file():
            return path, [line.strip().strip("/") for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return None


def locate(root: Path) -> tuple[Path, Path]:
    """``<root>/sun397`` and its ``SUN397`` image folder, with a hint for the usual misplacements."""
    folder, image_dir = root / DATASET_DIR, root / DATASET_DIR / IMAGE_DIR
    if image_dir.is_dir():
        if (image_dir / IMAGE_DIR).is_dir() and not (image_dir / "a").is_dir():
            raise PrepareError(f"{image_dir} holds another {IMAGE_DIR}/: move its contents up one level")
        return folder, image_dir
    if (root / IMAGE_DIR).is_dir():
        raise PrepareError(f"found {root / IMAGE_DIR} but vlprompt reads {image_dir}: move it into {folder}/")
    raise PrepareError(f"image folder {image_dir} does not exist: extract SUN397.tar.gz into {folder}/")


def check_tree(folder: Path, image_dir: Path, expected: int) -> tuple[list[str], list[str]]:
    """(category order for labels, problems). Prints what it found."""
    counts = find_categories(image_dir)
    listed = read_class_list(folder)
    problems = []
    print(f"{image_dir}: {len(counts)} categories with images (expected {expected}), {sum(counts.values())} images")
    if listed is not None:
        list_path, categories = listed
        missing = [c for c in categories if c not in counts]
        extra = sorted(set(counts) - set(categories))
        if missing:
            problems.append(
                f"{len(missing)} of {len(categories)} categories in {list_path} have no images, e.g. {', '.join(missing[:SHOW])}"
            )
        if extra:
            problems.append(f"{len(extra)} image folders are not categories in {list_path}, e.g. {', '.join(extra[:SHOW])}")
    else:
        print(f"  ({CLASS_LIST} not found in {folder} or {image_dir}; labels follow the sorted category folders)")
        categories = sorted(counts)
    if len(categories) != expected:
        problems.append(f"{len(categories)} categories, expected {expected} (an incomplete extraction?)")
    return categories, problems


def read_partition(path: Path, label_of: dict[str, int], image_dir: Path) -> list[list]:
    """``[relative_path, label, classname]`` for each ``/a/abbey/sun_x.jpg`` line of a Partitions file."""
    if not path.is_file():
        raise PrepareError(f"partition file not found: {path}")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        relative = line.strip().lstrip("/")
        if not relative:
            continue
        category = relative.rpartition("/")[0]
        if category not in label_of:
            raise PrepareError(f"{path}, line {number}: category {category!r} is not one of the {len(label_of)} categories")
        entries.append([relative, label_of[category], readable_name(category)])
    missing = [entry[0] for entry in entries if not (image_dir / entry[0]).is_file()]
    if missing:
        raise PrepareError(
            f"{len(missing)} of {len(entries)} images listed in {path} are not in {image_dir}, e.g. {', '.join(missing[:SHOW])}"
        )
    return entries


def split_train_val(entries: list[list], val_fraction: float, seed: int) -> tuple[list[list], list[list]]:
    """Per class, ``round(n * val_fraction)`` images go to val (CoOp's rule), drawn reproducibly."""
    rng = random.Random(seed)
    by_label: dict[int, list[list]] = {}
    for entry in sorted(entries, key=lambda e: (e[1], e[0])):
        by_label.setdefault(entry[1], []).append(entry)
    train, val = [], []
    for items in by_label.values():
        rng.shuffle(items)
        n_val = round(len(items) * val_fraction)
        val += sorted(items[:n_val], key=lambda e: e[0])
        train += sorted(items[n_val:], key=lambda e: e[0])
    return train, val


def write_json_atomic(path: Path, data: object) -> None:
    """Write to a temporary file next to `path`, then rename: readers never see half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def build_split(args: argparse.Namespace, folder: Path, image_dir: Path, categories: list[str]) -> Path:
    out = args.out or folder / SPLIT_FILE
    if out.exists() and not args.force:
        raise PrepareError(f"{out} exists; not overwriting it (CoOp's own file is the one to keep). Pass --force to replace it")
    label_of = {category: label for label, category in enumerate(categories)}
    fold = f"{args.fold:02d}"
    trainval = read_partition(args.partitions / f"Training_{fold}.txt", label_of, image_dir)
    test = sorted(read_partition(args.partitions / f"Testing_{fold}.txt", label_of, image_dir), key=lambda e: (e[1], e[0]))
    train, val = split_train_val(trainval, args.val_fraction, args.seed)
    write_json_atomic(out, {"train": train, "val": val, "test": test})
    print(f"wrote {out}: train {len(train)}, val {len(val)}, test {len(test)} (fold {fold}, seed {args.seed})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check an extracted SUN397 tree (<root>/sun397/SUN397/<letter>/<category>/*.jpg) and optionally "
        "rebuild split_zhou_SUN397.json from the official Partitions files. Prefer CoOp's own split file when you have it.",
    )
    parser.add_argument(
        "--root", type=Path, required=True, metavar="DIR", help="data root holding sun397/ (as --root of vlprompt)"
    )
    parser.add_argument(
        "--partitions",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder with Training_01.txt/Testing_01.txt: build a split file",
    )
    parser.add_argument("--fold", type=int, default=1, help="which of the 10 official partitions (default 1, as CoOp)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of each class's training images for val (default 0.2)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for choosing the val images (default 1)")
    parser.add_argument("--expected", type=int, default=EXPECTED_CATEGORIES, help="expected categories (default 397)")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help=f"split file to write (default <root>/sun397/{SPLIT_FILE})"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing split file")
    args = parser.parse_args(argv)

    try:
        if not 1 <= args.fold <= 10:
            raise PrepareError("--fold must be between 1 and 10")
        if not 0 <= args.val_fraction < 1:
            raise PrepareError("--val-fraction must be in [0, 1)")
        folder, image_dir = locate(args.root.expanduser())
        categories, problems = check_tree(folder, image_dir, args.expected)
        for problem in problems:
            print(f"  - {problem}")
        if args.partitions is not None:
            if problems:
                raise PrepareError("not writing a split file for an incomplete tree (problems above)")
            build_split(args, folder, image_dir, categories)
        elif not (folder / SPLIT_FILE).is_file():
            print(f"{folder / SPLIT_FILE} is missing: get CoOp's file (preferred) or rebuild one with --partitions DIR")
            problems.append("no split file")
        else:
            print(f"{folder / SPLIT_FILE}: present")
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if problems:
        return 1
    print(f"done; verify with: vlprompt datasets check sun397 --root {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
