"""IVLP: independent deep vision and language prompts (Khattak et al., MaPLe paper's baseline).

As the released trainer (muzairkhattak/multimodal-prompt-learning ``trainers/independentVL.py``, config
``IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml``): 2 text tokens from ``"a photo of a"`` (the first two words'
embeddings; "of a" stays as words, the release's quirk), 2 visual tokens, depth 12 on both sides; the deeper
tokens of both towers and the visual tokens are N(0, 0.02). SGD lr 0.0035, 5 epochs, batch 4. Text features do
not depend on the image, so evaluation encodes the text once and each test image once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import VisualPrompts
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.deep_prompting import (
    ClassPrompts,
    VisualPromptTokens,
    check_positive,
    encode_prompted_images,
    normal_tokens,
    released_context,
    require_text_depth,
    require_visual_depth,
)
from vlprompt.methods.label_space import LabelSpace


@dataclass
class IVLPConfig(MethodConfig):
    n_ctx_text: int = 2
    n_ctx_vision: int = 2
    ctx_init: str = "a photo of a"  # "" (or n_ctx_text > 4): N(0, init_std) text context
    depth_text: int = 12  # >= 1: the shallow text prompt is always there
    depth_vision: int = 12  # 0: no visual prompts
    init_std: float = 0.02
    clamp_depth: bool = True  # a depth beyond a tower's blocks is clamped (warning); false: an error

    def check(self, where: str) -> None:
        check_positive(where, n_ctx_text=self.n_ctx_text, n_ctx_vision=self.n_ctx_vision, depth_text=self.depth_text)
        if self.depth_vision < 0:
            raise VLPromptError(f"{where}: depth_vision must be >= 0 (0: no visual prompts), got {self.depth_vision}")


@register_method("ivlp")
class IVLP(PromptMethod):
    config_class = IVLPConfig
    needs_images = True

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: IVLPConfig) -> None:
        super().__init__(backbone, labels, config)
        name = type(self).name
        self.depths = {"text": require_text_depth(backbone, name, config.depth_text, config.clamp_depth), "vision": 0}
        ctx, self._rest = released_context(backbone, config.n_ctx_text, config.ctx_init, config.init_std)
        self.ctx = nn.Parameter(ctx)
        self.text_deep = normal_tokens(self.depths["text"] - 1, config.n_ctx_text, ctx.shape[1], config.init_std)
        self.visual: VisualPromptTokens | None = None
        if config.depth_vision:
            self.depths["vision"], width = require_visual_depth(backbone, name, config.depth_vision, config.clamp_depth)
            self.visual = VisualPromptTokens(config.n_ctx_vision, self.depths["vision"], width, config.init_std)
        self.set_classnames(self.classnames)

    def result_metadata(self) -> dict[str, Any]:
        return {**super().result_metadata(), "prompt_depth": dict(self.depths)}

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self.prompts = ClassPrompts(self.backbone, classnames, self.ctx.shape[0], self._rest)
        self.classnames = list(classnames)

    def visual_prompts(self) -> VisualPrompts | None:
        return self.visual.prompts() if self.visual is not None else None

    def class_features(self) -> torch.Tensor:
        return self.prompts.encode(self.ctx, tuple(self.text_deep))

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return encode_prompted_images(self.backbone, batch["images"], self.visual_prompts())
