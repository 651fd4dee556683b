"""PERSOMA on CLIP: a prompt adapter that turns a user's example images into soft prompt tokens.

PERSOMA (Hebert et al., 2024) embeds a user's history items and resamples them (MLP / transformer /
Perceiver-style) into a few soft prompt tokens for a frozen LLM. Here the history is a handful of the
user's images (unlabelled), encoded by the frozen image tower; a Perceiver-style resampler (learned
latents cross-attending to the example features, then a feed-forward block) gives one offset per context
token, added to a shared learned context: ``ctx_user = ctx + out(resample(examples))`` in
``"{ctx} {class}."``. Each offset's norm is softly bounded by ``max_offset`` (a deviation from the paper's
plain projection: on the world, unbounded offsets grew to 100s x a token embedding's norm and training
diverged). The output projection starts at zero, so an untrained adapter is plain CoOp with
the shared context. A new user's examples give their prompt with no gradient step (`set_user_examples`).

Training is episodic (`episode_loss`: one user's examples, classes and labelled queries per episode);
through the ordinary trainer a batch is one episode whose own images are the examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.label_space import LabelSpace
from vlprompt.prompts.context import context_class_prompts, initial_context


@dataclass
class PersomaConfig(MethodConfig):
    n_ctx: int = 4
    ctx_init: str = ""  # words for the shared context (sets n_ctx), or "" for N(0, 0.02)
    hidden: int = 0  # resampler width; 0: the text width
    heads: int = 4
    max_offset: float = 1.0  # bound on each token offset's L2 norm (soft: cap * tanh(|o| / cap)); 0: unbounded
    init_std: float = 0.02
    init_seed: int | None = None

    def check(self, where: str) -> None:
        if self.n_ctx < 1 and not self.ctx_init:
            raise VLPromptError(f"{where}: n_ctx must be at least 1, got {self.n_ctx}")
        if self.hidden < 0 or self.heads < 1:
            raise VLPromptError(f"{where}: hidden must be >= 0 and heads >= 1, got {self.hidden} and {self.heads}")
        if self.max_offset < 0:
            raise VLPromptError(f"{where}: max_offset must be >= 0 (0: unbounded), got {self.max_offset}")


class Resampler(nn.Module):
    """A set of example features ``[K, D]`` -> ``[n, W]`` token offsets (learned latents cross-attend to the
    examples, then a feed-forward block; permutation-invariant in the examples, any K >= 1)."""

    def __init__(self, embed_dim: int, width: int, n_tokens: int, hidden: int, heads: int, max_offset: float = 0.0) -> None:
        super().__init__()
        self.max_offset = max_offset
        if hidden % heads:
            hidden = heads * max(1, hidden // heads)
        self.latents = nn.Parameter(torch.randn(n_tokens, hidden) * 0.02)
        self.inp = nn.Linear(embed_dim, hidden)
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
        self.out = nn.Linear(hidden, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, examples: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(self.inp(examples.float())).unsqueeze(0)
        q = self.latents.unsqueeze(0)
        x = q + self.attn(self.norm_q(q), kv, kv, need_weights=False)[0]
        x = x + self.ff(self.norm_ff(x))
        offsets = self.out(x[0])
        if self.max_offset:  # keep offsets at the scale of token embeddings: unbounded ones blew up in training
            norm = offsets.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            offsets = offsets * (self.max_offset * torch.tanh(norm / self.max_offset) / norm)
        return offsets


@register_method("persoma", PersomaConfig)
class Persoma(PromptMethod):
    """Shared context + a resampler of the user's example images; `set_user_examples` personalises."""

    config_class = PersomaConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: PersomaConfig) -> None:
        super().__init__(backbone, labels, config)
        ctx = initial_context(backbone, config.n_ctx, config.ctx_init, config.init_std, config.init_seed)
        self.n_ctx = ctx.shape[0]
        self.ctx = nn.Parameter(ctx)
        ident = backbone.identity
        self.resampler = Resampler(
            ident.embed_dim, ident.width, self.n_ctx, config.hidden or ident.width, config.heads, config.max_offset
        )
        self.user_features: torch.Tensor | None = None
        self._build(self.classnames)

    def _build(self, classnames: Sequence[str]) -> None:
        self.prompts = context_class_prompts(self.backbone, classnames, self.n_ctx)
        self.classnames = list(classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self._build(classnames)

    # -- personalisation ---------------------------------------------------------------------

    def set_user_examples(self, features: torch.Tensor | None) -> None:
        """The user's example image features ``[K, D]`` (L2-normalised, as the image tower gives them), or
        None for the shared, unpersonalised prompt. No gradient step: the next predictions use them."""
        if features is not None:
            if features.dim() != 2 or features.shape[0] < 1 or features.shape[1] != self.backbone.identity.embed_dim:
                raise VLPromptError(
                    f"persoma: user examples must be [K, {self.backbone.identity.embed_dim}] image features, "
                    f"got {tuple(features.shape)}"
                )
            features = F.normalize(features.detach().float(), dim=-1)
        self.user_features = features

    def user_context(self, examples: torch.Tensor | None) -> torch.Tensor:
        """``[n, W]``: the shared context, plus the resampled offsets of `examples` when given."""
        if examples is None:
            return self.ctx
        return self.ctx + self.resampler(examples.to(self.ctx.device)).to(self.ctx.dtype)

    def features_for(self, examples: torch.Tensor | None) -> torch.Tensor:
        return F.normalize(self.prompts.encode(ctx=self.user_context(examples)), dim=-1)

    def class_features(self) -> torch.Tensor:
        return self.features_for(self.user_features)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.image_features(batch)
        examples = batch.get("user_features", self.user_features)
        if examples is None and self.training:  # the ordinary trainer: a batch is one user's episode
            examples = image.detach()
        text = self.features_for(examples)
        return self.backbone.logit_scale * image @ text.to(image.dtype).t()

    def episode_loss(
        self, examples: torch.Tensor, classnames: Sequence[str], queries: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One user: their example features, their classes, labelled query features -> CE over their classes."""
        if list(classnames) != self.classnames:
            self._build(classnames)
        logits = self.forward({"features": queries, "user_features": examples})
        return self.loss(logits, {"labels": labels})


__all__ = ["Persoma", "PersomaConfig", "Resampler"]
