"""The embedded tiny CLIP as a named weight source: ``vlprompt-tiny`` / ``world``."""

from __future__ import annotations

import torch

from vlprompt.backbones.registry import PRETRAINED_RESOLVERS
from vlprompt.backbones.weights import state_dict_hash

WORLD_ARCH = "vlprompt-tiny"
WORLD_TAG = "world"


@PRETRAINED_RESOLVERS.register(WORLD_ARCH, WORLD_TAG)
def resolve_world_weights() -> tuple[dict[str, torch.Tensor], str]:
    from vlprompt.embedded.weights import load_world_clip_state_dict

    state = load_world_clip_state_dict(allow_train=True)
    return state, state_dict_hash(state)
