"""Turning rendered scenes into model inputs, exactly as the backbone's eval transform would.

`open_clip.image_transform(64, is_train=False)` on a 64x64 RGB PIL image is Resize/CenterCrop
(identity at this size), ToTensor (uint8 / 255) and Normalize(OPENAI mean/std). Doing the same
arithmetic on a uint8 batch skips PIL round trips; a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from vlprompt.embedded.captions import Caption, caption_scene, scene_attributes
from vlprompt.embedded.render import render_scene
from vlprompt.embedded.scene import PRETRAIN_STYLE, Scene, SceneStyle, sample_scene

_MEAN = torch.tensor(OPENAI_DATASET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
_STD = torch.tensor(OPENAI_DATASET_STD, dtype=torch.float32).view(1, 3, 1, 1)


def normalize_images(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W], the same numbers as ToTensor + Normalize."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)
    return x.sub(_MEAN).div(_STD)


def render_batch(
    rng: np.random.Generator,
    n: int,
    style: SceneStyle = PRETRAIN_STYLE,
    colours: Sequence[str] | None = None,
    **fixed: str,
) -> tuple[list[Scene], np.ndarray]:
    """`n` random scenes (colours drawn from `colours` if given) and their uint8 renders."""
    scenes, images = [], []
    for _ in range(n):
        if colours is not None:
            fixed["colour"] = colours[rng.integers(len(colours))]
        scene = sample_scene(rng, style, **fixed)
        scenes.append(scene)
        images.append(render_scene(scene, rng))
    return scenes, np.stack(images)


def caption_batch(rng: np.random.Generator, scenes: list[Scene]) -> list[Caption]:
    """One random caption per scene."""
    return [caption_scene(scene, rng) for scene in scenes]


def positives_matrix(captions: list[Caption], scenes: list[Scene]) -> torch.Tensor:
    """[n_captions, n_scenes] bool: caption i truthfully describes scene j (diagonal always)."""
    fields = ("colour", "shape", "size", "texture", "background")
    said = [dict(cap.mentions) for cap in captions]
    cap_vals = np.array([[m.get(f, "") for f in fields] for m in said])
    mentioned = cap_vals != ""
    attrs = [scene_attributes(scene) for scene in scenes]
    scene_vals = np.array([[a[f] for f in fields] for a in attrs])
    agree = (cap_vals[:, None, :] == scene_vals[None, :, :]) | ~mentioned[:, None, :]
    return torch.from_numpy(agree.all(-1))
