"""Verified downloads: sha256-checked, atomic, retried and resumed (HTTP Range), offline-aware.

A download goes to ``.<name>.part`` beside its destination and is renamed into place only after
its sha256 matched, so nothing partial or unverified ever sits under the final name. A dropped
connection is retried with a ``Range`` request for the missing bytes (or from scratch when the
server ignores ranges); a checksum mismatch deletes the partial file and fails this source.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import vlprompt
from vlprompt.errors import VLPromptError
from vlprompt.hashing import file_sha256
from vlprompt.network import OFFLINE_ENVS, offline_reason  # noqa: F401  (one offline rule; re-exported)
from vlprompt.paths import atomic_path

if TYPE_CHECKING:
    from tqdm import tqdm

PROGRESS_MIN_BYTES = 1 << 20  # progress bars only for files of a megabyte or more (or of unknown size)
_RANGE_TOTAL = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class DownloadError(VLPromptError):
    """A source could not deliver the file; the next source may."""


class SourceNotFound(DownloadError):
    """The source answered that the file is not there (HTTP 4xx): no point retrying it."""


class ChecksumError(DownloadError):
    """The bytes arrived but their sha256 is not the expected one; nothing was kept."""


def is_offline() -> bool:
    return offline_reason() is not None


def verify_file(path: str | os.PathLike, sha256: str, size: int | None = None) -> bool:
    path = Path(path)
    if not path.is_file() or (size is not None and path.stat().st_size != size):
        return False
    return file_sha256(path) == sha256.lower()


def _progress(total: int | None, initial: int, desc: str, progress: bool) -> tqdm:
    from tqdm.auto import tqdm  # ~50 ms: only a transfer needs it, not reading the zoo registry (`vlprompt zoo list`)

    show = progress and sys.stderr.isatty() and (total is None or total >= PROGRESS_MIN_BYTES)
    return tqdm(
        total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not show, leave=False
    )


def _total_size(response: http.client.HTTPResponse, have: int, resumed: bool) -> int | None:
    if resumed:
        match = _RANGE_TOTAL.match(response.headers.get("Content-Range", ""))
        if match and match.group(3) != "*":
            return int(match.group(3))
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (have if resumed else 0)


def _transfer(url: str, part: Path, size: int | None, timeout: float, progress: bool, chunk_size: int) -> None:
    """One attempt: append the missing bytes to `part` (or rewrite it). Raises on any failure."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:
        part.unlink()
        have = 0
    if size is not None and have == size:
        return  # already complete: verify it
    headers = {"User-Agent": f"vlprompt/{vlprompt.__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to send: the partial file may be complete
            return
        if 400 <= error.code < 500:
            raise SourceNotFound(f"HTTP {error.code} {error.reason}") from None
        raise
    with response:
        resumed = bool(have) and response.status == 206
        if not resumed:
            have = 0  # the server ignored the range (or there was none): start over
        total = _total_size(response, have, resumed)
        with open(part, "ab" if resumed else "wb") as handle, _progress(total, have, part.name[1:-5], progress) as bar:
            while chunk := response.read(chunk_size):
                handle.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    expected = total if total is not None else size
    if expected is not None and got < expected:
        raise ConnectionError(f"connection closed after {got} of {expected} bytes")


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """One writer per destination across processes (e.g. every DDP rank fetching the same entry)."""
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; the atomic rename still protects the final name
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download_url(
    url: str,
    dest: str | os.PathLike,
    sha256: str,
    size: int | None = None,
    *,
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 30.0,
    progress: bool = True,
    chunk_size: int = 1 << 16,
) -> Path:
    """Fetch `url` into `dest` if and only if its sha256 matches; retries and resumes broken transfers.

    Raises `SourceNotFound` (4xx), `ChecksumError` (wrong bytes; nothing kept) or `DownloadError`
    (still failing after `retries` retries). The partial file of a broken transfer is kept as
    ``.<name>.part`` so that a later call resumes it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.with_name(f".{dest.name}.lock")):
        if verify_file(dest, sha256.lower(), size):  # another process finished it while we waited
            return dest
        return _download_locked(url, dest, sha256.lower(), size, retries, backoff, timeout, progress, chunk_size)


def _download_locked(
    url: str, dest: Path, sha256: str, size: int | None, retries: int, backoff: float, timeout: float, progress: bool,
    chunk_size: int,
) -> Path:
    part = dest.with_name(f".{dest.name}.part")
    last: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        resumed = part.exists() and part.stat().st_size > 0
        try:
            _transfer(url, part, size, timeout, progress, chunk_size)
        except SourceNotFound:
            raise
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            last = error
            continue
        if verify_file(part, sha256):
            os.replace(part, dest)
            return dest
        part.unlink(missing_ok=True)
        if resumed:  # the old partial bytes may be the bad ones: one more go from scratch
            last = ChecksumError("sha256 mismatch after resuming")
            continue
        raise ChecksumError(f"sha256 mismatch: expected {sha256[:16]}..., the file was rejected")
    reason = getattr(last, "reason", None) or last
    raise DownloadError(f"failed after {retries + 1} attempts: {reason}")


def copy_verified(src: str | os.PathLike, dest: str | os.PathLike, sha256: str) -> Path:
    """Copy a local file into place atomically, only if its sha256 matches."""
    if not verify_file(src, sha256):
        raise ChecksumError(f"sha256 mismatch for {src}: expected {sha256[:16]}...")
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)
