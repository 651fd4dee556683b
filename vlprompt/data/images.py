"""Decoding one image file, with errors that name the file and where it was listed."""

from __future__ import annotations

import os
import stat
import struct
import zlib

import torch
from PIL import Image, UnidentifiedImageError

from vlprompt.errors import VLPromptError


def unwrap_worker_message(message: str) -> str:
    """The original message of an error that a DataLoader worker raised, as the main process gets it.

    torch re-raises a worker's exception by calling its class on the worker's formatted traceback
    (``ExceptionWrapper.reraise``: "Caught X in DataLoader worker process 0. Original Traceback ...");
    the message is its last line, after the class name. Any other message is returned as it is.
    """
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:
        last = message.rstrip().rsplit("\n", 1)[-1]  # "vlprompt.data.images.ImageDecodeError: <message>"
        return last.partition(": ")[2] or message
    return message


class ImageDecodeError(VLPromptError):
    """An image file that is missing or cannot be decoded; the message names it.

    Raised in a DataLoader worker process, it reaches the main process rebuilt from the worker's
    traceback; the constructor keeps only the original message (`unwrap_worker_message`), so
    ``--workers N`` fails with the same one line as loading in the main process.
    """

    def __init__(self, message: str) -> None:
        super().__init__(unwrap_worker_message(message))


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
        raise ImageDecodeError(f"image not found: {path}{where}") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"image path is a directory, not a file: {path}{where}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ImageDecodeError(f"cannot decode image {path}{where}: {reason}") from None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary chunks the fast path passes over (name -> required length; None: any, up to 64 KiB): PIL reads
# them without touching the pixels or failing. A file with any other chunk (PLTE, tRNS, iCCP, ...) takes
# the PIL path.
_PLAIN_ANCILLARY = {b"gAMA": 4, b"sRGB": 1, b"cHRM": 32, b"pHYs": 9, b"tIME": 7, b"tEXt": None}
_CHUNK_HEAD = struct.Struct(">I4s")
_CRC = struct.Struct(">I")


def _plain_png_stream(data: bytes) -> bytes | memoryview | None:
    """The zlib stream (the IDAT chunks' data) of a plain PNG; None when anything is unusual.

    Plain: IHDR first (compression, filter, interlace 0), then only `_PLAIN_ANCILLARY` chunks and one
    run of IDAT chunks, then IEND; every chunk inside the file, and the CRC of every chunk but IDAT
    right (PIL checks those CRCs, not IDAT's). Anything else returns None, and PIL then decides.
    """
    view = memoryview(data)
    end = len(data)
    pos, idat, state = 8, [], "before"  # before IDAT -> in IDAT -> after IDAT
    while True:
        if pos + 12 > end:
            return None
        length, name = _CHUNK_HEAD.unpack_from(data, pos)
        stop = pos + 8 + length
        if stop + 4 > end:
            return None
        if name == b"IDAT":
            if state == "after":
                return None
            idat.append(view[pos + 8:stop])
            state = "in"
        elif zlib.crc32(view[pos + 4:stop]) != _CRC.unpack_from(data, stop)[0]:
            return None
        elif pos == 8:  # IHDR: size, depth and colour type checked by the caller
            if name != b"IHDR" or length != 13 or data[26:29] != b"\0\0\0":
                return None
        elif name == b"IEND":
            break
        elif name not in _PLAIN_ANCILLARY or length != (_PLAIN_ANCILLARY[name] or length) or length > 65536:
            return None
        elif state == "in":
            state = "after"
        pos = stop + 4
    if not idat:
        return None
    return idat[0] if len(idat) == 1 else b"".join(idat)


def _read_regular_file(path: str | os.PathLike) -> bytes | None:
    """The bytes of a regular file; None if it cannot be read whole (or is a FIFO, a device...)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        data = os.read(fd, info.st_size)
        return data if len(data) == info.st_size else None
    except OSError:
        return None
    finally:
        os.close(fd)


def decode_plain_png(path: str | os.PathLike, size: tuple[int, int]) -> torch.Tensor | None:
    """``[3, H, W]`` uint8 pixels of a plain 8-bit RGB PNG of exactly `size` (width, height); None otherwise.

    The pixel data goes straight to PIL's own PNG decoder (zlib and the PNG row filters, in C), without
    the per-file work of ``Image.open`` and ``convert``: the very pixels `load_image` gives, at about
    half its cost for small images, so they decode at encoder speed. A decoder error is a Python
    exception, never a crash (torchvision's libpng ``decode_png``, used here before, killed the process
    on a flipped byte in the pixel data: libpng "IDAT: incorrect data check").

    Any other file (other size, depth, colour type or chunks, not a PNG, unreadable, corrupt) returns
    None: the caller takes the PIL path, where a corrupt file fails with `load_image`'s one line
    naming it, as in every other command.
    """
    data = _read_regular_file(path)
    if data is None or len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour_type = struct.unpack_from(">IIBB", data, 16)
    if (width, height) != tuple(size) or depth != 8 or colour_type != 2:
        return None
    stream = _plain_png_stream(data)
    if stream is None:
        return None
    try:
        image = Image.frombytes("RGB", (width, height), stream, "zip", "RGB")
    except (ValueError, OSError, MemoryError):  # broken or short zlib stream, bad row filter
        return None
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(height, width, 3).permute(2, 0, 1)
