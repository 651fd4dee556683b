"""Backbones: the only code that knows open_clip / transformers internals."""

from __future__ import annotations

from vlprompt.backbones import custom_text, hf_backbone, open_clip_backbone, open_clip_hub, openai_checkpoint, world  # noqa: F401,I001  (fill the registries)
from vlprompt.backbones.base import Backbone, BackboneIdentity
from vlprompt.backbones.registry import BACKBONE_SOURCES, PRETRAINED_RESOLVERS
from vlprompt.backbones.world import WORLD_ARCH, WORLD_TAG

DEFAULT_SOURCE = "open_clip"


def create_backbone(name: str, pretrained: str | None = None, device: str = "cpu") -> Backbone:
    """Build a frozen backbone from ``[source:]architecture`` and a weight source.

    Examples: ``create_backbone("ViT-B-16", "openai")``, ``create_backbone("vlprompt-tiny", "world")``,
    ``create_backbone("ViT-B-32", "/path/to/checkpoint.safetensors")``,
    ``create_backbone("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")``, ``create_backbone("hf:openai/clip-vit-base-patch16")``.
    The source is the text before the first colon (open_clip when there is none).
    """
    source, _, arch = name.partition(":") if ":" in name else ("", "", name)
    factory = BACKBONE_SOURCES.get(source or DEFAULT_SOURCE)
    return factory(arch, pretrained=pretrained, device=device)


def create_world_backbone(device: str = "cpu") -> Backbone:
    """The embedded default: the tiny CLIP pretrained on the procedural world."""
    return create_backbone(WORLD_ARCH, WORLD_TAG, device=device)


__all__ = [
    "BACKBONE_SOURCES",
    "PRETRAINED_RESOLVERS",
    "Backbone",
    "BackboneIdentity",
    "create_backbone",
    "create_world_backbone",
]
