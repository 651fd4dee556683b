"""What a sweep is made of: `RunSpec`, one run to do, and `RunRecord`, one run done. The sweep
(`vlprompt.engine.sweep`) makes them and the report (`vlprompt.engine.report`) reads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: what `run_one` is asked to do."""

    method: str
    dataset: str
    shots: int
    seed: int
    protocol: str = "few-shot"

    @property
    def label(self) -> str:
        return f"{self.method}/{self.dataset}/shots{self.shots}/seed{self.seed}"


@dataclass(frozen=True)
class RunRecord:
    """A finished run: its spec, metrics, the whole result dict, where it is stored, and whether it was
    read back from an earlier sweep rather than run now."""

    spec: RunSpec
    metrics: dict[str, float]
    result: dict[str, Any]
    path: Path
    resumed: bool
