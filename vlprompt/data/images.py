"""Decoding one image file, with errors that name the file and where it was listed."""

from __future__ import annotations

import os
import struct

import torch
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_plain_png(path: str | os.PathLike, size: tuple[int, int]) -> torch.Tensor | None:
    """``[3, H, W]`` uint8 pixels of an 8-bit RGB PNG of exactly `size` (width, height); None otherwise.

    Lossless 8-bit RGB is the one case where torchvision's libpng decode gives the very pixels PIL
    gives, at about half PIL's cost: small images then decode at encoder speed. Any other file
    (other size, depth or colour type, not a PNG, unreadable) returns None, so the caller takes the
    PIL path and its errors.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    if (width, height) != tuple(size) or depth != 8 or colour_type != 2:
        return None
    from torchvision.io import decode_png

    try:
        return decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    except RuntimeError:
        return None
