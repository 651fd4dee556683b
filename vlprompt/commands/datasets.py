"""`vlprompt datasets list` and `vlprompt datasets check NAME --root DIR`: is a user's copy complete?

Prefixed names (``folder:<path>``, ``csv:<file.csv>``, ``wds:<folder>``) carry their own location and
need no root. Webdataset shards are checked against their ``nshards.txt``; ``--decode`` streams them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vlprompt.commands import COMMANDS
from vlprompt.errors import VLPromptError

if TYPE_CHECKING:  # the reader pulls in webdataset and torch: imported where a command runs
    from vlprompt.data.webdataset_reader import WdsDataset

SHOW = 5  # how many missing / corrupt files a report names


def _expected_paths(config, folder: Path) -> list[Path]:
    """The files and folders a dataset's YAML names (split patterns expanded)."""
    paths = [folder / config.image_dir]
    if config.split_file:
        if "{split}" in config.split_file:
            paths += [folder / config.split_file.replace("{split}", s) for s in ("train", "val", "test")]
        else:
            paths.append(folder / config.split_file)
    if config.classnames_file:
        paths.append(folder / config.classnames_file)
    return paths


def _config_problems(name: str, root: Path) -> list[str]:
    """Missing folders and files that a registered dataset's YAML names."""
    from vlprompt.data.registry import get_dataset_config

    config = get_dataset_config(name)
    folder = root / config.folder
    if not folder.is_dir():
        prepare = (config.prepare or "").replace("<root>", str(root))
        return [f"folder {folder} does not exist" + (f" ({prepare})" if prepare else "")]
    return [f"missing: {p}" for p in _expected_paths(config, folder) if not p.exists()]


def check_dataset(name: str, root: str | Path | None, decode: bool = False) -> list[str]:
    """Problems with the copy of `name` under `root` (empty: complete). Never raises for data problems.

    `root` may be None for prefixed names (``folder:``, ``csv:``), which say where they are.
    """
    from vlprompt.data.images import load_image
    from vlprompt.data.registry import load_dataset, split_prefix
    from vlprompt.data.webdataset_reader import WdsDataset

    if split_prefix(name) is None:
        if root is None:
            raise VLPromptError(f"no data root for dataset {name!r}: pass --root DIR")
        root = Path(root).expanduser()
        missing_files = _config_problems(name, root)
        if missing_files:
            return missing_files
    problems = []
    try:
        dataset = load_dataset(name, root, verify=False)
    except VLPromptError as error:
        return [str(error)]
    if isinstance(dataset, WdsDataset):
        return _stream_problems(dataset) if decode else []  # read_wds_info has checked the shard listing
    items = {item.path: item for split in dataset.splits.values() for item in split}
    missing = [path for path in items if not path.is_file()]
    if missing:
        problems.append(
            f"{len(missing)} of {len(items)} listed images are missing, e.g. "
            + ", ".join(str(p) for p in missing[:SHOW])
        )
    if decode:
        corrupt = []
        for path in items:
            if path.is_file():
                try:
                    load_image(path)
                except VLPromptError as error:
                    corrupt.append(str(error))
        if corrupt:
            problems.append(f"{len(corrupt)} images cannot be decoded: " + "; ".join(corrupt[:SHOW]))
    return problems


def _stream_problems(dataset: WdsDataset) -> list[str]:
    """Decode every sample of every split of a webdataset; the first bad sample of each split."""
    problems = []
    for split in dataset.split_names:
        try:
            for _ in dataset.split(split).image_dataset(lambda image: 0):
                pass
        except VLPromptError as error:
            problems.append(f"split {split}: {error}")
    return problems


def summary(name: str, root: str | Path | None) -> str:
    from vlprompt.data.registry import load_dataset
    from vlprompt.data.webdataset_reader import WdsDataset

    dataset = load_dataset(name, root)
    if isinstance(dataset, WdsDataset):
        shards = ", ".join(f"{split} {len(paths)} shards" for split, paths in dataset.info.shards.items())
        return f"{name}: OK, {dataset.num_classes} classes, {shards}"
    sizes = ", ".join(f"{split} {len(items)}" for split, items in dataset.splits.items())
    return f"{name}: OK, {dataset.num_classes} classes, {sizes}"


@COMMANDS.register("datasets")
def _datasets_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("datasets", help="list registered datasets, or check a copy on disk")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="registered dataset names").set_defaults(run=_list)
    check = actions.add_parser("check", help="verify a dataset copy and say what is missing")
    check.add_argument("name", nargs="+", help="registered dataset name(s), folder:PATH, csv:FILE.csv or wds:FOLDER")
    check.add_argument("--root", default=None, help="data root (default: $VLPROMPT_DATA)")
    check.add_argument("--decode", action="store_true", help="also decode every image (slow on big datasets)")
    check.set_defaults(run=_check)
    export = actions.add_parser("export-wds", help="write a dataset as CLIP_benchmark webdataset shards")
    export.add_argument("name", help="registered dataset name (world sets included), folder:PATH, csv:FILE.csv or wds:FOLDER")
    export.add_argument("out", help="output folder (classnames.txt, templates, <split>/N.tar)")
    export.add_argument("--root", default=None, help="data root (default: $VLPROMPT_DATA, or the embedded world's)")
    export.add_argument("--splits", nargs="+", default=None, help="splits to write (default: all)")
    export.add_argument("--shard-size", type=int, default=1000, help="samples per .tar shard")
    export.set_defaults(run=_export_wds)


def _list(args: argparse.Namespace) -> None:
    from vlprompt.data.registry import dataset_names, get_dataset_config, prefix_usages

    for name in dataset_names():
        print(f"{name:24s} {get_dataset_config(name).format}")
    for usage in prefix_usages():  # need no config; listed so users can find them
        print(f"{usage:24s} (any location)")


def _check(args: argparse.Namespace) -> None:
    import os

    from vlprompt.data.registry import DATA_ENV, get_dataset_config, split_prefix

    for name in args.name:  # an unknown name first: it is wrong whatever the root
        if split_prefix(name) is None:
            get_dataset_config(name)
    root = args.root or os.environ.get(DATA_ENV)
    if not root and any(split_prefix(name) is None for name in args.name):
        raise VLPromptError(f"no data root: pass --root DIR or set ${DATA_ENV}")
    failed = []
    for name in args.name:
        problems = check_dataset(name, root, decode=args.decode)
        if problems:
            failed.append(name)
            print(f"{name}: INCOMPLETE")
            for problem in problems:
                print(f"  - {problem}")
        else:
            print(summary(name, root))
    if failed:
        raise VLPromptError(f"{len(failed)} dataset(s) incomplete: {', '.join(failed)} (details above)")


def _export_wds(args: argparse.Namespace) -> None:
    from vlprompt.data.world import get_dataset
    from vlprompt.interop.webdataset_export import export_wds

    dataset = get_dataset(args.name, args.root)
    counts = export_wds(dataset, args.out, splits=args.splits, shard_size=args.shard_size)
    written = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"wrote {args.out}: {dataset.num_classes} classes, {written} samples "
          f"(clip_benchmark: --dataset wds/NAME --dataset_root {args.out}; vlprompt: --dataset wds:{args.out})")
