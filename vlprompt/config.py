"""Experiment configs: YAML files (with `base:` inheritance) + ``key.sub=value`` overrides.

Every section is checked against the dataclass or registry that consumes it, so a typo in a key
fails early with one line naming the key and the valid ones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from vlprompt.errors import VLPromptError
from vlprompt.paths import config_root
from vlprompt.registry import unknown_name_message

CONFIG_ROOT = config_root()


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config_path(path: str | Path) -> Path:
    """A path as given, or relative to the repository's configs/ directory."""
    candidates = [Path(path), CONFIG_ROOT / path, CONFIG_ROOT / f"{path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise VLPromptError(f"config file not found: {path} (also looked in {CONFIG_ROOT})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config, merging the files named by its `base:` key (relative to it) first."""
    path = resolve_config_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise VLPromptError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise VLPromptError(f"{path}: a config must be a mapping of keys to values")
    bases = data.pop("base", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, load_yaml(path.parent / base))
    return _deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=0.01`` -> (["train", "lr"], 0.01); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise VLPromptError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    for text in overrides:
        keys, value = parse_override(text)
        node = config
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise VLPromptError(f"override {text!r}: {key} is not a section")
        node[keys[-1]] = value
    return config


def check_keys(section: dict[str, Any], valid: list[str], where: str) -> None:
    for key in section:
        if key not in valid:
            raise VLPromptError(unknown_name_message(f"key in {where}", key, valid))


def dataclass_from_dict(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    values = dict(values or {})
    check_keys(values, [f.name for f in fields(cls)], where)
    return cls(**values)


@dataclass
class BackboneSection:
    name: str = "vlprompt-tiny"
    pretrained: str | None = "world"
    device: str = "auto"


@dataclass
class DatasetSection:
    name: str = "world_shapes"
    root: str | None = None  # None: the embedded world's data directory


@dataclass
class ProtocolSection:
    name: str = "few-shot"  # few-shot | base-to-new | all
    shots: int = 16
    seed: int = 1


@dataclass
class EvalSection:
    split: str = "test"
    templates: str = "dataset"
    batch_size: int = 128


@dataclass
class ExperimentConfig:
    backbone: BackboneSection = field(default_factory=BackboneSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "coop"})
    protocol: ProtocolSection = field(default_factory=ProtocolSection)
    train: dict[str, Any] = field(default_factory=dict)
    eval: EvalSection = field(default_factory=EvalSection)
    output_dir: str | None = None

    SECTIONS = {
        "backbone": BackboneSection,
        "dataset": DatasetSection,
        "protocol": ProtocolSection,
        "eval": EvalSection,
    }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        check_keys(data, [f.name for f in fields(cls)], "experiment config")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            section = cls.SECTIONS.get(key)
            if section is not None:
                kwargs[key] = dataclass_from_dict(section, value, f"'{key}' section")
            else:
                kwargs[key] = value
        config = cls(**kwargs)
        if "name" not in config.method:
            raise VLPromptError("the 'method' section needs a 'name' (e.g. coop, cocoop, linear-probe, zero-shot)")
        return config

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
        data = load_yaml(path) if path else {}
        return cls.from_dict(apply_overrides(data, overrides or []))

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
