"""open_clip's `CLIP` (built-in text transformer) behind the `Backbone` interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import open_clip
import torch
from open_clip.model import CLIP

from vlprompt.backbones.base import Backbone, BackboneIdentity
from vlprompt.backbones.capabilities import Capability
from vlprompt.backbones.deep_prompts import DeepPrompts
from vlprompt.backbones.model_configs import register_model_configs
from vlprompt.backbones.open_clip_blocks import run_blocks, runs_as_blocks
from vlprompt.backbones.open_clip_vision import OpenClipImageSide, vision_capabilities
from vlprompt.backbones.pretrained import build_open_clip
from vlprompt.backbones.registry import BACKBONE_SOURCES
from vlprompt.backbones.shared_prefix import shared_prefix_forward, unsupported_reason
from vlprompt.backbones.text_layout import TextLayout
from vlprompt.errors import VLPromptError
from vlprompt.registry import unknown_name_message


@dataclass(frozen=True)
class TextTowerParts:
    """The pieces of an open_clip text transformer, wherever they hang (CLIP or TextTransformer)."""

    transformer: torch.nn.Module
    positional_embedding: torch.Tensor
    attn_mask: torch.Tensor | None
    ln_final: torch.nn.Module
    projection: torch.nn.Module | torch.Tensor | None
    pool_type: str


def text_capabilities(tower: TextTowerParts) -> set[Capability]:
    """Token states always; deep prompts and custom layouts when the blocks run as open_clip's own loop."""
    caps = {Capability.TEXT_TOKEN_STATES}
    if runs_as_blocks(tower.transformer):
        caps |= {Capability.DEEP_TEXT_PROMPTS, Capability.TEXT_LAYOUT}
    return caps


def run_text_tower(
    tower: TextTowerParts, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool, deep: DeepPrompts | None = None
) -> torch.Tensor:
    """Token embeddings -> positional embedding, mask, blocks, final norm, pooling, projection.

    With `truncate` (causal towers pooling at the EOT) the sequence is cut after the longest EOT:
    later positions never reach the pooled token through a causal mask, so the output is identical.
    """
    return pool_text_states(tower, text_tower_states(tower, embeds, eot_index, truncate, deep), eot_index)


def text_tower_states(
    tower: TextTowerParts,
    embeds: torch.Tensor,
    eot_index: torch.Tensor,
    truncate: bool,
    deep: DeepPrompts | None = None,
    layout: TextLayout | None = None,
) -> torch.Tensor:
    """The last block's token states ``[N, L', W]`` (before the final norm); L' is cut after the longest
    EOT with `truncate` (exact for causal towers pooling at the EOT). `deep` prompts replace the prompt
    positions' states at the input of blocks 1..J-1, and a `layout` adds attention blocks and re-indexes
    positions (the caller checked `text_capabilities`)."""
    cast = tower.transformer.get_cast_dtype()
    length = embeds.shape[1]
    if truncate and tower.pool_type in ("argmax", "eos"):
        length = int(eot_index.max()) + 1
    if layout is None:
        x = embeds[:, :length].to(tower.positional_embedding.device, cast) + tower.positional_embedding[:length].to(cast)
        mask = tower.attn_mask[:length, :length] if tower.attn_mask is not None else None
    else:
        positional = layout.positions(length, tower.positional_embedding)
        x = embeds[:, :length].to(tower.positional_embedding.device, cast) + positional.to(cast)
        mask = layout.mask(length, tower.attn_mask, cast, x.device)
    if deep is None or not deep.layers:
        return tower.transformer(x, attn_mask=mask)
    return run_blocks(tower.transformer, x, mask, deep, deep.start)


