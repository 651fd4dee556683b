"""Linear probe: L2-regularised logistic regression on frozen image features (CLIP's baseline).

Fitted full-batch with L-BFGS; the regularisation strength is chosen on validation features,
as CLIP and CoOp do with scikit-learn, without needing scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.label_space import LabelSpace


@dataclass
class LinearProbeConfig(MethodConfig):
    weight_decays: list[float] = field(default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    max_iter: int = 300


def _fit_logistic(features: torch.Tensor, labels: torch.Tensor, n_classes: int, wd: float, max_iter: int) -> nn.Linear:
    layer = nn.Linear(features.shape[1], n_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(features), labels) + wd * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return layer


@register_method("linear-probe")
class LinearProbe(PromptMethod):
    """Not a prompt: a per-class weight vector on image features. Tied to its training classes."""

    config_class = LinearProbeConfig
    class_agnostic = False
    fits_in_one_shot = True

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: LinearProbeConfig) -> None:
        super().__init__(backbone, labels, config)
        self.head = nn.Linear(backbone.identity.embed_dim, len(self.classnames))
        self.chosen_weight_decay: float | None = None

    def set_classnames(self, classnames: Sequence[str]) -> None:
        if list(classnames) != self.classnames:
            raise VLPromptError("linear-probe: its weights belong to the training classes; it cannot take new class names")

    def class_features(self) -> None:
        return None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.image_features(batch).float())

    @torch.enable_grad()
    def fit_features(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        val_features: torch.Tensor | None = None,
        val_labels: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """Closed-form-style fit on cached features; picks weight decay on validation when given."""
        features, labels = features.float(), labels.long()
        candidates = self.config.weight_decays if val_features is not None else [self.config.weight_decays[0]]
        best: tuple[float, float, nn.Linear] | None = None
        for wd in candidates:
            layer = _fit_logistic(features, labels, len(self.classnames), wd, self.config.max_iter)
            if val_features is None:
                score = 0.0
            else:
                with torch.no_grad():
                    score = (layer(val_features.float()).argmax(-1) == val_labels).float().mean().item()
            if best is None or score > best[0]:
                best = (score, wd, layer)
        assert best is not None
        self.head.load_state_dict(best[2].state_dict())
        self.chosen_weight_decay = best[1]
        return {"weight_decay": best[1], "val_acc": best[0] * 100}
