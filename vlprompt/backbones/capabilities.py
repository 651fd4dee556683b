"""What a backbone offers beyond the core interface, declared by each implementation.

Methods ask `Backbone.supports(cap)` or `Backbone.require(cap, who)` instead of calling an optional method
and catching the failure: a missing capability is known before any tensor is built, and the refusal is one
line naming the method, the capability and the backbone.
"""

from __future__ import annotations

from enum import Enum


class Capability(str, Enum):
    """One optional part of the `Backbone` interface; the value reads in an error message."""

    TEXT_TOKEN_STATES = "text token states"  # text_token_states / pool_text_states
    IMAGE_TOKEN_STATES = "image token states"  # image_token_states / pool_image_states
    IMAGE_TOKENS = "image tokens"  # image_tokens
    SHARED_PREFIX = "shared-prefix text encoding"  # encode_text_embeds_shared (exact when shared_prefix_unsupported() is None)
    IMAGE_NORMS = "the image tower's block LayerNorms"  # image_norm_parameters
    DEEP_TEXT_PROMPTS = "deep text prompts"  # encode_text_embeds(..., deep=DeepPrompts)
    VISUAL_PROMPTS = "visual prompts"  # encode_image(..., visual=VisualPrompts)
    TEXT_LAYOUT = "custom text attention masks and positions"  # text_states_with_layout(..., TextLayout)

    def __str__(self) -> str:
        return self.value


__all__ = ["Capability"]
