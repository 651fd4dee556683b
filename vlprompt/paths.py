"""Where vlprompt keeps things that outlive a run: the user cache directory and atomic writes."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
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
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds.

    Nothing partial is ever left under the final name: a killed writer leaves at most a stray
    ``.tmp`` file, never a truncated checkpoint or download.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the final file normal permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
    """The JSON in `path`; a malformed file is one clear error naming it (`what` says what the file is)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise VLPromptError(f"{what + ' ' if what else ''}{path} is not valid JSON: {error}") from None
