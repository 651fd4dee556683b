"""The embedded default world: procedural scenes, a tiny CLIP pretrained on them, and datasets.

It lets vlprompt run end to end offline (demo, tests, CI): `load_world_clip_state_dict` gives the
bundled `vlprompt-tiny` weights, `write_world_datasets` writes shifted downstream datasets in the
real CoOp and CZSL on-disk formats.
"""

from vlprompt.embedded.export import WORLD_DATASETS, write_world_datasets
from vlprompt.embedded.pretrain import RECIPE_SEED, evaluate_pretraining_zero_shot
from vlprompt.embedded.weights import BUNDLED_WEIGHTS, load_world_clip_state_dict

__all__ = [
    "BUNDLED_WEIGHTS",
    "RECIPE_SEED",
    "WORLD_DATASETS",
    "evaluate_pretraining_zero_shot",
    "load_world_clip_state_dict",
    "write_world_datasets",
]
