"""Zero-shot CLIP as a method: hand-written prompts, nothing learned. The baseline in every table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.label_space import LabelSpace
from vlprompt.prompts.handcrafted import text_classifier
from vlprompt.prompts.templates import TEMPLATE_BANKS, get_templates


@dataclass
class ZeroShotConfig(MethodConfig):
    # "{}" or "{c}" templates, a bank name, a text/JSON file, or per-class descriptions {class: [sentences]}
    templates: Any = field(default_factory=lambda: ["a photo of a {}."])


@register_method("zero-shot")
class ZeroShot(PromptMethod):
    """Class features = template-ensembled text features, computed once per class set."""

    config_class = ZeroShotConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: ZeroShotConfig) -> None:
        super().__init__(backbone, labels, config)
        self.templates = get_templates(config.templates)
        if not (isinstance(config.templates, str) and config.templates in TEMPLATE_BANKS):
            config.templates = dict(self.templates) if isinstance(self.templates, dict) else list(self.templates)
        self.set_classnames(self.classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self.classnames = list(classnames)
        self.register_buffer(
            "text_features", text_classifier(self.backbone, self.classnames, self.templates), persistent=False
        )

    def class_features(self) -> torch.Tensor:
        return self.text_features
