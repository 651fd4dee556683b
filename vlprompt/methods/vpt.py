"""VPT on CLIP: learned tokens in the image tower only; the text side is the frozen hand-crafted classifier.

As the released trainer (muzairkhattak/multimodal-prompt-learning ``trainers/vpt.py``, config
``VPT/vit_b16_c2_ep5_batch4_4.yaml``): 8 visual tokens at depth 12 (VPT-deep; depth 1 is VPT-shallow), drawn
from N(0, 0.02), inserted after the positional embedding (before ``ln_pre``) and replaced at the input of
blocks 1..J-1; class features of ``"a photo of a {}."``, computed once. SGD lr 0.0025, 5 epochs, batch 4.
Several templates (``templates``) are ensembled CLIP's way (an option; the release uses one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.deep_prompting import (
    ClassTextCache,
    VisualPromptTokens,
    check_positive,
    encode_prompted_images,
    require_visual_depth,
)
from vlprompt.methods.label_space import LabelSpace
from vlprompt.prompts.handcrafted import text_classifier
from vlprompt.prompts.templates import get_templates


@dataclass
class VPTConfig(MethodConfig):
    n_ctx: int = 8  # visual tokens
    depth: int = 12  # J: blocks 0..J-1 get their own tokens (1 = VPT-shallow)
    templates: Any = "a photo of a {}."  # the frozen text side
    init_std: float = 0.02
    clamp_depth: bool = True  # a depth beyond the image tower's blocks is clamped (warning); false: an error
    grad_checkpointing: bool = False  # recompute the towers' block activations in backward: less memory, more time
    encode_batch_size: int = 1024

    def check(self, where: str) -> None:
        check_positive(where, n_ctx=self.n_ctx, depth=self.depth)


@register_method("vpt")
class VPT(PromptMethod):
    config_class = VPTConfig
    needs_images = True

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: VPTConfig) -> None:
        super().__init__(backbone, labels, config)
        self.depth, width = require_visual_depth(backbone, "vpt", config.depth, config.clamp_depth)
        self.visual = VisualPromptTokens(config.n_ctx, self.depth, width, config.init_std)
        self.templates = get_templates(config.templates)
        self._text = ClassTextCache()

    def result_metadata(self) -> dict[str, Any]:
        return {**super().result_metadata(), "prompt_depth": {"vision": self.depth}}

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self.classnames = list(classnames)

    def class_features(self) -> torch.Tensor:
        return self._text.get(
            self.classnames, lambda names: text_classifier(self.backbone, names, self.templates, self.config.encode_batch_size)
        )

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return encode_prompted_images(self.backbone, batch["images"], self.visual.prompts(), self.config.grad_checkpointing)
