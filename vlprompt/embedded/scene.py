"""Scene descriptions and their random sampling, kept apart from rasterising and captioning.

A `SceneStyle` is a distribution over scenes. The pretraining style and the shifted downstream
styles differ only in their style values, so a dataset's domain shift is explicit and tunable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from vlprompt.embedded.vocab import BACKGROUNDS, COLOUR_NAMES, COLOURS, SHAPES, SIZES, TEXTURES


@dataclass(frozen=True)
class ShapeInstance:
    """One drawn shape: geometry in pixels, colour, texture and (optional) outline width."""

    shape: str
    rgb: tuple[float, float, float]
    cx: float
    cy: float
    radius: float
    angle: float
    texture: str = "solid"
    texture_period: float = 6.0
    texture_angle: float = 0.0
    texture_phase: float = 0.0
    texture_dim: float = 0.35  # brightness of the texture's "off" cells relative to the colour
    outline: float = 0.0  # 0 = filled; > 0 = outline of about outline * 8 px / radius


@dataclass(frozen=True)
class Scene:
    """A whole picture: the named main shape plus background, clutter and noise."""

    main: ShapeInstance
    colour: str
    size: str
    background: str
    background_rgb: tuple[float, float, float]
    background_gradient: float = 0.0
    noise: float = 0.0
    distractors: tuple[ShapeInstance, ...] = ()

    @property
    def shape(self) -> str:
        return self.main.shape

    @property
    def texture(self) -> str:
        return self.main.texture


@dataclass(frozen=True)
class SceneStyle:
    """A distribution over scenes (the rendering "domain")."""

    backgrounds: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(BACKGROUNDS))
    textures: tuple[str, ...] = TEXTURES
    texture_weights: tuple[float, ...] | None = (0.55, 0.15, 0.15, 0.15)
    small_radius: tuple[float, float] = (10.0, 15.0)
    large_radius: tuple[float, float] = (19.0, 26.0)
    max_angle: float = 0.35
    position_jitter: float | None = None  # None: anywhere inside the image; else centre +- px
    colour_jitter: float = 18.0
    noise: tuple[float, float] = (0.0, 8.0)
    gradient: tuple[float, float] = (0.0, 0.3)
    texture_dim: tuple[float, float] = (0.3, 0.45)
    outline_prob: float = 0.0
    outline_width: tuple[float, float] = (0.25, 0.4)
    distractors: tuple[int, int] = (0, 0)  # inclusive range of clutter shapes
    distractor_radius: tuple[float, float] = (4.0, 7.0)
    distractor_dim: float = 0.6  # clutter colours are dimmed towards the background


# Pretraining keeps the main shape near the centre and large enough to read: a from-scratch ViT
# learns shapes in a few hundred CPU steps only when position varies little (no conv prior).
PRETRAIN_STYLE = SceneStyle(
    small_radius=(13.0, 17.0),
    large_radius=(20.0, 25.0),
    max_angle=0.1,
    position_jitter=3.0,
    texture_weights=(0.7, 0.1, 0.1, 0.1),
    noise=(0.0, 6.0),
)


def _jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float) -> tuple:
    out = np.clip(np.asarray(rgb, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 255)
    return tuple(float(x) for x in out)


def _instance(
    rng: np.random.Generator,
    style: SceneStyle,
    shape: str,
    rgb: tuple,
    radius: float,
    texture: str,
    outline: bool,
    anywhere: bool = False,
) -> ShapeInstance:
    margin = radius * 0.9
    if style.position_jitter is None or anywhere:
        cx, cy = (float(x) for x in rng.uniform(margin, 64 - margin, 2))
    else:
        lo, hi = max(margin, 32 - style.position_jitter), min(64 - margin, 32 + style.position_jitter)
        cx, cy = (float(x) for x in rng.uniform(lo, max(lo, hi), 2))
    angle = float(rng.uniform(-style.max_angle, style.max_angle))
    if shape == "arrow":  # arrows point any of four ways; other shapes stay near upright
        angle += float(rng.integers(4)) * math.pi / 2
    return ShapeInstance(
        shape=shape,
        rgb=rgb,
        cx=cx,
        cy=cy,
        radius=radius,
        angle=angle,
        texture=texture,
        texture_period=float(rng.uniform(5.0, 7.5)),
        texture_angle=float(rng.uniform(0, math.pi)),
        texture_phase=float(rng.uniform(0, 1)),
        texture_dim=float(rng.uniform(*style.texture_dim)),
        outline=float(rng.uniform(*style.outline_width)) if outline else 0.0,
    )


def sample_scene(
    rng: np.random.Generator,
    style: SceneStyle = PRETRAIN_STYLE,
    *,
    shape: str | None = None,
    colour: str | None = None,
    texture: str | None = None,
    size: str | None = None,
) -> Scene:
    """Draw one scene from `style`; fixed attributes (for class-balanced datasets) are kept."""
    fixed_texture = texture is not None
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
    if texture is None:
        w = style.texture_weights
        p = None if w is None else np.asarray(w) / np.sum(w)
        texture = style.textures[rng.choice(len(style.textures), p=p)]
    size = size or SIZES[rng.integers(len(SIZES))]
    bg_names = list(style.backgrounds)
    background = bg_names[rng.integers(len(bg_names))]
    bg_rgb = _jitter_rgb(rng, style.backgrounds[background], 10.0)
    lo, hi = style.small_radius if size == "small" else style.large_radius
    radius = float(rng.uniform(lo, hi))
    outline = bool(rng.random() < style.outline_prob)
    if outline and not fixed_texture:
        texture = "solid"  # a textured thin outline reads as dashes, not as a pattern
    main = _instance(rng, style, shape, _jitter_rgb(rng, COLOURS[colour], style.colour_jitter), radius, texture, outline)
    distractors = []
    for _ in range(int(rng.integers(style.distractors[0], style.distractors[1] + 1))):
        d_shape = SHAPES[rng.integers(len(SHAPES))]
        d_rgb = COLOURS[COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]]
        d_rgb = tuple(style.distractor_dim * np.asarray(bg_rgb) + (1 - style.distractor_dim) * np.asarray(d_rgb))
        d_rad = float(rng.uniform(*style.distractor_radius))
        distractors.append(_instance(rng, style, d_shape, d_rgb, d_rad, "solid", False, anywhere=True))
    return Scene(
        main=main,
        colour=colour,
        size=size,
        background=background,
        background_rgb=bg_rgb,
        background_gradient=float(rng.uniform(*style.gradient)),
        noise=float(rng.uniform(*style.noise)),
        distractors=tuple(distractors),
    )
