"""A resumable sweep over methods x datasets x shots x seeds: one JSON result file per run.

The runner knows nothing about training: `run_one(spec)` does the work and returns
``{"metrics": {...}, ...}``. Each result is written atomically to
``out_dir/runs/<method>/<dataset>/shots<K>/seed<S>.json`` the moment it finishes, and a run whose file
exists is never repeated, so an interrupted sweep is resumed by calling `run_sweep` again. Unlike the
CoOp scripts, which skip a run when its *directory* exists (a crashed run then looks finished), only
a complete result counts as done.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from vlprompt.data.protocols import harmonic_mean
from vlprompt.engine.logging import PlainProgress, on_terminal
from vlprompt.engine.report import SummaryRow, aggregate, write_report
from vlprompt.engine.runs import RunRecord, RunSpec
from vlprompt.errors import VLPromptError
from vlprompt.paths import atomic_path

PROTOCOLS = ("few-shot", "base-to-new", "cross-dataset", "domain-generalisation")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class SweepGrid:
    """The cartesian product to run. shots=0 is allowed for zero-shot baselines."""

    methods: Sequence[str]
    datasets: Sequence[str]
    shots: Sequence[int] = (1, 2, 4, 8, 16)
    seeds: Sequence[int] = (1, 2, 3)
    protocol: str = "few-shot"

    def __post_init__(self) -> None:
        for key in ("methods", "datasets", "shots", "seeds"):
            values = getattr(self, key)
            if isinstance(values, (str, int)) or not values:
                raise VLPromptError(f"sweep grid: {key} must be a non-empty list, got {values!r}")
            if len(set(values)) != len(values):
                raise VLPromptError(f"sweep grid: {key} has duplicates: {list(values)!r}")
        for key in ("methods", "datasets"):
            for name in getattr(self, key):
                if not isinstance(name, str) or not _NAME.match(name):
                    raise VLPromptError(
                        f"sweep grid: {key} entry {name!r} is not a valid name "
                        "(letters, digits, '.', '_', '+', '-'; it becomes a folder name)"
                    )
        for key, low in (("shots", 0), ("seeds", None)):
            for value in getattr(self, key):
                if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                    need = "non-negative integers" if low is not None else "integers"
                    raise VLPromptError(f"sweep grid: {key} must be {need}, got {value!r}")
        if self.protocol not in PROTOCOLS:
            raise VLPromptError(f"sweep grid: unknown protocol {self.protocol!r}. Valid: {', '.join(PROTOCOLS)}")

    def specs(self) -> list[RunSpec]:
        """All runs, seeds innermost, so early results already cover every seed of a setting."""
        return [RunSpec(m, d, k, s, self.protocol) for m, d, k, s in product(self.methods, self.datasets, self.shots, self.seeds)]


@dataclass
class SweepResult:
    """Every run of the grid (new and resumed), the per-setting summary and the report files written."""

    records: list[RunRecord]
    summary: list[SummaryRow]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def ran(self) -> int:
        return sum(not r.resumed for r in self.records)

    @property
    def resumed(self) -> int:
        return sum(r.resumed for r in self.records)


def result_path(out_dir: str | Path, spec: RunSpec) -> Path:
    """``out_dir/runs/<method>/<dataset>/shots<K>/seed<S>.json``."""
    return Path(out_dir) / "runs" / spec.method / spec.dataset / f"shots{spec.shots}" / f"seed{spec.seed}.json"


def check_metrics(metrics: object, where: str) -> dict[str, float]:
    """Metrics must be a non-empty ``{name: finite number}``; base-to-new results get ``hm`` if missing."""
    if not isinstance(metrics, dict) or not metrics:
        raise VLPromptError(f"{where}: 'metrics' must be a non-empty dict of name -> number, got {metrics!r:.120}")
    for name, value in metrics.items():
        if (
            not isinstance(name, str)
            or isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise VLPromptError(f"{where}: metric {name!r} must be a finite number, got {value!r}")
    metrics = {name: float(value) for name, value in metrics.items()}
    if "base" in metrics and "new" in metrics and "hm" not in metrics:
        metrics["hm"] = harmonic_mean(metrics["base"], metrics["new"])
    return metrics


def _write_result(path: Path, spec: RunSpec, result: object, elapsed: float) -> dict[str, Any]:
    if not isinstance(result, dict) or "metrics" not in result:
        raise VLPromptError(f"run {spec.label}: run_one must return a dict with 'metrics', got {result!r:.120}")
    metrics = check_metrics(result["metrics"], f"run {spec.label}")
    stored = {**result, "spec": asdict(spec), "metrics": metrics, "elapsed_s": round(elapsed, 3)}
    try:
        text = json.dumps(stored, indent=1, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise VLPromptError(f"run {spec.label}: result is not JSON-serialisable: {error}") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return stored


def load_result(path: str | Path, spec: RunSpec | None = None) -> RunRecord:
    """Read one result file; with `spec`, fail if it belongs to a different run or protocol."""
    path = Path(path)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        found = RunSpec(**stored["spec"])
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise VLPromptError(f"result file {path} is unreadable ({error}); delete it to re-run that run") from None
    if spec is not None and found != spec:
        raise VLPromptError(
            f"result file {path} is for {found} but the sweep expects {spec}; use a different out_dir for a different protocol"
        )
    metrics = check_metrics(stored.get("metrics"), f"result file {path}")
    return RunRecord(found, metrics, stored, path, resumed=True)


def load_results(out_dir: str | Path) -> list[RunRecord]:
    """Every result file under ``out_dir/runs``, e.g. to re-report a sweep without its grid."""
    return [load_result(path) for path in sorted((Path(out_dir) / "runs").glob("*/*/shots*/seed*.json"))]


def run_sweep(
    grid: SweepGrid,
    run_one: Callable[[RunSpec], dict],
    out_dir: str | Path,
    *,
    progress: bool = True,
    report: bool = True,
) -> SweepResult:
    """Run every spec of `grid` that has no result file yet, then aggregate and write the report.

    An exception from `run_one` stops the sweep; finished runs are kept, so calling again resumes.
    With `report`, writes summary.json, summary.md and PNG plots under `out_dir` (see `report`).
    """
    out_dir = Path(out_dir)
    records: list[RunRecord] = []
    specs = grid.specs()
    # a bar on a terminal; in a pipe or log one plain line per finished run (a bar there is a mess of redraws)
    lines = PlainProgress("sweep: run", len(specs), every=0.0) if progress and not on_terminal() else None
    with tqdm(specs, desc="sweep", unit="run", disable=not progress or lines is not None) as bar:
        for done, spec in enumerate(bar, 1):
            path = result_path(out_dir, spec)
            if path.is_file():
                records.append(load_result(path, spec))
                continue
            bar.set_postfix_str(spec.label, refresh=False)
            start = time.perf_counter()
            stored = _write_result(path, spec, run_one(spec), time.perf_counter() - start)
            records.append(RunRecord(spec, stored["metrics"], stored, path, resumed=False))
            if lines is not None:
                numbers = " ".join(f"{k} {v:.2f}" for k, v in stored["metrics"].items() if isinstance(v, (int, float)))
                lines.update(done, f"{spec.label}: {numbers}")
    summary = aggregate(records)
    files = write_report(summary, out_dir) if report else {}
    return SweepResult(records, summary, files)
