"""The world CLIP's architecture: ``vlprompt-tiny``, an open_clip JSON config that belongs to the embedded world.

It lives here, not in the backbones package, so the embedded world never imports backbones: the backbone
layer registers the world weights and this architecture (`vlprompt.backbones.world`), never the reverse.
"""

from __future__ import annotations

from pathlib import Path

import open_clip

WORLD_ARCH = "vlprompt-tiny"
WORLD_CONFIG = Path(__file__).with_name(f"{WORLD_ARCH}.json")
_registered = False


def register_world_architecture() -> None:
    """Make ``vlprompt-tiny`` visible to ``open_clip.create_model`` and ``get_tokenizer`` (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(WORLD_CONFIG)
        _registered = True
