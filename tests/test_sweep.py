"""Sweep runner and report: result files, resume, exact aggregation, markdown and plots."""

from __future__ import annotations

import json

import pytest

from vlprompt.engine.report import aggregate, markdown_tables, stats
from vlprompt.engine.sweep import RunSpec, SweepGrid, load_results, result_path, run_sweep
from vlprompt.errors import VLPromptError

# hand-made top1 per (method, dataset, shots): one value per seed 1, 2, 3
TOP1 = {
    ("coop", "pets", 1): [80.0, 82.0, 84.0],  # mean 82, sample std 2
    ("coop", "pets", 4): [85.0, 85.0, 85.0],  # std 0
    ("coop", "dtd", 1): [40.0, 43.0, 46.0],  # mean 43, std 3
    ("coop", "dtd", 4): [50.0, 51.0, 52.0],
    ("zs", "pets", 1): [70.0, 70.0, 70.0],
    ("zs", "pets", 4): [70.0, 70.0, 70.0],
    ("zs", "dtd", 1): [30.0, 31.0, 32.0],
    ("zs", "dtd", 4): [30.0, 31.0, 32.0],
}
GRID = SweepGrid(methods=["coop", "zs"], datasets=["pets", "dtd"], shots=[1, 4], seeds=[1, 2, 3])


def fake_run(spec: RunSpec) -> dict:
    return {"metrics": {"top1": TOP1[spec.method, spec.dataset, spec.shots][spec.seed - 1]}, "note": "fake"}


def test_result_files_and_resume(tmp_path):
    calls = []

    def first(spec):
        calls.append(spec)
        if spec == RunSpec("zs", "pets", 4, 2):
            raise RuntimeError("interrupted")
        return fake_run(spec)

    with pytest.raises(RuntimeError, match="interrupted"):
        run_sweep(GRID, first, tmp_path, progress=False)
    done = len(calls) - 1
    path = tmp_path / "runs" / "coop" / "pets" / "shots1" / "seed2.json"
    stored = json.loads(path.read_text())
    assert stored["metrics"] == {"top1": 82.0} and stored["note"] == "fake"
    assert stored["spec"] == {"method": "coop", "dataset": "pets", "shots": 1, "seed": 2, "protocol": "few-shot"}
    assert len(list((tmp_path / "runs").rglob("seed*.json"))) == done

    finished = {spec for spec in calls[:-1]}

    def second(spec):
        assert spec not in finished, f"{spec} was already done"
        return fake_run(spec)

    result = run_sweep(GRID, second, tmp_path, progress=False)
    assert result.resumed == done and result.ran == 24 - done
    third = run_sweep(GRID, lambda spec: pytest.fail("nothing left to run"), tmp_path, progress=False)
    assert third.ran == 0 and third.resumed == 24
    assert len(load_results(tmp_path)) == 24


def test_aggregation_exact(tmp_path):
    result = run_sweep(GRID, fake_run, tmp_path, progress=False)
    rows = {(r.method, r.dataset, r.shots): r for r in result.summary}
    assert len(rows) == 8
    assert rows["coop", "pets", 1].metrics["top1"] == stats([80.0, 82.0, 84.0])
    assert (rows["coop", "pets", 1].metrics["top1"].mean, rows["coop", "pets", 1].metrics["top1"].std) == (82.0, 2.0)
    assert (rows["coop", "dtd", 1].metrics["top1"].mean, rows["coop", "dtd", 1].metrics["top1"].std) == (43.0, 3.0)
    assert rows["coop", "pets", 4].metrics["top1"].std == 0.0
    assert rows["coop", "pets", 1].seeds == [1, 2, 3] and rows["coop", "pets", 1].metrics["top1"].n == 3
    assert stats([5.0]).std == 0.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    entry = next(e for e in summary["rows"] if (e["method"], e["dataset"], e["shots"]) == ("coop", "dtd", 1))
    assert entry["metrics"]["top1"] == {"mean": 43.0, "std": 3.0, "n": 3}


