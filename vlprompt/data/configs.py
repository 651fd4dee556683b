"""Dataset YAML files (``configs/datasets/<name>.yaml``): adding a dataset is adding a file."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from vlprompt.errors import VLPromptError
from vlprompt.paths import config_root


def builtin_config_dir() -> Path:
    """The built-in dataset YAMLs (``configs/datasets`` of the source tree or of the installed wheel)."""
    return config_root() / "datasets"


BUILTIN_CONFIG_DIR = builtin_config_dir()


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset lives under the data root and how to read it.

    Paths are relative to ``<root>/<dataset_dir>``; `dataset_dir` defaults to `name`.
    """

    name: str
    format: str  # a DATASET_FORMATS name: coop_split, fgvc_variants, csv, imagenet, ...
    template: str  # the dataset's own hand-crafted template, with "{}" for the class name
    image_dir: str = "."
    split_file: str | None = None  # for format csv: the CSV file
    dataset_dir: str | None = None
    classnames_file: str | None = None  # one class name per line, in label order
    prepare: str | None = None  # how to get the data; shown when the folder is missing
    config_path: Path | None = None  # the YAML it came from (set by the reader, not a YAML key)

    @property
    def folder(self) -> str:
        return self.dataset_dir or self.name


YAML_KEYS = tuple(f.name for f in fields(DatasetConfig) if f.name != "config_path")
REQUIRED_KEYS = ("name", "format", "template")


def read_dataset_config(path: str | Path) -> DatasetConfig:
    """Parse and check one dataset YAML; unknown or missing keys fail naming the key and the valid ones."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VLPromptError(f"dataset config not found: {path}") from None
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise VLPromptError(f"dataset config {path} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise VLPromptError(f"dataset config {path}: expected a mapping of keys {', '.join(YAML_KEYS)}")
    for key in data:
        if key not in YAML_KEYS:
            raise VLPromptError(f"dataset config {path}: unknown key {key!r}. Valid keys: {', '.join(YAML_KEYS)}")
    for key in REQUIRED_KEYS:
        if key not in data:
            raise VLPromptError(f"dataset config {path}: missing required key {key!r}")
    for key, value in data.items():
        if value is not None and not isinstance(value, str):
            raise VLPromptError(f"dataset config {path}: key {key!r} must be a string, got {type(value).__name__} {value!r}")
    if data["name"] != path.stem:
        raise VLPromptError(f"dataset config {path}: name {data['name']!r} must match the file name {path.stem!r}")
    if "{}" not in data["template"]:
        raise VLPromptError(f"dataset config {path}: template {data['template']!r} has no '{{}}' slot for the class name")
    return DatasetConfig(**data, config_path=path)
