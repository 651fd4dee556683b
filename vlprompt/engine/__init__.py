"""Engine: frozen feature extraction, the feature cache, the trainer, evaluation and metrics.

The names below are imported lazily (PEP 562), so `vlprompt.engine.train_config` (needed to check a
config) does not pull in the image pipeline or the backbones.
"""

from __future__ import annotations

from vlprompt.lazy import lazy_exports

_EXPORTS = {
    "classification_metrics": "vlprompt.engine.metrics",
    "evaluate_zero_shot": "vlprompt.engine.zero_shot",
    "extract_image_features": "vlprompt.engine.features",
    "format_results_table": "vlprompt.engine.zero_shot",
    "stream_image_features": "vlprompt.engine.features",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
