"""Compositional zero-shot learning (CZSL): data reader, pair methods (zero-shot, CoOp prefix, CSP,
DFSP), the reference evaluation protocol (closed and open world) and training glue."""

from vlprompt.czsl import dfsp  # noqa: F401  (registers the dfsp method)
from vlprompt.czsl.data import CZSLDataset, CZSLItem, make_pair_files
from vlprompt.czsl.methods import CZSL_METHODS, PairMethod, build_czsl_method
from vlprompt.czsl.metrics import dense_metrics, summarize, summary_metrics

__all__ = [
    "CZSLDataset",
    "CZSLItem",
    "CZSL_METHODS",
    "PairMethod",
    "build_czsl_method",
    "dense_metrics",
    "make_pair_files",
    "summarize",
    "summary_metrics",
]
