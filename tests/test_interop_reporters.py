"""train.report_to: TensorBoard events and out.log carry the same per-epoch records as metrics.jsonl."""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import colour_items

from vlprompt.engine.cache import FeatureCache
from vlprompt.engine.reporters import scalars
from vlprompt.engine.trainer import TrainConfig, Trainer
from vlprompt.errors import VLPromptError
from vlprompt.methods import build_method

CLASSES = ["red", "green", "blue"]


def _fit(tiny_vit, tmp_path, report_to):
    train = colour_items(tmp_path / "train", CLASSES, 3, seed=0)
    val = colour_items(tmp_path / "val", CLASSES, 2, seed=1)
    method = build_method("coop", tiny_vit, CLASSES, {"n_ctx": 2})
    config = TrainConfig(epochs=3, batch_size=4, lr=0.1, output_dir=str(tmp_path / "run"), progress=False, eval_every=1,
                         report_to=report_to)  # fmt: skip
    Trainer(method, config, cache=FeatureCache(tmp_path / "cache", progress=False)).fit(train, val)
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_scalars_flatten_an_epoch_record():
    record = {"epoch": 2, "lr": 0.1, "loss": 1.5, "acc": float("nan"), "val": {"top1": 50.0, "n_images": 6}}
    assert scalars(record) == {"train/lr": 0.1, "train/loss": 1.5, "val/top1": 50.0, "val/n_images": 6.0}


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed (optional extra)")
def test_tensorboard_events_match_metrics_jsonl(tiny_vit, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = _fit(tiny_vit, tmp_path, ["tensorboard"])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == set(scalars(records[0]))
    for tag in ("train/loss", "train/lr", "val/top1"):
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [1, 2, 3]
        assert [v for _, v in logged] == pytest.approx([scalars(r)[tag] for r in records], rel=1e-6)  # float32 in events
    log = (tmp_path / "run" / "out.log").read_text().splitlines()
    assert "start coop epochs=3" in log[0] and log[-1].endswith(" end")
    assert [line.split("  ")[0].split(" ", 2)[2] for line in log[1:-1]] == ["epoch 1", "epoch 2", "epoch 3"]
    assert f"loss {records[2]['loss']:.6g}" in log[3]


def test_report_to_errors_are_one_line(monkeypatch):
    with pytest.raises(VLPromptError, match=r"report_to 'mlflow' is not one of \['tensorboard', 'wandb'\]"):
        TrainConfig(report_to=["mlflow"]).check()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(VLPromptError, match=r"report_to wandb needs the wandb package, which is not installed"):
        TrainConfig.from_dict({"report_to": ["wandb"]})


def test_wandb_gets_the_same_scalars(tiny_vit, tmp_path, monkeypatch):
    import importlib.machinery
    import sys
    import types

    logged, finished = [], []

    class Run:
        def log(self, values, step):
            logged.append((step, values))

        def finish(self):
            finished.append(True)

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kwargs: Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    records = _fit(tiny_vit, tmp_path, ["wandb"])
    assert logged == [(r["epoch"], scalars(r)) for r in records] and finished == [True]
