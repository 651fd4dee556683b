"""The embedded default world: procedural scenes, a tiny CLIP pretrained on them, and datasets.

It lets vlprompt run end to end offline (demo, tests, CI): `load_world_clip_state_dict` gives the
bundled `vlprompt-tiny` weights, `write_world_datasets` writes shifted downstream datasets in the
real CoOp and CZSL on-disk formats. The names are imported lazily (PEP 562): writing the datasets
needs neither open_clip nor the pretraining code.
"""

from __future__ import annotations

from vlprompt.lazy import lazy_exports

_EXPORTS = {
    "BUNDLED_WEIGHTS": "vlprompt.embedded.weights",
    "RECIPE_SEED": "vlprompt.embedded.pretrain",
    "WORLD_DATASETS": "vlprompt.embedded.export",
    "evaluate_pretraining_zero_shot": "vlprompt.embedded.pretrain",
    "load_world_clip_state_dict": "vlprompt.embedded.weights",
    "write_world_datasets": "vlprompt.embedded.export",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
