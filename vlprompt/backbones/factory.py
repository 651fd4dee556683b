"""Building backbones by name: ``[source:]architecture`` + a weight source, and rebuilding one from the
identity a checkpoint records. Importing this module fills the source registries (open_clip,
transformers, OpenAI checkpoints, the embedded world)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vlprompt.backbones import custom_text, hf_backbone, open_clip_backbone, open_clip_hub, openai_checkpoint, world  # noqa: F401,I001  (fill the registries)
from vlprompt.backbones.base import Backbone, BackboneIdentity
from vlprompt.backbones.pretrained import normalize_pretrained
from vlprompt.backbones.registry import BACKBONE_SOURCES
from vlprompt.backbones.world import WORLD_ARCH, WORLD_TAG
from vlprompt.devices import check_device_available
from vlprompt.errors import VLPromptError
from vlprompt.threads import apply_threads

DEFAULT_SOURCE = "open_clip"
STATE_DICT_SOURCES = ("open_clip", "openai", "open_clip_custom")  # accept a state dict object as `pretrained`


def create_backbone(name: str, pretrained: str | Mapping[str, torch.Tensor] | None = None,
                    device: str = "cpu") -> Backbone:
    """Build a frozen backbone from ``[source:]architecture`` and a weight source.

    Examples: ``create_backbone("ViT-B-16", "openai")``, ``create_backbone("vlprompt-tiny", "world")``,
    ``create_backbone("ViT-B-32", "/path/to/checkpoint.safetensors")``,
    ``create_backbone("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")``, ``create_backbone("hf:openai/clip-vit-base-patch16")``.
    The source is the text before the first colon (open_clip when there is none). `pretrained` None, "",
    "none" or "None" means random weights (`normalize_pretrained`, the one place that decides it).
    `pretrained` may also be a state dict in memory: open_clip layout for an open_clip architecture
    (``create_backbone("ViT-B-16", model.state_dict())``), OpenAI layout with the ``openai`` source
    (``create_backbone("openai:my-clip", state)``, architecture from the shapes).
    """
    source, _, arch = name.partition(":") if ":" in name else ("", "", name)
    factory = BACKBONE_SOURCES.get(source or DEFAULT_SOURCE)
    if isinstance(pretrained, Mapping) and (source or DEFAULT_SOURCE) not in STATE_DICT_SOURCES:
        raise VLPromptError(f"backbone {name}: a state dict object loads with the sources {list(STATE_DICT_SOURCES)} "
                            "(an open_clip architecture name, or openai:<label> for an OpenAI-layout state dict)")
    return factory(arch, pretrained=normalize_pretrained(pretrained), device=device)


def identity_spec(identity: BackboneIdentity | dict) -> str:
    """The ``create_backbone`` name that rebuilds `identity`: its name when that already carries the source
    (``local-dir:/p``, ``hf-hub:org/repo``) or the source is open_clip's, else ``<source>:<name>``."""
    ident = identity.to_dict() if isinstance(identity, BackboneIdentity) else identity
    source, name = ident.get("source") or DEFAULT_SOURCE, ident["name"]
    if source == DEFAULT_SOURCE or name.startswith(f"{source}:"):
        return name
    return f"{source}:{name}"


def backbone_from_identity(identity: BackboneIdentity | dict, device: str = "cpu") -> Backbone:
    """Rebuild the backbone an identity (e.g. a checkpoint's ``backbone`` record) describes, on `device`
    (``auto``: the GPU if there is one). Callers compare ``same_model`` to be sure the weights are the same."""
    ident = identity.to_dict() if isinstance(identity, BackboneIdentity) else dict(identity)
    if not ident.get("name"):
        raise VLPromptError(f"backbone identity {ident!r} has no 'name'; it needs at least source, name and pretrained")
    backbone = create_backbone(identity_spec(ident), ident.get("pretrained"), device=resolve_device(device))
    apply_threads(backbone)
    return backbone


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device_available(device)


def load_backbone(name: str = "vlprompt-tiny", pretrained: str | Mapping[str, torch.Tensor] | None = "world",
                  device: str = "auto") -> Backbone:
    """A frozen backbone on `device` (``auto``: the GPU if there is one); ``pretrained`` None/'none' means
    random weights; a tag, a checkpoint file, or a state dict object (see `create_backbone`). Sets torch's
    intra-op threads for its size (`vlprompt.threads`)."""
    backbone = create_backbone(name, pretrained, device=resolve_device(device))
    apply_threads(backbone)
    return backbone


def create_world_backbone(device: str = "cpu") -> Backbone:
    """The embedded default: the tiny CLIP pretrained on the procedural world."""
    return create_backbone(WORLD_ARCH, WORLD_TAG, device=device)
