"""Bundling a trained prompt with the package: one self-contained ``.safetensors`` file in
``vlprompt/zoo/bundled/`` and its entry in ``vlprompt/zoo/registry.json`` (`vlprompt zoo add`)."""

from __future__ import annotations

import os
from pathlib import Path

import vlprompt
from vlprompt.errors import VLPromptError
from vlprompt.hashing import file_sha256
from vlprompt.zoo.checkpoint import read_prompt, write_prompt_files
from vlprompt.zoo.registry import (
    BUNDLED_DIR,
    ENTRY_NAME,
    REGISTRY_FILE,
    ZooEntry,
    entry_metadata,
    read_registry_file,
    write_registry_file,
)


def _package_source(path: Path) -> str | None:
    """``package:vlprompt/...`` when `path` lies inside the installed vlprompt package."""
    root = Path(vlprompt.__file__).resolve().parent
    try:
        return f"package:vlprompt/{path.resolve().relative_to(root).as_posix()}"
    except ValueError:
        return None


def add_bundled_entry(
    checkpoint: str | os.PathLike,
    name: str,
    *,
    description: str = "",
    registry_path: str | os.PathLike = REGISTRY_FILE,
    bundled_dir: str | os.PathLike = BUNDLED_DIR,
    extra_sources: list[str] | tuple[str, ...] = (),
    overwrite: bool = False,
) -> ZooEntry:
    """Copy a trained prompt into `bundled_dir` as one self-contained file and list it in `registry_path`.

    The bundled file gets the checkpoint's config in its safetensors header; the entry records its
    sha256 and size, a ``package:`` source (``file:`` when `bundled_dir` is outside the package), any
    `extra_sources` after it (mirrors: URLs or ``hf://`` ids that already hold the same bytes), and a
    summary of the config. Returns the new entry.
    """
    if not ENTRY_NAME.match(name):
        raise VLPromptError(f"zoo entry name {name!r} must be letters, digits, '.', '_', '+' or '-'")
    registry_path = Path(registry_path)
    existing = read_registry_file(registry_path) if registry_path.is_file() else []
    if any(e.name == name for e in existing) and not overwrite:
        raise VLPromptError(f"zoo registry {registry_path} already has an entry {name!r} (pass overwrite=True / --force)")
    tensors, meta = read_prompt(checkpoint)
    target = Path(bundled_dir) / f"{name}.safetensors"
    write_prompt_files(tensors, meta, target, None)
    source = _package_source(target) or f"file:{os.path.relpath(target.resolve(), registry_path.resolve().parent)}"
    values = {
        "name": name,
        "description": description,
        "filename": target.name,
        "sources": [source, *extra_sources],
        "sha256": file_sha256(target),
        "size": target.stat().st_size,
        **entry_metadata(meta),
    }
    entry = ZooEntry.from_dict(values, registry_path)
    write_registry_file(registry_path, [e for e in existing if e.name != name] + [entry])
    return entry
