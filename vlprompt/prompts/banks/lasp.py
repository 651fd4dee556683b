"""Template lists of the LASP and KgCoOp releases, as data.

Sources (attribution):
- ``LASP_35``: the ``LASP_PROMPTS`` list of every released LASP config (Bulat & Tzimiropoulos, CVPR'23;
  https://github.com/1adrianb/lasp, MIT, commit 5b1e8d98, ``configs/LASP/*.yaml``), in its order. It has
  35 entries, 34 unique: "a bad photo of the {}." appears twice, kept for exact reproduction
  (``LASP_34`` is the de-duplicated list). The strings come from CoOp's per-dataset templates
  (5), CoOp's ``IMAGENET_TEMPLATES_SELECT`` (7) and CLIP's 80 ImageNet templates (23).
- ``KGCOOP_TEMPLATES``: KgCoOp's per-dataset template (https://github.com/htyao89/KgCoOp,
  ``trainers/kgcoop.py`` ``CUSTOM_TEMPLATES``); equal to CoOp's except DTD.
"""

from __future__ import annotations

from vlprompt.prompts.banks.coop import IMAGENET_SELECT_7

LASP_35: tuple[str, ...] = (
    "a photo of a {}, a type of flower.",
    "a photo of a person doing {}.",
    "a centered satellite photo of {}.",
    "a photo of a {}, a type of aircraft.",
    "{} texture.",
    *IMAGENET_SELECT_7,  # CoOp's IMAGENET_TEMPLATES_SELECT, in its order
    "a photo of a {}.",
    "a photo of many {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a pixelated photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a close-up photo of the {}.",
    "a low resolution photo of a {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
)

LASP_34: tuple[str, ...] = tuple(dict.fromkeys(LASP_35))

KGCOOP_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "a photo of a {}, a type of texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
}
