"""A trained prompt on disk: ``<name>.safetensors`` (trainable tensors) + ``<name>.json`` (what they mean).

Readable without vlprompt: plain safetensors and JSON. The JSON names the method and its config,
the backbone identity, the class names, and the metrics, so a prompt is never applied to the wrong
model silently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

import vlprompt
from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import PromptMethod, build_method
from vlprompt.paths import atomic_path

FORMAT_VERSION = 1


def classnames_hash(classnames: list[str]) -> str:
    return hashlib.sha256("\n".join(classnames).encode()).hexdigest()[:16]


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_prompt(path: str | Path, method: PromptMethod, extra: dict[str, Any] | None = None) -> Path:
    """Write tensors and metadata atomically; returns the .safetensors path."""
    from dataclasses import asdict

    tensors_path, meta_path = _paths(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in method.trainable_state().items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "vlprompt_version": vlprompt.__version__,
        "method": method.name,
        "method_config": asdict(method.config),
        "backbone": method.backbone.identity.to_dict(),
        "classnames": method.classnames,
        "classnames_sha256": classnames_hash(method.classnames),
        **(extra or {}),
    }
    with atomic_path(tensors_path) as tmp:
        save_file(tensors, str(tmp), metadata={"method": method.name})
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return tensors_path


def read_prompt_meta(path: str | Path) -> dict[str, Any]:
    _, meta_path = _paths(path)
    if not meta_path.is_file():
        raise VLPromptError(f"prompt metadata not found: {meta_path} (a prompt is a .safetensors + .json pair)")
    return json.loads(meta_path.read_text())


def load_prompt(path: str | Path, backbone: Backbone, classnames: list[str] | None = None) -> PromptMethod:
    """A ready classifier from a saved prompt; refuses a prompt trained on another backbone."""
    tensors_path, _ = _paths(path)
    meta = read_prompt_meta(path)
    if not tensors_path.is_file():
        raise VLPromptError(f"prompt tensors not found: {tensors_path}")
    if not backbone.identity.same_model(meta["backbone"]):
        trained = f"{meta['backbone']['name']} ({meta['backbone'].get('pretrained')})"
        raise VLPromptError(
            f"prompt {tensors_path} was trained on backbone {trained}, not {backbone.identity.describe()}"
        )
    method = build_method(meta["method"], backbone, meta["classnames"], meta["method_config"])
    method.load_trainable_state(load_file(str(tensors_path)))
    if classnames is not None and list(classnames) != meta["classnames"]:
        method.set_classnames(classnames)
    return method
