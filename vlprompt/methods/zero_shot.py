"""Zero-shot CLIP as a method: hand-written prompts, nothing learned. The baseline in every table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.label_space import LabelSpace
from vlprompt.prompts.handcrafted import text_classifier


@dataclass
class ZeroShotConfig(MethodConfig):
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])


@register_method("zero-shot")
class ZeroShot(PromptMethod):
    """Class features = template-ensembled text features, computed once per class set."""

    config_class = ZeroShotConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: ZeroShotConfig) -> None:
        super().__init__(backbone, labels, config)
        self.set_classnames(self.classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self.classnames = list(classnames)
        self.register_buffer(
            "text_features", text_classifier(self.backbone, self.classnames, self.config.templates), persistent=False
        )

    def class_features(self) -> torch.Tensor:
        return self.text_features
