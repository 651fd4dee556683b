"""open_clip image towers seen by the optional parts of `Backbone`: token states, pooling, visual prompts and
the per-block LayerNorms, for open_clip's `VisionTransformer` (and the norms of timm ViT trunks)."""

from __future__ import annotations

import torch
from open_clip.transformer import VisionTransformer, _expand_token
from torch import nn

from vlprompt.backbones.capabilities import Capability
from vlprompt.backbones.deep_prompts import VisualPrompts, drop_positions, insert_positions
from vlprompt.backbones.open_clip_blocks import run_blocks, runs_as_blocks


def _is_own_vit(visual: nn.Module) -> bool:
    """open_clip's ViT with its own embedding, forward and transformer loop (what `vit_token_states` mirrors)."""
    return (
        isinstance(visual, VisionTransformer)
        and type(visual)._embeds is VisionTransformer._embeds
        and type(visual).forward is VisionTransformer.forward
        and runs_as_blocks(visual.transformer)
    )


def block_norms(visual: nn.Module) -> list[nn.Module]:
    """Each block's two LayerNorms: ``ln_1``/``ln_2`` of open_clip ViTs, ``norm1``/``norm2`` of timm ViT trunks
    (the pre/post norms excluded). Empty for towers without them (ResNets)."""
    if isinstance(visual, VisionTransformer):
        blocks, names = visual.transformer.resblocks, ("ln_1", "ln_2")
    elif isinstance(getattr(getattr(visual, "trunk", None), "blocks", None), nn.Sequential):
        blocks, names = visual.trunk.blocks, ("norm1", "norm2")
    else:
        return []
    norms = [getattr(block, name, None) for block in blocks for name in names]
    return norms if all(isinstance(n, nn.LayerNorm) for n in norms) else []


def vision_capabilities(visual: nn.Module) -> set[Capability]:
    caps = set()
    if hasattr(visual, "_embeds") and hasattr(visual, "_pool"):
        caps.add(Capability.IMAGE_TOKEN_STATES)
    if _is_own_vit(visual):
        caps.add(Capability.VISUAL_PROMPTS)
    if block_norms(visual):
        caps.add(Capability.IMAGE_NORMS)
    return caps


def vit_token_states(visual: VisionTransformer, images: torch.Tensor, prompts: VisualPrompts | None) -> torch.Tensor:
    """The last block's sequence ``[B, 1 + T, W]`` (class token first, before the final norm). With `prompts`,
    their tokens follow the class token from the positional embedding on (before ``ln_pre``, as MaPLe) and are
    dropped from the output."""
    if prompts is None:
        return visual.transformer(visual._embeds(images))
    x = visual.conv1(images)  # VisionTransformer._embeds, with the prompts inserted before the pre-norm
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([_expand_token(visual.class_embedding, x.shape[0]).to(x.dtype), x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    x = insert_positions(x, prompts.shallow, VisualPrompts.START)
    x = visual.ln_pre(visual.patch_dropout(x))
    x = run_blocks(visual.transformer, x, None, prompts, VisualPrompts.START)
    return drop_positions(x, VisualPrompts.START, prompts.n_tokens)


def pool_vit_states(visual: nn.Module, states: torch.Tensor) -> torch.Tensor:
    """The tower's own pooling, final norm and projection: ``[B, 1 + T, W]`` -> ``[B, D]``."""
    pooled, _ = visual._pool(states)
    return pooled @ visual.proj if visual.proj is not None else pooled


__all__ = ["block_norms", "pool_vit_states", "vision_capabilities", "vit_token_states"]


class OpenClipImageSide:
    """The image half of a backbone whose ``self.model.visual`` is an open_clip image tower (plain CLIP and
    CustomTextCLIP share it): encoding with optional visual prompts, token states, pooling, block norms."""

    def encode_image(self, images: torch.Tensor, visual: VisualPrompts | None = None) -> torch.Tensor:
        if visual is None:
            return self.model.encode_image(images.to(self.device, self.dtype))
        self.require(Capability.VISUAL_PROMPTS, "encode_image(visual=...)")
        return self.pool_image_states(self.image_token_states(images, visual))

    def image_prompt_shape(self) -> tuple[int, int]:
        self.require(Capability.VISUAL_PROMPTS, "image_prompt_shape")
        transformer = self.model.visual.transformer
        return len(transformer.resblocks), int(transformer.width)

    def image_token_states(self, images: torch.Tensor, visual: VisualPrompts | None = None) -> torch.Tensor:
        self.require(Capability.IMAGE_TOKEN_STATES, "image_token_states")
        if visual is not None:
            self.require(Capability.VISUAL_PROMPTS, "image_token_states(visual=...)")
        return vit_token_states(self.model.visual, images.to(self.device, self.dtype), visual)

    def pool_image_states(self, states: torch.Tensor) -> torch.Tensor:
        self.require(Capability.IMAGE_TOKEN_STATES, "pool_image_states")
        return pool_vit_states(self.model.visual, states)

    def image_norm_modules(self) -> list[nn.Module]:
        self.require(Capability.IMAGE_NORMS, "image_norm_modules")
        return block_norms(self.model.visual)