def test_markdown_table(tmp_path):
    result = run_sweep(GRID, fake_run, tmp_path, progress=False)
    md = (tmp_path / "summary.md").read_text()
    assert md.rstrip("\n") == markdown_tables(result.summary).rstrip("\n")
    assert "## few-shot: top1" in md
    assert "| method | pets / 1-shot | pets / 4-shot | dtd / 1-shot | dtd / 4-shot |" in md
    assert "| coop | 82.00 ± 2.00 | 85.00 ± 0.00 | 43.00 ± 3.00 | 51.00 ± 1.00 |" in md
    assert "| zs | 70.00 ± 0.00 | 70.00 ± 0.00 | 31.00 ± 1.00 | 31.00 ± 1.00 |" in md


def test_plots_written(tmp_path):
    result = run_sweep(GRID, fake_run, tmp_path, progress=False)
    png = result.files["accuracy_vs_shots"]
    assert png == tmp_path / "accuracy_vs_shots.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert "base_new" not in result.files


def test_base_to_new_sweep(tmp_path):
    values = {1: (80.0, 60.0), 2: (82.0, 62.0)}
    grid = SweepGrid(["coop", "cocoop"], ["pets", "dtd", "eurosat"], shots=[16], seeds=[1, 2], protocol="base-to-new")

    def run(spec):
        base, new = values[spec.seed]
        return {"metrics": {"base": base, "new": new}}  # hm filled in by the runner

    result = run_sweep(grid, run, tmp_path, progress=False)
    stored = json.loads(result_path(tmp_path, RunSpec("coop", "pets", 16, 1, "base-to-new")).read_text())
    assert stored["metrics"]["hm"] == pytest.approx(2 * 80 * 60 / 140)
    row = result.summary[0]
    assert row.metrics["base"].mean == 81.0 and row.metrics["new"].mean == 61.0
    assert row.hm_of_means == pytest.approx(2 * 81 * 61 / 142)
    md = (tmp_path / "summary.md").read_text()
    assert "## base-to-new: base" in md and "## base-to-new: new" in md and "## base-to-new: hm" in md
    png = result.files["base_new"]
    assert png.is_file() and png.stat().st_size > 1000
    assert "accuracy_vs_shots" not in result.files
    json_rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert json_rows[0]["hm_of_means"] == pytest.approx(2 * 81 * 61 / 142)
    # the same out_dir cannot silently mix protocols
    with pytest.raises(VLPromptError, match="different out_dir"):
        run_sweep(SweepGrid(["coop"], ["pets"], shots=[16], seeds=[1]), run, tmp_path, progress=False, report=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"methods": []}, "methods must be a non-empty list"),
        ({"methods": ["co/op"]}, "not a valid name"),
        ({"shots": [-1]}, "non-negative integers"),
        ({"seeds": [1, 1]}, "duplicates"),
        ({"protocol": "b2n"}, "Valid: few-shot, base-to-new"),
    ],
)
def test_grid_errors(kwargs, match):
    args = {"methods": ["coop"], "datasets": ["pets"], "shots": [1], "seeds": [1], **kwargs}
    with pytest.raises(VLPromptError, match=match):
        SweepGrid(**args)


@pytest.mark.parametrize(
    "returned, match",
    [({"top1": 1.0}, "must return a dict with 'metrics'"), ({"metrics": {"top1": float("nan")}}, "finite number")],
)
def test_bad_run_one_result(tmp_path, returned, match):
    grid = SweepGrid(["coop"], ["pets"], shots=[1], seeds=[1])
    with pytest.raises(VLPromptError, match=match):
        run_sweep(grid, lambda spec: returned, tmp_path, progress=False)
    assert not list(tmp_path.rglob("seed*.json"))


def test_aggregate_from_records_only(tmp_path):
    run_sweep(GRID, fake_run, tmp_path, progress=False, report=False)
    assert not (tmp_path / "summary.md").exists()
    rows = aggregate(load_results(tmp_path))
    assert {(r.method, r.dataset, r.shots) for r in rows} == set(TOP1)
