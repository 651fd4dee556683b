"""Compositional zero-shot learning (CZSL): the dataset reader, the reference evaluation protocol
(closed and open world), feasibility scores and the embedded world's study tools. The pair methods
(zero-shot, CoOp prefix, CSP, DFSP) are ordinary methods in `vlprompt.methods`."""

from vlprompt.czsl.data import CZSLDataset, CZSLItem, make_pair_files
from vlprompt.czsl.metrics import dense_metrics, summarize, summary_metrics

__all__ = ["CZSLDataset", "CZSLItem", "dense_metrics", "make_pair_files", "summarize", "summary_metrics"]
