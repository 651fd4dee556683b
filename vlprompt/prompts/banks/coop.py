"""Template lists of the CoOp release, as data.

Sources (attribution): CoOp's ``trainers/zsclip.py`` (``CUSTOM_TEMPLATES``) and
``trainers/imagenet_templates.py`` (``IMAGENET_TEMPLATES_SELECT``), https://github.com/KaiyangZhou/CoOp.
"""

from __future__ import annotations

# CoOp's single template per dataset (trainers/zsclip.py), keyed by vlprompt's dataset names.
COOP_TEMPLATES: dict[str, str] = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
}

# CoOp's 7-template subset (IMAGENET_TEMPLATES_SELECT), used by its ZeroshotCLIP2 ensemble.
IMAGENET_SELECT_7: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
