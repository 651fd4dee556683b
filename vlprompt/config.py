"""Experiment configs: YAML files (with `base:` inheritance) + ``key.sub=value`` overrides.

Every section becomes the dataclass that consumes it when the config is loaded (the method section
the method's own config class, the train section `TrainConfig`), so a typo in a key or a value of the
wrong type fails at once, before any model or data is touched, with one line naming the key and the
valid ones.
"""

from __future__ import annotations

import copy
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlprompt.engine.train_config import TrainConfig
from vlprompt.errors import VLPromptError
from vlprompt.methods import METHODS, MethodConfig
from vlprompt.paths import config_root
from vlprompt.tasks import TASKS
from vlprompt.tasks.base import BackboneSection
from vlprompt.typed_config import check_keys, from_dict

CONFIG_ROOT = config_root()


class ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's numbers: ``2e-3`` and ``1e5`` are floats (YAML 1.1 reads them as strings)."""


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?[0-9][0-9_]*\.[0-9_]*$"
               r"|^[-+]?\.[0-9_]+$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


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


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config, merging the files named by its `base:` key (relative to it) first."""
    path = resolve_config_path(path)
    if path.resolve() in _chain:
        loop = " -> ".join(str(p) for p in (*_chain, path.resolve()))
        raise VLPromptError(f"{path}: its base: chain loops ({loop})")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=ConfigLoader) or {}
    except yaml.YAMLError as exc:
        raise VLPromptError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VLPromptError(f"{path}: cannot read the config ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise VLPromptError(f"{path}: a config must be a mapping of keys to values")
    bases = data.pop("base", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _deep_merge(merged, load_yaml(path.parent / base, (*_chain, path.resolve())))
    return _deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=0.01`` -> (["train", "lr"], 0.01); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise VLPromptError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=ConfigLoader) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise VLPromptError(f"override {text!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return key.strip().split("."), value


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


EXPERIMENT_KEYS = ["task", "backbone", "dataset", "method", "protocol", "train", "eval", "output_dir", "published"]


@dataclass
class ExperimentConfig:
    """One experiment, every section checked when it is loaded (before any model or data is touched).

    ``task`` picks the dataset / protocol / eval sections (`vlprompt.tasks`); ``method`` is the method's
    own config dataclass (``method_name`` names it); ``train`` is a `TrainConfig` whose seed defaults
    to the protocol's.
    """

    task: str = "classification"
    backbone: BackboneSection = field(default_factory=BackboneSection)
    dataset: Any = None
    method_name: str = "coop"
    method: MethodConfig | None = None
    protocol: Any = None
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: Any = None
    output_dir: str | None = None
    published: dict[str, Any] = field(default_factory=dict)  # figures from the papers (documentation)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        if not isinstance(data, dict):
            raise VLPromptError("an experiment config must be a mapping of sections")
        check_keys(data, EXPERIMENT_KEYS, "experiment config")
        task_name = data.get("task") or "classification"
        task = TASKS.get(str(task_name))
        protocol = from_dict(task.protocol_section, data.get("protocol"), "'protocol' section")
        method_values = dict(data.get("method") or {"name": task.default_method})
        if "name" not in method_values:
            raise VLPromptError(
                f"the 'method' section needs a 'name' (for {task.name}: {', '.join(METHODS.names(task.name))})"
            )
        method_name = str(method_values.pop("name"))
        method = METHODS.get(method_name, task.name).config_class.from_dict(method_values, where="'method' section")
        train_values = dict(data.get("train") or {})
        train_values.setdefault("seed", getattr(protocol, "seed", 1))
        output_dir = data.get("output_dir")
        if output_dir is not None and not isinstance(output_dir, str):
            raise VLPromptError(f"output_dir must be a path, got {output_dir!r}")
        # a run has one folder: train.output_dir is another name for output_dir, never a second folder
        train_dir = train_values.pop("output_dir", None)
        if train_dir is not None:
            if not isinstance(train_dir, str):
                raise VLPromptError(f"train.output_dir must be a path, got {train_dir!r}")
            if output_dir is not None and Path(output_dir) != Path(train_dir):
                raise VLPromptError(
                    f"train.output_dir ({train_dir}) and output_dir ({output_dir}) differ: a run writes everything "
                    "(checkpoints, prompt, experiment.json, split files) to one folder; set output_dir only"
                )
            output_dir = train_dir
        config = cls(
            task=task.name,
            backbone=from_dict(BackboneSection, data.get("backbone"), "'backbone' section"),
            dataset=from_dict(task.dataset_section, data.get("dataset"), "'dataset' section"),
            method_name=method_name,
            method=method,
            protocol=protocol,
            train=TrainConfig.from_dict(train_values, where="'train' section"),
            eval=from_dict(task.eval_section, data.get("eval"), "'eval' section"),
            output_dir=output_dir,
            published=dict(data.get("published") or {}),
        )
        task.check(config)
        return config

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
        data = load_yaml(path) if path else {}
        return cls.from_dict(apply_overrides(data, overrides or []))

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "backbone": asdict(self.backbone),
            "dataset": asdict(self.dataset),
            "method": {"name": self.method_name, **asdict(self.method)},
            "protocol": asdict(self.protocol),
            "train": asdict(self.train),
            "eval": asdict(self.eval),
            "output_dir": self.output_dir,
            "published": self.published,
        }
