"""InfoPrompt (Wu et al., NeurIPS'23): CoOp plus two mutual-information regularisers, InfoNCE-estimated.

The paper maximises I(prompt; task head) ("head loss") and I(prompt; representation | input)
("representation loss"). The authors' public code (JoshuaWu1997/infoprompt, ``promptHead_loss`` and
``bottleneck_nce``) scores each with a one-positive InfoNCE whose log-softmax is clamped at -2 (the loss
of one row is at most 2):

- head: positive = the prompt against the head's mean vector, negatives = the input's own tokens against
  it (the prompt must carry more head information than the input);
- representation: positive = the prompted representation against the prompt (prompt detached), negatives
  = the same input's unprompted representation against it.

CLIP adaptation (the classifier's head is the class text features; nothing is image-side):

- prompt representation p: the text feature of the context alone, ``"{ctx}."`` (same tower, same space);
- head loss, per image b: ``-clamp(log softmax([s<p, h>, s<v_b, h>])[0], min=-clamp)`` with h the
  normalised mean of the learned class features and v_b the image feature (the input);
- representation loss, per image b: ``-clamp(log softmax([s<z_b, p'>, s<z0_b, p'>])[0], min=-clamp)`` with
  p' = p detached, z_b = sum_c p(c|x_b) t_c the prompted classifier's expected class feature of image b,
  z0_b the same under the frozen hand-written classifier (``templates``), all normalised;
- s: CLIP's logit scale. The released variational sampling of representations (a VAE head of the NLU
  model) has no counterpart in a CLIP classifier and is left out.

``head_weight`` (the code's gamma) and ``rep_weight`` (beta) switch each term; both 0 is CoOp exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import register_method
from vlprompt.methods.coop import CoOp, CoOpConfig
from vlprompt.methods.label_space import LabelSpace
from vlprompt.methods.lasp import resolve_templates
from vlprompt.prompts.assembler import PromptAssembler
from vlprompt.prompts.handcrafted import text_classifier


@dataclass
class InfoPromptConfig(CoOpConfig):
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    head_weight: float = 1.0  # gamma: prompt <-> head InfoNCE; 0 switches it off
    rep_weight: float = 1.0  # beta: prompt <-> representation InfoNCE; 0 switches it off
    clamp: float = 2.0  # each row's loss is at most this (the released code's clamp(min=-2))
    templates: Any = "a photo of a {}."  # the frozen unprompted classifier of the representation loss

    def check(self, where: str) -> None:
        super().check(where)
        if self.head_weight < 0 or self.rep_weight < 0 or self.clamp <= 0:
            raise VLPromptError(f"{where}: head_weight and rep_weight must be >= 0 and clamp > 0")


def clamped_infonce(positive: torch.Tensor, negatives: torch.Tensor, clamp: float) -> torch.Tensor:
    """Mean over rows of ``-max(log softmax([pos, negs])[0], -clamp)``: ``positive [B]``, ``negatives [B, M]``."""
    logits = torch.cat([positive.unsqueeze(-1), negatives], dim=-1).float()
    return -F.log_softmax(logits, dim=-1)[:, 0].clamp(min=-clamp).mean()


def head_loss(prompt: torch.Tensor, classes: torch.Tensor, images: torch.Tensor, scale: float | torch.Tensor,
              clamp: float = 2.0) -> torch.Tensor:
    """Prompt <-> head InfoNCE. ``prompt [D]``, ``classes [C, D]``, ``images [B, D]`` (normalised here)."""
    head = F.normalize(F.normalize(classes.float(), dim=-1).mean(0), dim=-1)
    p = F.normalize(prompt.float(), dim=-1)
    v = F.normalize(images.float(), dim=-1)
    positive = (scale * (p @ head)).expand(v.shape[0])
    negatives = (scale * (v @ head)).unsqueeze(-1)
    return clamped_infonce(positive, negatives, clamp)


def expected_class_feature(images: torch.Tensor, classes: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """``[B, D]`` normalised sum_c p(c|x) t_c of a CLIP classifier (the representation the prompt shapes)."""
    t = F.normalize(classes.float(), dim=-1)
    probs = torch.softmax(scale * F.normalize(images.float(), dim=-1) @ t.t(), dim=-1)
    return F.normalize(probs @ t, dim=-1)


def representation_loss(prompt: torch.Tensor, prompted: torch.Tensor, unprompted: torch.Tensor,
                        scale: float | torch.Tensor, clamp: float = 2.0) -> torch.Tensor:
    """Prompt <-> representation InfoNCE (prompt detached): ``prompted`` / ``unprompted`` ``[B, D]``."""
    p = F.normalize(prompt.detach().float(), dim=-1)
    positive = scale * (F.normalize(prompted.float(), dim=-1) @ p)
    negatives = (scale * (F.normalize(unprompted.float(), dim=-1) @ p)).unsqueeze(-1)
    return clamped_infonce(positive, negatives, clamp)


@register_method("infoprompt")
class InfoPrompt(CoOp):
    config_class = InfoPromptConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: InfoPromptConfig) -> None:
        if config.class_position != "end" or config.class_specific:
            raise VLPromptError("infoprompt: only unified context with the class at the end (class_position: end)")
        super().__init__(backbone, labels, config)
        self.templates = resolve_templates(config)
        self.context_prompt = PromptAssembler(backbone, "{ctx}.", {}, {"ctx": self.n_ctx})
        self._hand: tuple[tuple[str, ...], torch.Tensor] | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def prompt_feature(self) -> torch.Tensor:
        """``[D]`` the text feature of the context alone."""
        return self.context_prompt.encode(ctx=self.ctx)[0]

    def handcrafted(self) -> torch.Tensor:
        key = tuple(self.classnames)
        if self._hand is None or self._hand[0] != key:
            self._hand = (key, text_classifier(self.backbone, self.classnames, self.templates))
        return self._hand[1]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.image_features(batch)
        text = self.class_features()
        self._last = (image, text) if self.training else None
        return self.backbone.logit_scale * image @ text.to(image.dtype).t()

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        ce, stats = super().loss(logits, batch)
        last, self._last = self._last, None
        cfg = self.config
        if last is None or (cfg.head_weight == 0 and cfg.rep_weight == 0):
            return ce, stats
        image, text = last
        scale = self.backbone.logit_scale.float()
        prompt = self.prompt_feature()
        loss = ce
        stats["ce"] = stats["loss"]
        if cfg.head_weight > 0:
            head = head_loss(prompt, text, image, scale, cfg.clamp)
            loss = loss + cfg.head_weight * head
            stats["head_loss"] = float(head.detach())
        if cfg.rep_weight > 0:
            hand = self.handcrafted().to(image.device)
            rep = representation_loss(
                prompt, expected_class_feature(image, text, scale), expected_class_feature(image, hand, scale), scale, cfg.clamp
            )
            loss = loss + cfg.rep_weight * rep
            stats["rep_loss"] = float(rep.detach())
        stats["loss"] = float(loss.detach())
        return loss, stats

    def result_metadata(self) -> dict[str, Any]:
        cfg = self.config
        return {**super().result_metadata(), "infoprompt": {"head_weight": cfg.head_weight, "rep_weight": cfg.rep_weight}}
