"""Downstream rendering styles: the deliberate domain shift away from `PRETRAIN_STYLE`.

Downstream images look different from what the world CLIP saw in pretraining (light and coloured
backgrounds, outlines instead of fills, dim clutter shapes, stronger noise), so that zero-shot
CLIP is clearly imperfect and prompt learning has something to learn. The values were tuned until
zero-shot top-1 of the bundled model on each dataset fell between ~25% and ~85%.
"""

from __future__ import annotations

from dataclasses import replace

from vlprompt.embedded.scene import SceneStyle

SHIFT_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light": (200, 200, 190),
    "navy": (20, 30, 80),
    "olive": (90, 95, 40),
    "slate": (70, 80, 95),
}

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

# Per-dataset styles (all start from the same shift; kept separate so each can be tuned alone).
DATASET_STYLES: dict[str, SceneStyle] = {
    "world_shapes": SHIFTED_STYLE,
    # Always patterned (never solid or outlined): the colour must be read through the texture.
    "world_textures": replace(SHIFTED_STYLE, outline_prob=0.0, texture_weights=(0.0, 1.0, 1.0, 1.0)),
    "world_colored_shapes": SHIFTED_STYLE,
    "world_czsl": SHIFTED_STYLE,
}
