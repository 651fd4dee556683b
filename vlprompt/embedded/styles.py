"""Downstream rendering styles: the deliberate domain shift away from `PRETRAIN_STYLE`.

The shift must leave the image features informative (so that a few labelled images can teach
something) while moving them away from the hand-written prompts (so that zero-shot is clearly
imperfect). Shifts that destroy the tiny CLIP's shape features (outlines, clutter, new
backgrounds: `SHIFTED_STYLE`) leave nothing to learn: a 16-shot linear probe there is no better
than zero-shot. Two shifts that do leave something to learn, measured with the bundled model:

- small shapes (radius 9-15 px instead of 10-26): shapes 46% zero-shot, 62% 16-shot linear probe;
- a warm colour cast on the whole image (RGB x (1.25, 1.0, 0.6)): colours 66% vs 76%.
"""

from __future__ import annotations

from dataclasses import replace

from vlprompt.embedded.scene import PRETRAIN_STYLE, SceneStyle

SHIFT_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light": (200, 200, 190),
    "navy": (20, 30, 80),
    "olive": (90, 95, 40),
    "slate": (70, 80, 95),
}

# A harsh shift (kept for robustness studies): features lose the shape, prompts cannot recover it.
SHIFTED_STYLE = SceneStyle(
    backgrounds=SHIFT_BACKGROUNDS,
    small_radius=(13.0, 17.0),
    large_radius=(20.0, 25.0),
    position_jitter=4.0,
    max_angle=0.2,
    texture_weights=(0.4, 0.2, 0.2, 0.2),
    noise=(4.0, 12.0),
    gradient=(0.0, 0.4),
    outline_prob=0.2,
    distractors=(0, 2),
    distractor_radius=(3.0, 6.0),
    distractor_dim=0.6,
)

SMALL_STYLE = replace(PRETRAIN_STYLE, small_radius=(9.0, 12.0), large_radius=(12.0, 15.0))

WARM_TINT: tuple[float, float, float] = (1.25, 1.0, 0.6)

DATASET_STYLES: dict[str, SceneStyle] = {
    "world_shapes": SMALL_STYLE,
    "world_textures": PRETRAIN_STYLE,  # colour classes under a colour cast (see DATASET_TINTS)
    "world_colored_shapes": SMALL_STYLE,
    "world_czsl": SMALL_STYLE,
}

# Per-dataset colour cast applied to the rendered image (None: none).
DATASET_TINTS: dict[str, tuple[float, float, float] | None] = {
    "world_shapes": None,
    "world_textures": WARM_TINT,
    "world_colored_shapes": None,
    "world_czsl": None,
}


def apply_tint(image, tint: tuple[float, float, float] | None):
    """Multiply RGB channels (uint8 in, uint8 out): a global illuminant change."""
    if tint is None:
        return image
    import numpy as np

    return np.clip(image.astype(np.float32) * np.asarray(tint, dtype=np.float32), 0, 255).astype(np.uint8)
