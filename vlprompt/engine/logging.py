"""Run output: tqdm progress, the JSON-lines metrics log and the final result file.

Progress bars only draw on a terminal (logs of batch jobs stay readable; commands that run long print
`PlainProgress` lines there instead); metrics go to
``metrics.jsonl`` one object per epoch, so a crashed or resumed run leaves a parseable record.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from vlprompt.paths import atomic_path

T = TypeVar("T")


def on_terminal() -> bool:
    """Whether progress goes to a terminal (stderr), where a redrawn bar makes sense."""
    return sys.stderr.isatty()


class PlainProgress:
    """Progress for pipes and logs: one line per call of `update`, at most every `every` seconds (the
    last one always), so `vlprompt ... | tee log` gets readable lines instead of a bar's redraws."""

    def __init__(self, desc: str, total: int, every: float = 10.0, stream: Any = None) -> None:
        self.desc, self.total, self.every = desc, total, every
        self.stream = stream
        self.started = time.perf_counter()
        self._last = -math.inf

    def update(self, done: int, detail: str = "") -> None:
        now = time.perf_counter()
        if done < self.total and now - self._last < self.every:
            return
        self._last = now
        text = f"{self.desc} {done}/{self.total}{f' {detail}' if detail else ''} [{now - self.started:.0f}s]"
        print(text, file=self.stream or sys.stderr, flush=True)


def progress_bar(
    iterable: Iterable[T], desc: str, enabled: bool | None = None, total: int | None = None, leave: bool = False
) -> Iterator[T]:
    """tqdm over `iterable`, only on a terminal (a redrawn bar in a pipe or log is noise; long loops print
    `PlainProgress` lines there instead); `enabled=False` hides it everywhere."""
    disable = enabled is False or not on_terminal()
    return iter(tqdm(iterable, desc=desc, disable=disable, total=total, leave=leave, dynamic_ncols=True))


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become strings instead of invalid JSON tokens."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> None:
    """Atomically write `data` as indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_clean(data), indent=2) + "\n", encoding="utf-8")


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended as epochs finish."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(_clean(record)) + "\n")

    def rewrite(self, records: Sequence[dict[str, Any]]) -> None:
        """Replace the log with `records` (on resume: drop lines of epochs the checkpoint lacks)."""
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(_clean(r)) + "\n" for r in records), encoding="utf-8")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
