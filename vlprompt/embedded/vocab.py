"""The named vocabulary of the embedded world: shapes, colours, textures, sizes, backgrounds.

One place holds every word the renderer can draw and every caption can say, so captions, datasets
and zero-shot prompts always agree on spelling and class order.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "ring",
    "diamond",
    "hexagon",
    "arrow",
)

# Name -> base RGB. Renders jitter these a little, so a colour is a region, not a point.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 30),
    "green": (40, 170, 50),
    "cyan": (40, 210, 225),
    "blue": (35, 60, 220),
    "purple": (135, 45, 190),
    "pink": (250, 130, 190),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
SIZES: tuple[str, ...] = ("small", "large")

# Name -> base RGB of the background in the pretraining style.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "dark": (25, 25, 30),
    "gray": (110, 110, 115),
    "black": (0, 0, 0),
}
BACKGROUND_NAMES: tuple[str, ...] = tuple(BACKGROUNDS)


def colour_shape_classnames() -> list[str]:
    """The 100 colour+shape class names ("red circle", ...) in the canonical colour-major order."""
    return [f"{c} {s}" for c in COLOUR_NAMES for s in SHAPES]
