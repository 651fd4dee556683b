"""Backbones: the only code that knows open_clip / transformers internals.

The names below are imported lazily (PEP 562): `vlprompt.backbones.base` (the interface every method
relies on) can be imported without open_clip or transformers, so loading and checking a config stays
fast; `create_backbone` and the source registries load the libraries when first used.
"""

from __future__ import annotations

from vlprompt.lazy import lazy_exports

_EXPORTS = {
    "Backbone": "vlprompt.backbones.base",
    "BackboneIdentity": "vlprompt.backbones.base",
    "Capability": "vlprompt.backbones.capabilities",
    "DeepPrompts": "vlprompt.backbones.deep_prompts",
    "VisualPrompts": "vlprompt.backbones.deep_prompts",
    "BACKBONE_SOURCES": "vlprompt.backbones.factory",
    "PRETRAINED_RESOLVERS": "vlprompt.backbones.registry",
    "backbone_from_identity": "vlprompt.backbones.factory",
    "create_backbone": "vlprompt.backbones.factory",
    "create_world_backbone": "vlprompt.backbones.factory",
    "identity_spec": "vlprompt.backbones.factory",
    "load_backbone": "vlprompt.backbones.factory",
    "normalize_pretrained": "vlprompt.backbones.factory",
    "resolve_device": "vlprompt.backbones.factory",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
