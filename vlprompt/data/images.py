"""Decoding one image file, with errors that name the file and where it was listed."""

from __future__ import annotations

import os

from PIL import Image, UnidentifiedImageError

from vlprompt.errors import VLPromptError


def load_image(path: str | os.PathLike, context: str | None = None) -> Image.Image:
    """Open `path` as an RGB image.

    `context` says where the path came from (e.g. ``"listed in split_zhou_OxfordPets.json"``) so a
    missing or broken file can be traced back to the split file that names it.
    """
    where = f" ({context})" if context else ""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise VLPromptError(f"image not found: {path}{where}") from None
    except IsADirectoryError:
        raise VLPromptError(f"image path is a directory, not a file: {path}{where}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VLPromptError(f"cannot decode image {path}{where}: {reason}") from None
