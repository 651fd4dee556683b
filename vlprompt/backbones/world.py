"""The embedded tiny CLIP as a named weight source: ``vlprompt-tiny`` / ``world``."""

from __future__ import annotations

import hashlib

import torch

from vlprompt.backbones.registry import PRETRAINED_RESOLVERS

WORLD_ARCH = "vlprompt-tiny"
WORLD_TAG = "world"


def state_dict_hash(state: dict[str, torch.Tensor], prefix: int = 16) -> str:
    """Content hash of a state dict: same numbers -> same hash, wherever they were loaded from."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:prefix]


@PRETRAINED_RESOLVERS.register(WORLD_ARCH, WORLD_TAG)
def resolve_world_weights() -> tuple[dict[str, torch.Tensor], str]:
    from vlprompt.embedded.weights import load_world_clip_state_dict

    state = load_world_clip_state_dict(allow_train=True)
    return state, state_dict_hash(state)
