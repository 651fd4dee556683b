"""CoCoOp: context conditioned on each image by a small meta-network (Zhou et al., CVPR'22)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.label_space import LabelSpace
from vlprompt.prompts.assembler import PromptAssembler
from vlprompt.prompts.context import check_init, initial_context
from vlprompt.prompts.templates import prompt_classname


@dataclass
class CoCoOpConfig(MethodConfig):
    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    init_std: float = 0.02
    init_seed: int | None = None
    init: str = ""  # context init strategy (vlprompt.prompts.context); non-word ones need ctx_init: ""
    # images per text-encoder call (0: whole batch). Bounds peak memory: when training, each chunk is
    # gradient-checkpointed (its text-tower activations are recomputed in backward, one chunk at a time)
    text_chunk: int = 0

    def check(self, where: str) -> None:
        check_init(self.init, self.ctx_init, where)


@register_method("cocoop")
class CoCoOp(PromptMethod):
    """Text features depend on the image: one forward encodes B x C prompts in one batched call."""

    config_class = CoCoOpConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: CoCoOpConfig) -> None:
        super().__init__(backbone, labels, config)
        ctx = initial_context(
            backbone, config.n_ctx, config.ctx_init, config.init_std, config.init_seed, config.init, self.classnames
        )
        self.ctx = nn.Parameter(ctx)
        embed_dim, width = backbone.identity.embed_dim, backbone.identity.width
        hidden = max(1, embed_dim // 16)
        self.meta_net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))
        self.set_classnames(self.classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        names = [prompt_classname(name) for name in classnames]
        self.prompts = PromptAssembler(self.backbone, "{ctx} {class}.", {"class": names}, {"ctx": self.ctx.shape[0]})
        self.classnames = list(classnames)

    def class_features(self) -> None:
        return None  # the text side depends on the image

    def conditioned_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """[B, C, D] normalised: context + meta-net shift of each image, for every class."""
        shift = self.meta_net(image_features.to(self.ctx.dtype))  # [B, W]
        ctx = self.ctx.unsqueeze(0) + shift.unsqueeze(1)  # [B, n, W]
        chunk = self.config.text_chunk or ctx.shape[0]
        C = len(self.classnames)
        # several chunks under autograd: checkpoint each, so only one chunk's activations are alive
        # at a time in backward too (the recomputation repeats the same operations: same numbers)
        recompute = chunk < ctx.shape[0] and torch.is_grad_enabled() and ctx.requires_grad
        outs = []
        for start in range(0, ctx.shape[0], chunk):
            part = ctx[start : start + chunk]
            if recompute:
                outs.append(checkpoint(self._encode_chunk, part, C, use_reentrant=False))
            else:
                outs.append(self._encode_chunk(part, C))
        return F.normalize(torch.cat(outs), dim=-1)

    def _encode_chunk(self, part: torch.Tensor, n_classes: int) -> torch.Tensor:
        per_prompt = part.unsqueeze(1).expand(part.shape[0], n_classes, *part.shape[1:])
        return self.prompts.encode(ctx=per_prompt)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.image_features(batch)
        text = self.conditioned_text_features(image)
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", image, text.to(image.dtype))
