"""The benchmarks run end to end on tiny settings (their figures come from full runs, never from tests)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end to end: excluded by `make test-fast`, run by `make test` and CI

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_bench_coop_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "coop.json"
    figures = _load("bench_coop").main(["--preset", "tiny", "--ref-steps", "2", "--json", str(out)])
    stored = json.loads(out.read_text())
    assert stored["preset"] == "tiny" and figures["speedup_shared"] > 0 and figures["speedup_plain"] > 0
    assert figures["max_loss_diff_reference_vs_plain"] < 1e-4 and figures["max_loss_diff_plain_vs_shared_whole_epoch"] < 1e-4


@pytest.mark.parametrize("shared", ["on"])
def test_bench_cocoop_memory_smoke(tmp_path, shared):
    out = tmp_path / "cocoop.json"
    figures = _load("bench_cocoop_memory").main(["--preset", "test", "--shared-prefix", shared, "--steps", "2",
                                                "--json", str(out)])
    rows = figures["rows"]
    assert [r["reference"] for r in rows] == [True, False, False]  # reference, whole batch, chunk 1
    assert all(abs(r["losses"][0] - rows[0]["losses"][0]) < 1e-5 for r in rows)  # the same first step
    assert all("speedup_per_image" in r for r in rows[1:])
    assert json.loads(out.read_text())["preset"] == "test"


def test_bench_deep_tiny(tmp_path):
    out = tmp_path / "deep.json"
    figures = _load("bench_deep").main(["--preset", "tiny", "--steps", "2", "--json", str(out)])
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"maple", "promptsrc"} and figures["rows"][0]["speedup"] > 0
    assert all(r["max_loss_diff"] < 1e-4 for r in rows.values())  # the official loop and vlprompt agree
