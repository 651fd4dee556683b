"""open_clip architecture configs that vlprompt registers: the tiny test models here, plus the ones other
packages own and announce with `also_register` (the world CLIP's, from `vlprompt.backbones.world`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).parent
_registered = False
_hooks: list[Callable[[], None]] = []


def also_register(hook: Callable[[], None]) -> None:
    """Run the idempotent `hook` whenever `register_model_configs` runs (another package's configs)."""
    if hook not in _hooks:
        _hooks.append(hook)


def register_model_configs() -> None:
    """Make vlprompt's JSON architectures visible to ``open_clip.create_model`` (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
    for hook in _hooks:
        hook()
