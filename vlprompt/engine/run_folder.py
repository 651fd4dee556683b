"""One output folder per run, owned by one process: a lock, and no silent reuse of a finished run.

`claim` is called wherever a run's folder is decided (`vlprompt.tasks.base.run_folder`), inside the
`owning` context that `run_experiment` opens, so everything the run writes (split files, checkpoints,
metrics, the prompt, experiment.json) goes into the folder it locked:

- ``<folder>/.lock`` holds the owner's pid, host and start time; a second run on the folder is
  refused with one line naming the holder. A lock whose process is gone (kill -9) is taken over.
- a folder that already holds a run (its experiment.json, checkpoint, metrics log or prompt) is not
  written into unless asked: ``resume`` continues it, ``overwrite`` removes that run's files first.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from vlprompt.errors import VLPromptError

LOCK_NAME = ".lock"
# what a run writes into its folder (a run's presence is any of the files)
RUN_FILES = ("experiment.json", "result.json", "metrics.jsonl", "last.pt", "prompt.safetensors", "prompt.json")
RUN_FOLDERS = ("splits", "wds-images")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _holder(lock: Path) -> dict | None:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class RunFolder:
    """The claim of one run on its folder (see the module docstring)."""

    def __init__(self, resume: bool = False, overwrite: bool = False) -> None:
        if resume and overwrite:
            raise VLPromptError("--resume and --overwrite contradict each other: continue the run, or replace it")
        self.resume, self.overwrite = resume, overwrite
        self.path: Path | None = None

    def claim(self, path: Path) -> Path:
        path = Path(path)
        if self.path is not None:
            if path.resolve() != self.path.resolve():
                raise VLPromptError(f"one run, one folder: this run already writes to {self.path}, not {path}")
            return path
        if int(os.environ.get("RANK", "0") or 0) != 0:  # under torchrun rank 0 owns the folder
            return path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise VLPromptError(f"cannot create the run folder {path}: {error.strerror or error}") from None
        self._lock(path)
        self.path = path
        try:
            self._check_previous(path)
        except BaseException:
            self.release()
            raise
        return path

    def _lock(self, path: Path) -> None:
        lock = path / LOCK_NAME
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                holder = _holder(lock)
                if holder is None:  # being written this instant, or garbage: look again
                    time.sleep(0.05)
                    holder = _holder(lock) or {}
                pid, host = holder.get("pid"), holder.get("host")
                if isinstance(pid, int) and host == me["host"] and not _alive(pid):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(lock)  # its owner was killed: take it over
                    continue
                who = f"pid {pid} on {host}" if pid else "another process"
                raise VLPromptError(
                    f"run folder {path} is in use by {who} (since {holder.get('started', '?')}, lock {lock}); "
                    "wait for that run, or pick another output_dir (remove the lock only if that run is gone)"
                ) from None
            except OSError as error:
                raise VLPromptError(f"cannot lock the run folder {path}: {error.strerror or error}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(json.dumps(me))
            return
        raise VLPromptError(f"cannot lock the run folder {path}: its lock {lock} keeps changing")

    def _check_previous(self, path: Path) -> None:
        found = [name for name in RUN_FILES if (path / name).exists()]
        if not found or self.resume:
            return
        if not self.overwrite:
            state = "a finished run" if "experiment.json" in found else "an unfinished run"
            raise VLPromptError(
                f"output folder {path} already holds {state} ({', '.join(found)}): pass --resume to continue it, "
                "--overwrite to replace it, or pick another output_dir"
            )
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()
        for name in RUN_FOLDERS:
            shutil.rmtree(path / name, ignore_errors=True)

    def release(self) -> None:
        if self.path is None:
            return
        lock = self.path / LOCK_NAME
        holder = _holder(lock)
        if holder and holder.get("pid") == os.getpid():
            with contextlib.suppress(OSError):
                lock.unlink()
        self.path = None


_ACTIVE: contextvars.ContextVar[RunFolder | None] = contextvars.ContextVar("vlprompt_run_folder", default=None)


@contextlib.contextmanager
def owning(resume: bool = False, overwrite: bool = False) -> Iterator[RunFolder]:
    """The run in this block claims its folder when it is decided, and releases it at the end."""
    folder = RunFolder(resume, overwrite)
    token = _ACTIVE.set(folder)
    try:
        yield folder
    finally:
        _ACTIVE.reset(token)
        folder.release()


def claim(path: str | os.PathLike) -> Path:
    """`path`, claimed by the run in progress (if any: outside `owning` it is only returned)."""
    active = _ACTIVE.get()
    return active.claim(Path(path)) if active is not None else Path(path)