def pool_text_states(tower: TextTowerParts, states: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
    """Final norm, pooling and projection of token states: ``[N, L, W]`` -> ``[N, D]``."""
    x = tower.ln_final(states)
    if tower.pool_type == "last":
        x = x[:, -1]
    else:
        x = x[torch.arange(x.shape[0], device=x.device), eot_index.to(x.device)]
    projection = tower.projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


class OpenClipBackbone(OpenClipImageSide, Backbone):
    """Soft prompts through open_clip's own text tower: positional embedding, causal mask, blocks,
    final LayerNorm, EOT pooling and projection, exactly as ``CLIP.encode_text`` runs them."""

    def __init__(self, model: CLIP, identity: BackboneIdentity) -> None:
        super().__init__()
        if not isinstance(model, CLIP):
            raise VLPromptError(
                f"{identity.name}: only open_clip models with the built-in text transformer (CLIP) are "
                f"supported here, not {type(model).__name__}"
            )
        self.model = model.eval().requires_grad_(False)
        self.identity = identity
        self.causal = model.attn_mask is not None
        self._tokenizer = open_clip.get_tokenizer(identity.name, context_length=model.context_length)
        preprocess = open_clip.get_model_preprocess_cfg(model)
        cfg = open_clip.transform.PreprocessCfg(**preprocess)
        self.train_transform: Callable = open_clip.transform.image_transform_v2(cfg, is_train=True)
        self.eval_transform: Callable = open_clip.transform.image_transform_v2(cfg, is_train=False)
        size = cfg.size if isinstance(cfg.size, (tuple, list)) else (cfg.size, cfg.size)
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self._shared_prefix_static = unsupported_reason(model.transformer, model.attn_mask)  # architecture check
        caps = text_capabilities(self.text_tower) | vision_capabilities(model.visual)
        if hasattr(model.visual, "output_tokens"):
            caps.add(Capability.IMAGE_TOKENS)
        if self._shared_prefix_static is None:
            caps.add(Capability.SHARED_PREFIX)
        self.capabilities = frozenset(caps)

    # -- text --------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        pool = self.model.text_pool_type
        if pool == "argmax":  # CLIP's EOT token has the largest id in the vocabulary
            return ids.argmax(dim=-1)
        if pool == "eos":
            return (ids == self.model.text_eos_id).int().argmax(dim=-1)
        if pool == "last":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        if pool == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
        raise VLPromptError(f"{self.identity.name}: unsupported text pooling {pool!r}")

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.token_embedding(ids.to(self.device))

    @property
    def text_tower(self) -> TextTowerParts:
        model = self.model
        return TextTowerParts(
            model.transformer, model.positional_embedding, model.attn_mask, model.ln_final,
            model.text_projection, model.text_pool_type,
        )

    def encode_text_embeds(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        self._refuse_deep(deep)
        return run_text_tower(self.text_tower, embeds, eot_index, truncate and self.causal, deep)

    def text_token_states(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        self._refuse_deep(deep)
        return text_tower_states(self.text_tower, embeds, eot_index, truncate and self.causal, deep)

    def pool_text_states(self, states: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        return pool_text_states(self.text_tower, states, eot_index)

    def text_block_count(self) -> int:
        self.require(Capability.DEEP_TEXT_PROMPTS, "text_block_count")
        return len(self.model.transformer.resblocks)

    def text_states_with_layout(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, layout: TextLayout, truncate: bool = True
    ) -> torch.Tensor:
        self.require(Capability.TEXT_LAYOUT, "text_states_with_layout")
        return text_tower_states(self.text_tower, embeds, eot_index, truncate and self.causal, layout=layout)

    def shared_prefix_unsupported(self) -> str | None:
        reason = self._shared_prefix_static
        if reason is None and any(b.training and b.attn.dropout > 0 for b in self.model.transformer.resblocks):
            reason = "attention dropout is active"
        return reason

    def encode_text_embeds_shared(
        self,
        prefix: torch.Tensor,
        suffix: torch.Tensor,
        eot_index: torch.Tensor,
        truncate: bool = True,
        deep: DeepPrompts | None = None,
    ) -> torch.Tensor:
        reason = self.shared_prefix_unsupported()
        if reason is not None:
            raise VLPromptError(f"{self.identity.name}: shared-prefix encoding is not exact here: {reason}")
        single = prefix.dim() == 2
        if single:
            prefix, suffix = prefix.unsqueeze(0), suffix.unsqueeze(0)
        if prefix.dim() != 3 or suffix.dim() != 4 or suffix.shape[0] != prefix.shape[0]:
            raise VLPromptError(
                f"shared-prefix encoding takes prefix [G, S, W] and suffix [G, N, T, W], "
                f"got {tuple(prefix.shape)} and {tuple(suffix.shape)}"
            )
        model = self.model
        cast = model.transformer.get_cast_dtype()
        S, T = prefix.shape[1], suffix.shape[2]
        eot = eot_index.to(suffix.device) - S
        if int(eot.min()) < 0:
            raise VLPromptError(f"shared prefix of {S} positions covers a pooled position {int(eot.min()) + S}")
        if deep is not None and deep.layers and (
            deep.start + deep.n_tokens > S or any(t.dim() != 2 for t in deep.layers)
        ):
            raise VLPromptError(
                f"{self.identity.name}: shared-prefix encoding takes deep prompts only as shared [n, W] tokens inside "
                f"the shared prefix (positions {deep.start}..{deep.start + deep.n_tokens - 1}, prefix {S}); "
                "encode whole prompts (encode_text_embeds(..., deep=...)) instead"
            )
        if truncate:  # causal tower: positions after the last pooled one are never read
            T = min(T, int(eot.max()) + 1)
        positional = model.positional_embedding.to(cast)
        x_p = prefix.to(cast) + positional[:S]
        x_s = suffix[:, :, :T].to(cast) + positional[S : S + T]
        x = shared_prefix_forward(
            model.transformer.resblocks, x_p, x_s, grad_checkpointing=model.transformer.grad_checkpointing,
            deep=deep if deep is not None and deep.layers else None,
        )
        x = model.ln_final(x[:, torch.arange(x.shape[1], device=x.device), eot])  # [G, N, W]
        projection = model.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return x[0] if single else x

    # -- image -------------------------------------------------------------------------------

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        self.require(Capability.IMAGE_TOKENS, "image_tokens")
        visual = self.model.visual
        previous = visual.output_tokens
        visual.output_tokens = True
        try:
            _, tokens = visual(images.to(self.device, self.dtype))
        finally:
            visual.output_tokens = previous
        return tokens

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale.exp().clamp(max=100.0)


def _check_architecture(name: str) -> None:
    register_model_configs()
    known = open_clip.list_models()
    if name not in known:
        raise VLPromptError(unknown_name_message("model architecture", name, known))


def builds_custom_text(name: str) -> bool:
    """Whether open_clip builds `name` as `CustomTextCLIP` (its rule in ``create_model``: ``custom_text`` or a
    Hugging Face text tower, and no multimodal CoCa tower): such plain names go to the custom-text source."""
    cfg = open_clip.get_model_config(name) or {}
    text_cfg = cfg.get("text_cfg") or {}
    return "multimodal_cfg" not in cfg and bool(cfg.get("custom_text") or "hf_model_name" in text_cfg)


def _identity(
    model: CLIP, name: str, pretrained: str | None, weights_hash: str | None, source: str = "open_clip"
) -> BackboneIdentity:
    return BackboneIdentity(
        source=source,
        name=name,
        pretrained=pretrained,
        embed_dim=int(model.text_projection.shape[-1]) if model.text_projection is not None else model.transformer.width,
        width=model.transformer.width,
        context_length=model.context_length,
        weights_hash=weights_hash,
    )


def _create_unloaded(name: str, device: str) -> CLIP:
    """The architecture with fresh weights; open_clip's "initialized randomly" warning is muted
    because vlprompt loads the weights itself right after (or was asked for random ones)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return open_clip.create_model(name, pretrained=None, device=device)
    finally:
        root.setLevel(level)


@BACKBONE_SOURCES.register("open_clip")
def create_open_clip_backbone(name: str, pretrained: str | None = None, device: str = "cpu") -> Backbone:
    """Build from an architecture name and a weight source.

    `pretrained` is None (random weights), a local checkpoint file (safetensors or a state dict),
    a vlprompt resolver tag (e.g. ``world`` for the embedded tiny CLIP) or an open_clip tag such as
    ``openai`` (downloaded on first use on a machine with network); see `vlprompt.backbones.pretrained`.
    Architectures open_clip builds as `CustomTextCLIP` (``ViT-B-16-SigLIP``, ``roberta-ViT-B-32``...) are
    handed to the ``open_clip_custom`` source.
    """
    _check_architecture(name)
    if builds_custom_text(name):
        return BACKBONE_SOURCES.get("open_clip_custom")(name, pretrained=pretrained, device=device)

    def create(tag: str | None) -> CLIP:
        return _create_unloaded(name, device) if tag is None else open_clip.create_model(name, pretrained=tag, device=device)

    model, pretrained, weights_hash = build_open_clip(name, pretrained, create)
    return OpenClipBackbone(model.to(device), _identity(model, name, pretrained, weights_hash))
