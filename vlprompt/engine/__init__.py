"""Engine: frozen feature extraction, metrics and evaluation (the trainer lives here too)."""

from vlprompt.engine.features import extract_image_features, stream_image_features
from vlprompt.engine.metrics import classification_metrics
from vlprompt.engine.zero_shot import evaluate_zero_shot, format_results_table

__all__ = [
    "classification_metrics",
    "evaluate_zero_shot",
    "extract_image_features",
    "format_results_table",
    "stream_image_features",
]
