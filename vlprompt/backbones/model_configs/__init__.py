"""open_clip architecture configs that vlprompt registers (tiny world CLIP, tiny test models)."""

from __future__ import annotations

from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).parent
_registered = False


def register_model_configs() -> None:
    """Make vlprompt's JSON architectures visible to ``open_clip.create_model`` (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
