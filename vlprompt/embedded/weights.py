"""The world CLIP's weights: where `load_world_clip_state_dict` finds them.

Lookup order: the file bundled with the package, then the user cache, then training with the recipe
(a few CPU minutes) and caching the result atomically. The files are compact (`vlprompt.embedded.compact`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlprompt.embedded.compact import load_compact_weights, save_compact_weights
from vlprompt.embedded.pretrain import train_world_clip
from vlprompt.paths import cache_dir

BUNDLED_WEIGHTS = Path(__file__).parent / "weights" / "vlprompt-tiny-world.safetensors"
CACHE_NAME = "vlprompt-tiny-world.safetensors"


def load_world_clip_state_dict(allow_train: bool = True) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of the pretrained world CLIP (`vlprompt-tiny`).

    Bundled file first, then the user cache; otherwise trains with the recipe when `allow_train`
    (else raises FileNotFoundError naming both places looked at).
    """
    if BUNDLED_WEIGHTS.is_file():
        return load_compact_weights(BUNDLED_WEIGHTS)
    cached = cache_dir("embedded") / CACHE_NAME
    if cached.is_file():
        return load_compact_weights(cached)
    if not allow_train:
        raise FileNotFoundError(f"no world CLIP weights at {BUNDLED_WEIGHTS} or {cached}")
    model = train_world_clip()
    save_compact_weights(model.state_dict(), cached)
    return load_compact_weights(cached)
