"""vlprompt: soft prompt learning for CLIP-like vision-language models.

The top-level names are imported lazily, so ``import vlprompt`` stays cheap (no torch until used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "create_backbone": "vlprompt.backbones",
    "build_method": "vlprompt.methods",
    "load_dataset": "vlprompt.data",
    "load_prompt": "vlprompt.zoo",
    "save_prompt": "vlprompt.zoo",
    "export_classifier": "vlprompt.zoo",
    "predict": "vlprompt.zoo",
    "Trainer": "vlprompt.engine.trainer",
    "TrainConfig": "vlprompt.engine.trainer",
    "evaluate_method": "vlprompt.engine.evaluate",
    "run_experiment": "vlprompt.api",
    "ExperimentConfig": "vlprompt.config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vlprompt' has no attribute {name!r}")
