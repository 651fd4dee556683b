"""MaPLe: multi-modal prompt learning (Khattak et al., CVPR'23).

As the released trainer (muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``, config
``MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``): ``n_ctx = 2`` text tokens from ``"a photo of a"`` (the first two
words' embeddings; "of a" stays as words), depth 9. The vision prompts are *produced* from the language ones by
coupling functions: ``proj(ctx)`` is the shallow visual prompt, ``projections[i](text_deep[i])`` the prompt of
image block i+1, each a Linear(text width -> image width) (512 -> 768 on ViT-B/16). The deeper text tokens are
N(0, 0.02); the coupling functions start as copies of one Linear (the release clones a single layer, so they
share their initial weights). SGD lr 0.0035, 5 epochs, batch 4.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import VisualPrompts
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.deep_prompting import (
    ClassPrompts,
    check_positive,
    encode_prompted_images,
    normal_tokens,
    released_context,
    require_text_depth,
    require_visual_depth,
)
from vlprompt.methods.label_space import LabelSpace


@dataclass
class MaPLeConfig(MethodConfig):
    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    depth: int = 9  # J, both towers (1 = shallow MaPLe)
    init_std: float = 0.02
    clamp_depth: bool = True  # a depth beyond a tower's blocks is clamped (warning); false: an error

    def check(self, where: str) -> None:
        check_positive(where, n_ctx=self.n_ctx, depth=self.depth)


@register_method("maple")
class MaPLe(PromptMethod):
    config_class = MaPLeConfig
    needs_images = True

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: MaPLeConfig) -> None:
        super().__init__(backbone, labels, config)
        depth = require_text_depth(backbone, "maple", config.depth, config.clamp_depth)
        depth, image_width = require_visual_depth(backbone, "maple", depth, config.clamp_depth)
        self.depth = depth
        ctx, self._rest = released_context(backbone, config.n_ctx, config.ctx_init, config.init_std)
        text_width = ctx.shape[1]
        self.proj = nn.Linear(text_width, image_width)
        self.ctx = nn.Parameter(ctx)
        self.compound_prompts_text = normal_tokens(depth - 1, ctx.shape[0], text_width, config.init_std)
        single = nn.Linear(text_width, image_width)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])
        self.set_classnames(self.classnames)

    def result_metadata(self) -> dict[str, Any]:
        return {**super().result_metadata(), "prompt_depth": {"text": self.depth, "vision": self.depth}}

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self.prompts = ClassPrompts(self.backbone, classnames, self.ctx.shape[0], self._rest)
        self.classnames = list(classnames)

    def visual_prompts(self) -> VisualPrompts:
        """The coupling functions applied to the language prompts."""
        deep = tuple(layer(tokens) for layer, tokens in zip(self.compound_prompt_projections, self.compound_prompts_text))
        return VisualPrompts(self.proj(self.ctx), deep)

    def class_features(self) -> torch.Tensor:
        return self.prompts.encode(self.ctx, tuple(self.compound_prompts_text))

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return encode_prompted_images(self.backbone, batch["images"], self.visual_prompts())
