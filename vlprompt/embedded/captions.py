"""Captions for embedded-world scenes, in varied phrasing, plus the words they can ever use.

Every caption names the colour and the shape, so the zero-shot prompt "a photo of a {colour}
{shape}." is in-distribution. Each caption also records which attributes it mentions: pretraining
uses that to treat captions that truthfully describe another image in the batch as positives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from vlprompt.embedded.scene import Scene
from vlprompt.embedded.vocab import BACKGROUND_NAMES, COLOUR_NAMES, SHAPES, SIZES, TEXTURES

# (template, weight). "{np}" is the noun phrase: [size] [texture] colour shape.
TEMPLATES: tuple[tuple[str, float], ...] = (
    ("a photo of a {np}.", 0.3),
    ("a {np}", 0.1),
    ("{np}", 0.1),
    ("an image of a {np}.", 0.1),
    ("a picture of a {np}.", 0.1),
    ("a drawing of a {np}.", 0.1),
    ("there is a {np}.", 0.1),
    ("a photo of the {np}.", 0.1),
)
EXTRA_WORDS = ("with", "pattern", "on", "background")


@dataclass(frozen=True)
class Caption:
    """A caption and the scene attributes it asserts (field -> value)."""

    text: str
    mentions: tuple[tuple[str, str], ...]

    def matches(self, scene: Scene) -> bool:
        """True if every attribute this caption asserts holds for `scene`."""
        values = scene_attributes(scene)
        return all(values[k] == v for k, v in self.mentions)


def scene_attributes(scene: Scene) -> dict[str, str]:
    """The nameable attributes of a scene."""
    return {
        "colour": scene.colour,
        "shape": scene.shape,
        "size": scene.size,
        "texture": scene.texture,
        "background": scene.background,
    }


def caption_scene(scene: Scene, rng: np.random.Generator) -> Caption:
    """One random caption of `scene` (always naming its colour and shape)."""
    mentions = [("colour", scene.colour), ("shape", scene.shape)]
    words = [scene.colour, scene.shape]
    suffix = ""
    if rng.random() < 0.4:
        mentions.append(("texture", scene.texture))
        if rng.random() < 0.5:
            words.insert(0, scene.texture)
        else:
            suffix = f" with a {scene.texture} pattern"
    if rng.random() < 0.3:
        mentions.append(("size", scene.size))
        words.insert(0, scene.size)
    if not suffix and rng.random() < 0.2:
        mentions.append(("background", scene.background))
        suffix = f" on a {scene.background} background"
    weights = np.array([w for _, w in TEMPLATES])
    template = TEMPLATES[rng.choice(len(TEMPLATES), p=weights / weights.sum())][0]
    text = template.format(np=" ".join(words) + suffix)
    return Caption(text=text, mentions=tuple(mentions))


def caption_words() -> list[str]:
    """Every word any caption (or the standard zero-shot prompt) can contain."""
    words: set[str] = set(EXTRA_WORDS)
    for template, _ in TEMPLATES:
        words.update(re.findall(r"[a-z]+", template.replace("{np}", "")))
    for group in (COLOUR_NAMES, SHAPES, SIZES, TEXTURES, BACKGROUND_NAMES):
        words.update(group)
    return sorted(words)
