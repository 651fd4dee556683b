"""Engine: frozen feature extraction, the feature cache, the trainer, evaluation and metrics.

The names below are imported lazily (PEP 562), so `vlprompt.engine.train_config` (needed to check a
config) does not pull in the image pipeline or the backbones.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "classification_metrics": "vlprompt.engine.metrics",
    "evaluate_zero_shot": "vlprompt.engine.zero_shot",
    "extract_image_features": "vlprompt.engine.features",
    "format_results_table": "vlprompt.engine.zero_shot",
    "stream_image_features": "vlprompt.engine.features",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
