"""PromptSRC: prompting with self-regulating constraints (Khattak et al., ICCV'23).

IVLP prompts (4 text + 4 visual tokens, depth 9 on both towers, text from ``"a photo of a"``) trained with, as
the released trainer (muzairkhattak/PromptSRC ``trainers/promptsrc.py``, config
``PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``):

    loss = CE + 25 * L1(text, frozen_text) + 10 * L1(image, frozen_image) + KL(logits || zero-shot logits)

- ``text`` / ``image``: L2-normalised prompted features; L1 is ``F.l1_loss`` (mean over every element).
- ``frozen_text``: the mean of the frozen tower's *unnormalised* text features over the 60 templates of
  ``IMAGENET_TEMPLATES`` (bank ``promptsrc60``), then L2-normalised (the release's order).
- ``frozen_image``: the frozen tower's L2-normalised features of the same images. The release runs a second,
  unprompted image tower every step on a fresh augmentation; by default (``cache_frozen_image: true``, a
  deviation) vlprompt reads them from the feature cache: the trainer serves view v of an item together with its
  cached frozen features (``frozen_image_features``), so the training images are drawn from the cache's
  ``augment_views`` views instead of freshly augmented. ``cache_frozen_image: false`` is the release's way.
- KL: ``kl_div(log_softmax(logits), log_softmax(zs_logits), reduction="sum", log_target=True) / logits.numel()``
  with ``zs_logits = scale * frozen_image @ frozen_text.T`` (the release's direction and normalisation).
- Gaussian prompt aggregation (GPA): after epoch e of N the prompts are added with weight ``g(e) / sum g``,
  ``g`` a Gaussian of mean ``gpa_mean`` (15) and std ``gpa_std`` (1); after the last epoch the aggregate
  replaces the prompts. The running sum is part of the trainable state, so resume stays exact.

SGD lr 0.0025, 20 epochs, batch 4. Deviations are options: ``gpa: false``, other weights, other templates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import register_method
from vlprompt.methods.deep_prompting import ClassTextCache
from vlprompt.methods.ivlp import IVLP, IVLPConfig
from vlprompt.methods.label_space import LabelSpace
from vlprompt.prompts.handcrafted import raw_mean_classifier
from vlprompt.prompts.templates import get_templates

_GPA = "gpa_sum."


@dataclass
class PromptSRCConfig(IVLPConfig):
    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9
    depth_vision: int = 9
    templates: Any = "promptsrc60"  # the frozen-text ensemble
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    kl_weight: float = 1.0  # the release's fixed 1
    gpa: bool = True
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    encode_batch_size: int = 1024
    cache_frozen_image: bool = True  # frozen image features from the cache (false: frozen tower every step)

    def check(self, where: str) -> None:
        super().check(where)
        if self.gpa_std <= 0:
            raise VLPromptError(f"{where}: gpa_std must be > 0, got {self.gpa_std}")


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """The release's per-epoch weights: Gaussian density at epochs 1..N, normalised to sum to 1."""
    g = [math.exp(-0.5 * ((a - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi)) for a in range(1, epochs + 1)]
    total = sum(g)
    if total == 0:
        raise VLPromptError(f"promptsrc: GPA weights vanish over {epochs} epochs (gpa_mean {mean}, gpa_std {std})")
    return [w / total for w in g]


def promptsrc_losses(
    logits: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, frozen_text: torch.Tensor, image: torch.Tensor,
    frozen_image: torch.Tensor, scale: torch.Tensor | float,
) -> dict[str, torch.Tensor]:
    """The four terms of the released loss, unweighted (see the module docstring)."""
    zs_logits = scale * frozen_image.float() @ frozen_text.float().t()
    kl = F.kl_div(
        F.log_softmax(logits.float(), dim=1), F.log_softmax(zs_logits, dim=1), reduction="sum", log_target=True
    ) / logits.numel()
    return {
        "ce": F.cross_entropy(logits.float(), labels),
        "text_l1": F.l1_loss(text.float(), frozen_text.float()),
        "image_l1": F.l1_loss(image.float(), frozen_image.float()),
        "kl": kl,
    }


@register_method("promptsrc")
class PromptSRC(IVLP):
    config_class = PromptSRCConfig

    @property
    def frozen_image_features(self) -> bool:  # type: ignore[override]
        return self.config.cache_frozen_image

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: PromptSRCConfig) -> None:
        super().__init__(backbone, labels, config)
        self.templates = get_templates(config.templates)
        self._frozen_text = ClassTextCache()
        self._gpa: dict[str, torch.Tensor] = {}
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.frozen_image_passes = 0  # frozen image-tower runs (0 under the trainer: the cache serves them)

    def frozen_text(self) -> torch.Tensor:
        return self._frozen_text.get(
            self.classnames,
            lambda names: raw_mean_classifier(self.backbone, names, self.templates, self.config.encode_batch_size),
        )

    def frozen_image(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "frozen_features" in batch:
            return batch["frozen_features"]
        self.frozen_image_passes += 1  # called outside the trainer without cached features
        with torch.no_grad():
            return F.normalize(self.backbone.encode_image(batch["images"]).float(), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.image_features(batch)
        text = self.class_features()
        self._last = (image, text) if self.training else None
        return self.backbone.logit_scale * image @ text.to(image.dtype).t()

    def train_step(
        self, batch: dict[str, torch.Tensor], model: torch.nn.Module, backward: Callable[[torch.Tensor], None]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch)  # through the DDP wrapper when there is one
        image, text = self._last
        self._last = None
        scale = self.backbone.logit_scale
        terms = promptsrc_losses(
            logits, batch["labels"], text, self.frozen_text().to(text.device), image,
            self.frozen_image(batch).to(image.device), scale,
        )
        cfg = self.config
        loss = (
            terms["ce"] + cfg.text_loss_weight * terms["text_l1"] + cfg.image_loss_weight * terms["image_l1"]
            + cfg.kl_weight * terms["kl"]
        )
        backward(loss)
        acc = (logits.argmax(-1) == batch["labels"]).float().mean()
        stats = {k: float(v.detach()) for k, v in terms.items()}
        stats.update(loss=float(loss.detach()), acc=float(acc) * 100)
        return loss, stats

    # -- Gaussian prompt aggregation ----------------------------------------------------------

    def _prompt_params(self) -> dict[str, torch.nn.Parameter]:
        return {k: p for k, p in self.named_parameters() if p.requires_grad}

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        if not self.config.gpa:
            return
        weight = gpa_weights(epochs, self.config.gpa_mean, self.config.gpa_std)[epoch - 1]
        with torch.no_grad():
            for name, param in self._prompt_params().items():
                term = param.detach().float() * weight
                self._gpa[name] = self._gpa[name] + term if name in self._gpa else term
            if epoch == epochs:
                for name, param in self._prompt_params().items():
                    param.copy_(self._gpa[name].to(param.dtype))
                self._gpa = {}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = super().trainable_state()
        state.update({_GPA + k: v.detach().clone() for k, v in self._gpa.items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self._gpa = {k[len(_GPA):]: v.detach().float().clone() for k, v in state.items() if k.startswith(_GPA)}
        super().load_trainable_state({k: v for k, v in state.items() if not k.startswith(_GPA)})
