"""Progress for people, not pipes: bars only on a terminal, throttled plain lines elsewhere."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlprompt.engine import logging as run_logging
from vlprompt.engine.logging import PlainProgress, progress_bar
from vlprompt.engine.runs import RunSpec
from vlprompt.engine.sweep import SweepGrid, run_sweep


def test_plain_progress_is_throttled_but_always_shows_the_end(monkeypatch):
    clock = iter([0.0, 0.0, 1.0, 2.0, 3.0, 12.0, 13.0])  # start, then one reading per update
    monkeypatch.setattr(run_logging.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    lines = PlainProgress("epoch", 6, every=10.0, stream=out)
    for done in range(1, 7):
        lines.update(done, f"loss {done}")
    assert out.getvalue().splitlines() == ["epoch 1/6 loss 1 [0s]", "epoch 5/6 loss 5 [12s]", "epoch 6/6 loss 6 [13s]"]


@pytest.mark.parametrize("enabled", [None, True])
def test_no_bar_outside_a_terminal(enabled, capsys):
    assert list(progress_bar(range(3), desc="x", enabled=enabled)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_sweep_prints_one_line_per_run_in_a_pipe(tmp_path, capsys):
    grid = SweepGrid(methods=["coop"], datasets=["world_shapes"], shots=[1], seeds=[1, 2])

    def run_one(spec: RunSpec) -> dict:
        return {"metrics": {"top1": 40.0 + spec.seed}}

    run_sweep(grid, run_one, tmp_path, report=False)
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err
    lines = [line for line in err.splitlines() if line.startswith("sweep: run")]
    assert [line.rsplit(" [", 1)[0] for line in lines] == [
        "sweep: run 1/2 coop/world_shapes/shots1/seed1: top1 41.00",
        "sweep: run 2/2 coop/world_shapes/shots1/seed2: top1 42.00",
    ]


def test_training_in_a_pipe_prints_epoch_lines(tiny_vit, tmp_path, monkeypatch, capsys):
    """`train.progress=true` (what the demo sets) outside a terminal: plain epoch lines, no bar."""
    from vlprompt import api
    from vlprompt.config import ExperimentConfig

    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for name, rgb in {"red": (220, 30, 30), "blue": (30, 40, 220)}.items():
            for i in range(2):
                path = tmp_path / "colours" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((32, 32, 3), rgb, dtype=np.uint8)).save(path)
    config = ExperimentConfig.from_dict({
        "dataset": {"name": f"folder:{tmp_path / 'colours'}"}, "method": {"name": "coop", "n_ctx": 2},
        "protocol": {"shots": 1, "seed": 1}, "train": {"epochs": 2, "batch_size": 2, "progress": True},
        "output_dir": str(tmp_path / "run"),
    })
    api.run_experiment(config, backbone=tiny_vit)
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err
    assert "  epoch 1/2 loss" in err and "  epoch 2/2 loss" in err
