"""Compositional zero-shot learning (CZSL): the dataset reader, the reference evaluation protocol
(closed and open world), feasibility scores and the embedded world's study tools. The pair methods
(zero-shot, CoOp prefix, CSP, DFSP) are ordinary methods in `vlprompt.methods`.

The names below load on first use (`vlprompt.lazy`): ``import vlprompt.czsl`` and the study aggregator
(`vlprompt.czsl.study`) stay torch-free."""

from vlprompt.lazy import lazy_exports

_EXPORTS = {
    "CZSLDataset": "vlprompt.czsl.data",
    "CZSLItem": "vlprompt.czsl.data",
    "make_pair_files": "vlprompt.czsl.data",
    "dense_metrics": "vlprompt.czsl.metrics",
    "summarize": "vlprompt.czsl.metrics",
    "summary_metrics": "vlprompt.czsl.metrics",
    "open_world_protocol": "vlprompt.czsl.protocol",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
