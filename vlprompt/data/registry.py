"""Dataset names -> readers. YAML configs register themselves; ``folder:<path>`` and ``csv:<file.csv>``
need no config (DATASET_PREFIXES)."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from vlprompt.data.classification import ClassificationDataset, read_coop_split
from vlprompt.data.configs import BUILTIN_CONFIG_DIR, DatasetConfig, read_dataset_config
from vlprompt.data.csv_reader import read_csv_dataset
from vlprompt.data.fgvc import read_fgvc_variants, read_lines
from vlprompt.data.folder import read_image_folder
from vlprompt.data.imagenet import read_imagenet, read_imagenet_v2
from vlprompt.data.webdataset_reader import WdsDataset, read_wds_dataset
from vlprompt.errors import VLPromptError
from vlprompt.registry import Registry, unknown_name_message

DATA_ENV = "VLPROMPT_DATA"
FOLDER_PREFIX = "folder:"
CSV_PREFIX = "csv:"

DatasetFactory = Callable[[Path, bool], ClassificationDataset]  # (data root, verify) -> dataset
FormatReader = Callable[[DatasetConfig, Path, bool], ClassificationDataset]  # (config, folder, verify)
PrefixReader = Callable[[str, bool], "ClassificationDataset | WdsDataset"]  # (what follows the prefix, verify) -> dataset

DATASETS: Registry[DatasetFactory] = Registry("dataset")
DATASET_FORMATS: Registry[FormatReader] = Registry("dataset format")
DATASET_PREFIXES: Registry[PrefixReader] = Registry("dataset prefix")  # names that carry their own location
_CONFIGS: dict[str, DatasetConfig] = {}
_builtin_registered = False


def _require(config: DatasetConfig, key: str) -> str:
    value = getattr(config, key)
    if not value:
        raise VLPromptError(f"dataset config {config.config_path}: format {config.format!r} needs key {key!r}")
    return value


@DATASET_FORMATS.register("coop_split")
def _read_coop(config: DatasetConfig, folder: Path, verify: bool) -> ClassificationDataset:
    dataset = read_coop_split(
        folder / config.image_dir, folder / _require(config, "split_file"), config.name, config.template, verify
    )
    if config.classnames_file:  # cleaner names than the split file's, same label order
        path = folder / config.classnames_file
        names = read_lines(path, "class names file")
        if len(names) != dataset.num_classes:
            raise VLPromptError(
                f"class names file {path} has {len(names)} names but the split file has {dataset.num_classes} classes"
            )
        dataset.classnames = names
    return dataset


@DATASET_FORMATS.register("csv")
def _read_csv(config: DatasetConfig, folder: Path, verify: bool) -> ClassificationDataset:
    """`split_file` is the CSV; image paths are relative to `image_dir` (default: the dataset folder)."""
    classnames = folder / config.classnames_file if config.classnames_file else None
    csv_file = folder / _require(config, "split_file")
    return read_csv_dataset(csv_file, config.name, config.template, folder / config.image_dir, classnames, verify)


@DATASET_FORMATS.register("fgvc_variants")
def _read_fgvc(config: DatasetConfig, folder: Path, verify: bool) -> ClassificationDataset:
    return read_fgvc_variants(
        folder / config.image_dir,
        folder / _require(config, "split_file"),
        folder / _require(config, "classnames_file"),
        config.name,
        config.template,
        verify=verify,
    )


def _load_from_config(config: DatasetConfig, root: Path, verify: bool) -> ClassificationDataset:
    folder = Path(root).expanduser() / config.folder
    if not folder.is_dir():
        prepare = (config.prepare or "").strip().replace("<root>", str(root))
        hint = f" To prepare it: {prepare}" if prepare else ""
        raise VLPromptError(f"dataset {config.name!r} not found: folder {folder} does not exist.{hint}")
    return DATASET_FORMATS.get(config.format)(config, folder, verify)


def register_dataset_config(config: DatasetConfig) -> None:
    """Make one parsed YAML loadable by name."""
    if config.format not in DATASET_FORMATS:
        raise VLPromptError(
            f"dataset config {config.config_path}: " + unknown_name_message("format", config.format, DATASET_FORMATS.names())
        )
    DATASETS.register(config.name)(partial(_load_from_config, config))
    _CONFIGS[config.name] = config


def register_dataset_configs(directory: str | Path) -> list[str]:
    """Register every ``*.yaml`` in `directory`; returns the names registered."""
    configs = [read_dataset_config(path) for path in sorted(Path(directory).glob("*.yaml"))]
    for config in configs:  # all checked before any is registered: a bad file registers nothing
        if config.name in DATASETS:
            raise VLPromptError(f"dataset {config.name!r} from {config.config_path} is already registered")
        if config.format not in DATASET_FORMATS:
            raise VLPromptError(
                f"dataset config {config.config_path}: " + unknown_name_message("format", config.format, DATASET_FORMATS.names())
            )
    for config in configs:
        register_dataset_config(config)
    return [config.name for config in configs]


def _ensure_builtin() -> None:
    global _builtin_registered
    if not _builtin_registered:
        _builtin_registered = True
        if BUILTIN_CONFIG_DIR.is_dir():
            register_dataset_configs(BUILTIN_CONFIG_DIR)


@DATASET_PREFIXES.register(FOLDER_PREFIX)
def _read_folder_name(location: str, verify: bool) -> ClassificationDataset:
    return read_image_folder(location)  # every item was found by listing the folder: nothing to verify


@DATASET_PREFIXES.register(CSV_PREFIX)
def _read_csv_name(location: str, verify: bool) -> ClassificationDataset:
    return read_csv_dataset(location, verify=verify)


@DATASET_PREFIXES.register("wds:")
def _read_wds_name(location: str, verify: bool) -> WdsDataset:  # lazy splits, streamed (data/webdataset_reader.py)
    return read_wds_dataset(location)


def split_prefix(name: str) -> tuple[str, str] | None:
    """``(prefix, location)`` for names such as ``csv:/data/mine.csv``; None for registered names."""
    for prefix in DATASET_PREFIXES.names():
        if name.startswith(prefix):
            return prefix, name[len(prefix) :]
    return None


def prefix_usages() -> list[str]:
    return [f"{prefix}<path>" for prefix in DATASET_PREFIXES.names()]


def dataset_names() -> list[str]:
    """Every registered dataset name (``folder:<path>`` and ``csv:<file.csv>`` are always available too)."""
    _ensure_builtin()
    return DATASETS.names()


def get_dataset_config(name: str) -> DatasetConfig:
    """The YAML config a registered dataset came from."""
    _ensure_builtin()
    if name not in _CONFIGS:
        raise VLPromptError(unknown_name_message("dataset config", name, list(_CONFIGS)))
    return _CONFIGS[name]


def load_dataset(name: str, root: str | Path | None = None, verify: bool = False) -> ClassificationDataset | WdsDataset:
    """Load a dataset by registry name from `root` (default ``$VLPROMPT_DATA``), or by a prefixed name
    that carries its own location (``folder:<path>``, ``csv:<file.csv>``; `root` is not used for those).

    `verify` checks that every listed image exists before anything runs.
    """
    prefixed = split_prefix(name)
    if prefixed is not None:
        prefix, location = prefixed
        if not location.strip():
            raise VLPromptError(f"dataset name {name!r} has no path after {prefix!r}: write {prefix}<path>")
        return DATASET_PREFIXES.get(prefix)(location, verify)
    _ensure_builtin()
    if name not in DATASETS:
        raise VLPromptError(unknown_name_message("dataset", name, DATASETS.names() + prefix_usages()))
    root = root if root is not None else os.environ.get(DATA_ENV)
    if not root:
        raise VLPromptError(f"no data root for dataset {name!r}: pass root=... or set ${DATA_ENV}")
    return DATASETS.get(name)(Path(root), verify)


# -- ImageNet and its variants (vlprompt/data/imagenet.py) --------------------------------------


@DATASET_FORMATS.register("imagenet")
def _read_imagenet(config: DatasetConfig, folder: Path, verify: bool) -> ClassificationDataset:
    classnames = folder / _require(config, "classnames_file")
    return read_imagenet(folder / config.image_dir, classnames, config.name, config.template, subset=False)


@DATASET_FORMATS.register("imagenet_subset")
def _read_imagenet_subset(config: DatasetConfig, folder: Path, verify: bool) -> ClassificationDataset:
    classnames = folder / _require(config, "classnames_file")
    return read_imagenet(folder / config.image_dir, classnames, config.name, config.template, subset=True)


@DATASET_FORMATS.register("imagenetv2")
def _read_imagenet_v2(config: DatasetConfig, folder: Path, verify: bool) -> ClassificationDataset:
    classnames = folder / _require(config, "classnames_file")
    return read_imagenet_v2(folder / config.image_dir, classnames, config.name, config.template)
