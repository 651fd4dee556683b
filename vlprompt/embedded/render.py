"""A small, fast numpy rasteriser for the embedded world's scenes (64x64 RGB, uint8).

Why numpy and not PIL drawing: one scene is a handful of vectorised mask operations on a 64x64
grid (~0.2 ms), it needs no fonts or system libraries, and it is bit-for-bit deterministic given
the scene and a numpy ``Generator`` (used only for pixel noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from vlprompt.embedded.scene import Scene, ShapeInstance

IMAGE_SIZE = 64
_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def _regular_polygon(n: int, start: float = math.pi / 2) -> np.ndarray:
    angles = start + 2 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star_polygon(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = math.pi / 2 + math.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([[-0.78, -0.78], [0.78, -0.78], [0.78, 0.78], [-0.78, 0.78]]),
    "triangle": _regular_polygon(3) * 1.1 + np.array([0.0, -0.15]),
    "star": _star_polygon(),
    "cross": np.array(
        [
            [-0.3, 1],
            [0.3, 1],
            [0.3, 0.3],
            [1, 0.3],
            [1, -0.3],
            [0.3, -0.3],
            [0.3, -1],
            [-0.3, -1],
            [-0.3, -0.3],
            [-1, -0.3],
            [-1, 0.3],
            [-0.3, 0.3],
        ]
    ),
    "diamond": np.array([[0, 1.0], [0.62, 0], [0, -1.0], [-0.62, 0]]),
    "hexagon": _regular_polygon(6, start=0.0),
    "arrow": np.array([[-1, 0.2], [0.15, 0.2], [0.15, 0.6], [1, 0], [0.15, -0.6], [0.15, -0.2], [-1, -0.2]]),
}


def _polygon_mask(poly: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def mask(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        inside = np.zeros(u.shape, dtype=bool)
        x2, y2 = poly[-1]
        for x1, y1 in poly:  # even-odd rule, one half-plane test per edge
            crosses = (y1 > v) != (y2 > v)
            x_at = (x2 - x1) * (v - y1) / (y2 - y1 + 1e-12) + x1
            inside ^= crosses & (u < x_at)
            x2, y2 = x1, y1
        return inside

    return mask


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    x, y = u * 1.15, v * 1.15 + 0.2
    return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


SHAPE_MASKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.36),
    "heart": _heart,
    **{name: _polygon_mask(poly) for name, poly in _POLYGONS.items()},
}


def shape_mask(inst: ShapeInstance) -> np.ndarray:
    """Boolean [64, 64] mask of one shape instance (filled, or its outline)."""
    dx, dy = _XX - inst.cx, -(_YY - inst.cy)  # v points up
    c, s = math.cos(inst.angle), math.sin(inst.angle)
    u = (c * dx + s * dy) / inst.radius
    v = (-s * dx + c * dy) / inst.radius
    fn = SHAPE_MASKS[inst.shape]
    mask = fn(u, v)
    if inst.outline > 0:
        k = 1.0 / max(1e-3, 1.0 - inst.outline * 8.0 / inst.radius)
        mask &= ~fn(u * k, v * k)
    return mask


def texture_mask(inst: ShapeInstance) -> np.ndarray:
    """Boolean [64, 64] mask of where the texture shows the main colour (all True for solid)."""
    p = inst.texture_period
    c, s = math.cos(inst.texture_angle), math.sin(inst.texture_angle)
    a = c * _XX + s * _YY + inst.texture_phase * p
    b = -s * _XX + c * _YY + inst.texture_phase * p
    if inst.texture == "solid":
        return np.ones(_XX.shape, dtype=bool)
    if inst.texture == "striped":
        return (a / p) % 1.0 < 0.5
    if inst.texture == "dotted":
        da, db = (a / p) % 1.0 - 0.5, (b / p) % 1.0 - 0.5
        return da * da + db * db < 0.09
    if inst.texture == "checkered":
        return (np.floor(a / (p / 2)) + np.floor(b / (p / 2))) % 2 == 0
    raise ValueError(f"unknown texture {inst.texture!r}")


def _paint(canvas: np.ndarray, inst: ShapeInstance) -> None:
    mask = shape_mask(inst)
    if not mask.any():
        return
    on = texture_mask(inst)
    rgb = np.asarray(inst.rgb, dtype=np.float32)
    off_rgb = rgb * inst.texture_dim
    colour = np.where(on[..., None], rgb, off_rgb)
    canvas[mask] = colour[mask]


def render_scene(scene: Scene, rng: np.random.Generator | None = None) -> np.ndarray:
    """Rasterise `scene` into a uint8 [64, 64, 3] array; `rng` draws pixel noise (none if None)."""
    top = np.asarray(scene.background_rgb, dtype=np.float32)
    bottom = top * (1.0 - scene.background_gradient)
    t = (_YY / IMAGE_SIZE)[..., None]
    canvas = (top * (1 - t) + bottom * t).astype(np.float32)  # fresh, writable [64, 64, 3]
    for inst in (*scene.distractors, scene.main):
        _paint(canvas, inst)
    if scene.noise > 0 and rng is not None:
        canvas += rng.normal(0.0, scene.noise, size=canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
