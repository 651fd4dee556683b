"""open_clip's `CLIP` (built-in text transformer) behind the `Backbone` interface."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from vlprompt.backbones.base import Backbone, BackboneIdentity
from vlprompt.backbones.model_configs import register_model_configs
from vlprompt.backbones.registry import BACKBONE_SOURCES, PRETRAINED_RESOLVERS
from vlprompt.backbones.shared_prefix import shared_prefix_forward, unsupported_reason
from vlprompt.backbones.weights import file_sha256, load_into, read_state_dict
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


def run_text_tower(
    tower: TextTowerParts, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool
) -> torch.Tensor:
    """Token embeddings -> positional embedding, mask, blocks, final norm, pooling, projection.

    With `truncate` (causal towers pooling at the EOT) the sequence is cut after the longest EOT:
    later positions never reach the pooled token through a causal mask, so the output is identical.
    """
    return pool_text_states(tower, text_tower_states(tower, embeds, eot_index, truncate), eot_index)


def text_tower_states(
    tower: TextTowerParts, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool
) -> torch.Tensor:
    """The last block's token states ``[N, L', W]`` (before the final norm); L' is cut after the longest
    EOT with `truncate` (exact for causal towers pooling at the EOT)."""
    cast = tower.transformer.get_cast_dtype()
    length = embeds.shape[1]
    if truncate and tower.pool_type in ("argmax", "eos"):
        length = int(eot_index.max()) + 1
    x = embeds[:, :length].to(tower.positional_embedding.device, cast) + tower.positional_embedding[:length].to(cast)
    mask = tower.attn_mask[:length, :length] if tower.attn_mask is not None else None
    return tower.transformer(x, attn_mask=mask)


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


class OpenClipBackbone(Backbone):
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
        self._shared_prefix_static: tuple[str | None] | None = None  # cached architecture check

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
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True
    ) -> torch.Tensor:
        return run_text_tower(self.text_tower, embeds, eot_index, truncate and self.causal)

    def text_token_states(self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        return text_tower_states(self.text_tower, embeds, eot_index, truncate and self.causal)

    def pool_text_states(self, states: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        return pool_text_states(self.text_tower, states, eot_index)

    def shared_prefix_unsupported(self) -> str | None:
        if self._shared_prefix_static is None:
            self._shared_prefix_static = (unsupported_reason(self.model.transformer, self.model.attn_mask),)
        reason = self._shared_prefix_static[0]
        if reason is None and any(b.training and b.attn.dropout > 0 for b in self.model.transformer.resblocks):
            reason = "attention dropout is active"
        return reason

    def encode_text_embeds_shared(
        self, prefix: torch.Tensor, suffix: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True
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
        if truncate:  # causal tower: positions after the last pooled one are never read
            T = min(T, int(eot.max()) + 1)
        positional = model.positional_embedding.to(cast)
        x_p = prefix.to(cast) + positional[:S]
        x_s = suffix[:, :, :T].to(cast) + positional[S : S + T]
        x = shared_prefix_forward(
            model.transformer.resblocks, x_p, x_s, grad_checkpointing=model.transformer.grad_checkpointing
        )
        x = model.ln_final(x[:, torch.arange(x.shape[1], device=x.device), eot])  # [G, N, W]
        projection = model.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return x[0] if single else x

    # -- image -------------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images.to(self.device, self.dtype))

    def image_token_states(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        if not (hasattr(visual, "_embeds") and hasattr(visual, "_pool")):
            raise NotImplementedError(f"{self.identity.name}: image tower {type(visual).__name__} exposes no token states")
        return visual.transformer(visual._embeds(images.to(self.device, self.dtype)))

    def pool_image_states(self, states: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        pooled, _ = visual._pool(states)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        if not hasattr(visual, "output_tokens"):
            raise VLPromptError(f"{self.identity.name}: image tower {type(visual).__name__} has no tokens")
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

    def normalized_text(self, texts: Sequence[str]) -> torch.Tensor:
        return F.normalize(self.encode_text(texts), dim=-1)


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


def _identity(model: CLIP, name: str, pretrained: str | None, weights_hash: str | None) -> BackboneIdentity:
    return BackboneIdentity(
        source="open_clip",
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
    ``openai`` (downloaded on first use on a machine with network). Architectures open_clip builds as
    `CustomTextCLIP` (``ViT-B-16-SigLIP``, ``roberta-ViT-B-32``...) are handed to the ``open_clip_custom`` source.
    """
    _check_architecture(name)
    if builds_custom_text(name):
        return BACKBONE_SOURCES.get("open_clip_custom")(name, pretrained=pretrained, device=device)
    weights_hash: str | None = None
    if pretrained is None:
        model = _create_unloaded(name, device)
    elif (name, pretrained) in PRETRAINED_RESOLVERS:
        model = _create_unloaded(name, device)
        state, weights_hash = PRETRAINED_RESOLVERS.get((name, pretrained))()
        load_into(model, state, f"weights {name}/{pretrained}", name)
    elif os.sep in pretrained or Path(pretrained).suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        path = Path(pretrained).expanduser()
        state = read_state_dict(path)
        model = _create_unloaded(name, device)
        load_into(model, state, f"checkpoint {path}", name)
        weights_hash = file_sha256(path)
        pretrained = str(path)
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            valid = tags + [tag for (arch, tag) in PRETRAINED_RESOLVERS.keys() if arch == name]
            raise VLPromptError(
                unknown_name_message(f"pretrained tag for {name}", pretrained, valid or ["(none: pass a file)"])
            )
        model = open_clip.create_model(name, pretrained=pretrained, device=device)
    return OpenClipBackbone(model.to(device), _identity(model, name, pretrained, weights_hash))
