"""KgCoOp: knowledge-guided context optimisation (Yao, Zhang & Xu, CVPR'23).

CoOp plus ``weight`` x (1 - mean_c cos(t_c, w_c)): each training class's learned text feature t_c is
pulled towards its frozen hand-crafted feature w_c (the template-ensembled CLIP feature of
``templates``; KgCoOp uses one per-dataset template, see ``vlprompt/prompts/banks/lasp.py``
``KGCOOP_TEMPLATES``). The paper writes ||t_c - w_c||^2, which is 2 - 2 cos for unit vectors: the same
regulariser up to a factor of 2. Official setting: 4 context tokens from "a photo of a", weight 8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import register_method
from vlprompt.methods.coop import CoOp, CoOpConfig
from vlprompt.methods.label_space import LabelSpace
from vlprompt.methods.lasp import resolve_templates
from vlprompt.methods.text_losses import kgcoop_loss
from vlprompt.prompts.handcrafted import text_classifier


@dataclass
class KgCoOpConfig(CoOpConfig):
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    templates: Any = "a photo of a {}."  # bank name, literal "{}" template, text file or list
    weight: float = 8.0  # lambda; 0 is CoOp
    encode_batch_size: int = 1024


@register_method("kgcoop")
class KgCoOp(CoOp):
    config_class = KgCoOpConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: KgCoOpConfig) -> None:
        super().__init__(backbone, labels, config)
        self._hand: tuple[tuple[str, ...], torch.Tensor] | None = None
        self._last_text: torch.Tensor | None = None
        self.templates = resolve_templates(config)

    def handcrafted(self) -> torch.Tensor:
        """``[C, D]`` template-ensembled hand-crafted features of the current classes (computed once per
        class list)."""
        key = tuple(self.classnames)
        if self._hand is None or self._hand[0] != key:
            self._hand = (key, text_classifier(self.backbone, self.classnames, self.templates, self.config.encode_batch_size))
        return self._hand[1]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.image_features(batch)
        text = self.class_features()
        self._last_text = text if self.training else None
        return self.backbone.logit_scale * image @ text.to(image.dtype).t()

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ce, stats = super().loss(logits, batch)
        text, self._last_text = self._last_text, None
        stats["ce"] = stats["loss"]
        if text is None or self.config.weight == 0:
            return ce, stats
        kg = kgcoop_loss(text, self.handcrafted().to(text.device))
        loss = ce + self.config.weight * kg
        stats.update(kg_loss=float(kg.detach()), loss=float(loss.detach()))
        return loss, stats
