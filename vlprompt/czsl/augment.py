"""The released CSP/DFSP training-image augmentation (``dataset.py: transform_image('train')``):
Resize + CenterCrop (the evaluation view), then RandomHorizontalFlip, RandomPerspective (torchvision
defaults: distortion 0.5, p 0.5) and RandomRotation(5 degrees), then the tensor conversion and CLIP
normalisation. Built on the backbone's own evaluation transform, so size and normalisation follow it."""

from __future__ import annotations

from collections.abc import Callable

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError


def released_augmentations() -> list[Callable]:
    from torchvision import transforms as T  # torchvision only when a CZSL run trains (not to load a config)

    return [T.RandomHorizontalFlip(), T.RandomPerspective(), T.RandomRotation(degrees=5)]


def czsl_train_transform(backbone: Backbone) -> Callable:
    """The backbone's evaluation pipeline with the released random ops inserted before ``ToTensor``."""
    from torchvision import transforms as T

    base = backbone.eval_transform
    steps = list(getattr(base, "transforms", []))
    at = next((i for i, step in enumerate(steps) if isinstance(step, T.ToTensor)), None)
    if at is None:
        raise VLPromptError(f"{backbone.identity.name}: its evaluation transform has no ToTensor step to put the "
                            "CZSL augmentation before; train with protocol.augment: false")
    return T.Compose(steps[:at] + released_augmentations() + steps[at:])
