"""Prompt checkpoints (safetensors + JSON), the registry of published prompts, verified downloads.

The names below are imported lazily (PEP 562), so reading the registry (`vlprompt zoo list`,
`vlprompt.zoo.registry`) does not import torch; checkpoints and prediction import it when used.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from vlprompt.lazy import lazy_exports

_EXPORTS = {
    "ZooEntry": "vlprompt.zoo.registry",
    "add_bundled_entry": "vlprompt.zoo.bundle",
    "download_url": "vlprompt.zoo.download",
    "export_classifier": "vlprompt.zoo.checkpoint",
    "fetch": "vlprompt.zoo.registry",
    "get_entry": "vlprompt.zoo.registry",
    "is_offline": "vlprompt.zoo.download",
    "load_prompt": "vlprompt.zoo.checkpoint",
    "load_registry": "vlprompt.zoo.registry",
    "predict": "vlprompt.zoo.predict",
    "read_prompt": "vlprompt.zoo.checkpoint",
    "read_prompt_meta": "vlprompt.zoo.checkpoint",
    "save_prompt": "vlprompt.zoo.checkpoint",
    "verify_entry": "vlprompt.zoo.registry",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


class _ZooModule(types.ModuleType):
    """`vlprompt.zoo.predict` stays the function, as before: importing the submodule of the same name
    sets the package attribute to the module, which would shadow the lazy export."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "predict" and isinstance(value, types.ModuleType) and hasattr(value, "predict"):
            value = value.predict
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _ZooModule
