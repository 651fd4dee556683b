"""Where vlprompt keeps things that outlive a run: the user cache directory and atomic writes."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from vlprompt.errors import VLPromptError

CACHE_ENV = "VLPROMPT_CACHE"


def cache_dir(*parts: str) -> Path:
    """The user cache dir (``$VLPROMPT_CACHE`` or ``~/.cache/vlprompt``), created on demand."""
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "vlprompt"
    )
    path = Path(root).joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # a file in the way, no permission, a read-only file system
        raise VLPromptError(
            f"cannot use the cache folder {path}: {error.strerror or error} (set ${CACHE_ENV} to a writable folder)"
        ) from None
    return path


# Errors of writing a file that are about the file system, not the program: one clear line naming the file.
# EFBIG: the file size limit (ulimit -f) is a disk-full seen by one process.
WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}
)
TEMP_SUFFIX = ".tmp"
# atomic_path's temporaries: ".<final name>.<8 random chars of tempfile's alphabet>.tmp"
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp\Z")
STALE_TEMP_AGE = 30 * 60  # seconds untouched after which a temporary is taken for a killed writer's
_swept_folders: set[str] = set()
_MAX_LINKS = 40


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (changing it, even for an
    instant, would give files that other threads create meanwhile the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def clean_stale_temps(folder: str | os.PathLike, older_than: float = STALE_TEMP_AGE) -> list[Path]:
    """Remove `atomic_path` temporaries in `folder` untouched for `older_than` seconds (a killed
    writer's leftovers; a live writer's temporary is younger). Returns what was removed."""
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.endswith(TEMP_SUFFIX) or not TEMP_NAME.match(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat(follow_symlinks=False).st_mtime > older_than:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # gone meanwhile, or not ours to remove
    return removed


def _write_target(final: Path) -> tuple[Path, bool]:
    """(the path to write, whether to write it in place) for `final`.

    Symlinks are followed to the file they name, so the link stays a link. A device, FIFO or socket,
    and a descriptor reached through ``/proc`` or ``/dev/fd`` (``/dev/stdout``), are written in place:
    renaming a file over them would replace the node (``/dev/full`` turned into a regular file) or
    cut the link to whoever holds the descriptor.
    """
    path = final
    for _ in range(_MAX_LINKS):
        if str(path).startswith(("/proc/", "/dev/fd/")):
            return final, True
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return path, False  # absent (or the missing target of a dangling link): created
        except OSError as error:
            raise VLPromptError(f"cannot write {final}: {error.strerror or error}") from None
        if not stat.S_ISLNK(info.st_mode):
            break
        path = Path(os.path.normpath(path.parent / os.readlink(path)))
    else:
        raise VLPromptError(f"cannot write {final}: too many levels of symbolic links")
    if stat.S_ISREG(info.st_mode):
        return path, False
    if stat.S_ISDIR(info.st_mode):
        raise VLPromptError(f"cannot write {final}: it is a directory")
    return final, True


def _write_error(final: Path, target: Path, error: OSError) -> VLPromptError:
    where = f"{final} (-> {target})" if target != final else str(final)
    return VLPromptError(f"cannot write {where}: {error.strerror or error}")


def _concerns(error: OSError, paths: tuple[Path, ...]) -> bool:
    """Whether an OSError raised while writing is about the file being written (a write error
    carries no file name; one naming another file is about that file, and is left as it is)."""
    if error.errno not in WRITE_ERRNOS:
        return False
    return error.filename is None or any(os.fspath(error.filename) == os.fspath(p) for p in paths)


def _prepare_write(final: Path) -> tuple[Path, bool]:
    """Create `final`'s folder and resolve what to write (`_write_target`); a failure is one line naming `final`."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(final, final, error) from None
    return _write_target(final)


def _make_temp(final: Path, target: Path) -> Path:
    """An empty ``.<name>.XXXXXXXX.tmp`` beside `target` (the name `clean_stale_temps` recognises)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    except OSError as error:
        raise _write_error(final, target, error) from None
    os.close(fd)
    return Path(tmp)


def check_writable(final: str | os.PathLike) -> None:
    """Fail now, with `atomic_path`'s one line, if `final` could not be written later (a read-only or
    forbidden folder, a directory in the way), so that no work is done for results that would be lost."""
    final = Path(final)
    target, in_place = _prepare_write(final)
    if in_place:  # a device or FIFO: opened when written (opening a FIFO now would block)
        return
    os.unlink(_make_temp(final, target))


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds.

    Nothing partial is ever left under the final name: a failed block removes the temporary, a
    killed writer leaves at most a stray ``.<name>.XXXXXXXX.tmp`` that `clean_stale_temps` removes
    later (the first atomic write to a folder in a process sweeps it).

    - a symlink is followed: its target is replaced atomically and the link is kept;
    - a device, FIFO or descriptor (``/dev/null``, ``/dev/stdout``, a named pipe) is yielded as is and
      written in place: no temporary, no rename;
    - the file gets the mode a plain ``open(final, "w")`` would give: an existing file keeps its
      mode, a new one gets ``0o666 & ~umask`` (mkstemp and safetensors make 0600 files);
    - a full disk, a file size limit, a read-only or forbidden folder is one `VLPromptError` naming
      `final`.
    """
    final = Path(final)
    target, in_place = _prepare_write(final)
    if in_place:
        try:
            yield final
        except OSError as error:
            if _concerns(error, (final,)):
                raise _write_error(final, final, error) from None
            raise
        return
    folder = target.parent
    if str(folder) not in _swept_folders:
        _swept_folders.add(str(folder))
        clean_stale_temps(folder)
    try:
        existing = os.stat(target)
        mode = stat.S_IMODE(existing.st_mode)
    except OSError:
        mode = 0o666 & ~current_umask()
    tmp_path = _make_temp(final, target)
    try:
        try:
            yield tmp_path
        except OSError as error:
            if _concerns(error, (tmp_path, final, target)):
                raise _write_error(final, target, error) from None
            raise
        try:
            os.chmod(tmp_path, mode)
            os.replace(tmp_path, target)
        except OSError as error:
            raise _write_error(final, target, error) from None
    finally:
        with contextlib.suppress(OSError):  # already renamed, or the error at hand says more
            os.unlink(tmp_path)


SOURCE_ROOT = Path(__file__).resolve().parents[1]
PACKAGED_CONFIGS = "_configs"  # a wheel ships the repository's configs/ as vlprompt/_configs (see pyproject.toml)


def config_root() -> Path:
    """The shipped YAML configs: the source tree's ``configs/`` (checkouts, editable installs), else the
    copy a wheel installs inside the package, so both kinds of install know the same configs.

    The source tree is recognised by its ``pyproject.toml``, so a stray ``configs/`` folder next to an
    installed package in site-packages is never mistaken for it.
    """
    if (SOURCE_ROOT / "pyproject.toml").is_file() and (SOURCE_ROOT / "configs").is_dir():
        return SOURCE_ROOT / "configs"
    return Path(str(resources.files("vlprompt") / PACKAGED_CONFIGS))


def read_json(path: str | os.PathLike, what: str = "") -> Any:
    """The JSON in `path`; a missing or malformed file is one clear error naming it (`what` says what the
    file is)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VLPromptError(f"{what or 'JSON file'} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VLPromptError(f"{what + ' ' if what else ''}{path} is not valid JSON: {error}") from None
