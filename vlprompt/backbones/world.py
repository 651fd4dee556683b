"""The embedded tiny CLIP as a named weight source: ``vlprompt-tiny`` / ``world``.

The dependency points one way: the backbone layer imports the embedded world (its architecture and its
weights) and registers them; the embedded package never imports backbones.
"""

from __future__ import annotations

import torch

from vlprompt.backbones.model_configs import also_register
from vlprompt.backbones.registry import PRETRAINED_RESOLVERS
from vlprompt.backbones.weights import state_dict_hash
from vlprompt.embedded.architecture import WORLD_ARCH, register_world_architecture
from vlprompt.embedded.weights import load_world_clip_state_dict

WORLD_TAG = "world"

also_register(register_world_architecture)


@PRETRAINED_RESOLVERS.register(WORLD_ARCH, WORLD_TAG)
def resolve_world_weights() -> tuple[dict[str, torch.Tensor], str]:
    state = load_world_clip_state_dict(allow_train=True)
    return state, state_dict_hash(state)


__all__ = ["WORLD_ARCH", "WORLD_TAG", "resolve_world_weights"]
