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
# Ancillary chunks the fast path accepts (name -> required length, None: any up to 64 KiB). libpng reads them
# without touching the pixels and at worst warns; any other chunk (PLTE, tRNS, iCCP, ...) goes to PIL.
_PLAIN_ANCILLARY = {b"gAMA": 4, b"sRGB": 1, b"cHRM": 32, b"pHYs": 9, b"tIME": 7, b"tEXt": None}
_FILTER_TYPES = bytes(range(5))  # None, Sub, Up, Average, Paeth
_CHUNK_HEAD = struct.Struct(">I4s")
_CRC = struct.Struct(">I")


def _sound_plain_png(data: bytes, width: int, height: int) -> bool:
    """Whether libpng will decode `data` (an 8-bit RGB non-interlaced PNG of `width` x `height`) without error.

    torchvision's decode_png cannot survive a libpng error met while reading rows (a flipped byte in
    IDAT kills the process: "IDAT: incorrect data check"), so a file only reaches it after the checks
    libpng would make: every chunk's CRC32, known chunks only, one run of IDAT chunks ending in IEND,
    a zlib stream (adler32 included) that inflates to exactly the image's scanlines, and a valid
    filter type on each scanline. All of it runs in zlib's C code: a few microseconds for a 64px image.
    """
    stride = 3 * width + 1
    expected = height * stride
    # libpng refuses an IDAT chunk longer than the image could need ("chunk data is too large").
    idat_limit = expected + 6 + 5 * (expected // min(stride, 32566) + 1)
    view = memoryview(data)
    end = len(data)
    pos, idat, state = 8, [], "header"  # header -> before IDAT -> in IDAT -> after IDAT
    while True:
        if pos + 12 > end:
            return False
        length, name = _CHUNK_HEAD.unpack_from(data, pos)
        stop = pos + 8 + length
        if stop + 4 > end or zlib.crc32(view[pos + 4:stop]) != _CRC.unpack_from(data, stop)[0]:
            return False
        if state == "header":
            # IHDR (width, height, depth 8, colour type 2 checked by the caller): compression, filter, interlace 0
            if name != b"IHDR" or length != 13 or data[pos + 18:pos + 21] != b"\0\0\0":
                return False
            state = "before"
        elif name == b"IDAT":
            if state == "after" or length > idat_limit:
                return False
            idat.append(view[pos + 8:stop])
            state = "in"
        elif name == b"IEND":
            if length or not idat:
                return False
            break
        else:
            if name not in _PLAIN_ANCILLARY or length != (_PLAIN_ANCILLARY[name] or length) or length > 65536:
                return False
            if state == "in":
                state = "after"
        pos = stop + 4
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(idat[0] if len(idat) == 1 else b"".join(idat), expected + 1)
    except zlib.error:
        return False
    if len(raw) != expected or not inflater.eof or inflater.unused_data:
        return False
    return not raw[::stride].translate(None, _FILTER_TYPES)


def _read_regular_file(path: str | os.PathLike) -> bytearray | None:
    """The bytes of a regular file, read straight into a writable buffer (torch.frombuffer takes it
    without a copy or a warning); None if it cannot be read whole. Half the cost of ``open().read()``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        data = bytearray(info.st_size)
        return data if os.readv(fd, [data]) == info.st_size else None
    except OSError:
        return None
    finally:
        os.close(fd)


def decode_plain_png(path: str | os.PathLike, size: tuple[int, int]) -> torch.Tensor | None:
    """``[3, H, W]`` uint8 pixels of an 8-bit RGB PNG of exactly `size` (width, height); None otherwise.

    Lossless 8-bit RGB is the one case where torchvision's libpng decode gives the very pixels PIL
    gives, at about half PIL's cost: small images then decode at encoder speed. Any other file
    (other size, depth or colour type, not a PNG, unreadable, corrupt: see `_sound_plain_png`) returns
    None, so the caller takes the PIL path, and a corrupt file fails there with `load_image`'s error
    naming it, as it does in every other command.
    """
    data = _read_regular_file(path)
    if data is None or len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour_type = struct.unpack(">IIBB", data[16:26])
    if (width, height) != tuple(size) or depth != 8 or colour_type != 2:
        return None
    if not _sound_plain_png(data, width, height):
        return None
    from torchvision.io import decode_png

    try:
        return decode_png(torch.frombuffer(data, dtype=torch.uint8))
    except RuntimeError:
        return None
