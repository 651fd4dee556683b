"""Trainer, schedule, checkpoints, resume, NaN guard and evaluation on a tiny random CLIP."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import colour_items
from torch import nn

from vlprompt.data.classification import Item
from vlprompt.engine.cache import FeatureCache
from vlprompt.engine.checkpoint import load_checkpoint, save_checkpoint
from vlprompt.engine.evaluate import evaluate_method, predict_logits
from vlprompt.engine.optim import LRSchedule, build_optimizer
from vlprompt.engine.trainer import TrainConfig, Trainer
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import MethodConfig, PromptMethod

CLASSES = ["red", "green", "blue"]


class ToyMethod(PromptMethod):
    """A learnable linear text side: one vector per class (the engine cannot tell it from CoOp)."""

    name = "toy"

    def __init__(self, backbone, classnames, config=None, seed=0):
        super().__init__(backbone, classnames, config or MethodConfig())
        g = torch.Generator().manual_seed(seed)
        self.text = nn.Parameter(0.1 * torch.randn(len(classnames), backbone.identity.embed_dim, generator=g))
        self.class_feature_calls = 0

    def class_features(self):
        self.class_feature_calls += 1
        return F.normalize(self.text, dim=-1)


class PerImageToy(ToyMethod):
    """Text depends on the image (like CoCoOp): class_features() is None."""

    name = "per-image-toy"

    def class_features(self):
        return None

    def forward(self, batch):
        image = self.image_features(batch)
        text = F.normalize(self.text, dim=-1)
        return self.backbone.logit_scale * image @ text.t()


class ImageToy(ToyMethod):
    """Needs images in the loop (as LayerNorm tuning would)."""

    name = "image-toy"
    needs_images = True


class NaNAfter(ToyMethod):
    """Its loss turns NaN after `steps` optimisation steps."""

    name = "toy"

    def __init__(self, *args, steps=4, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps_left = steps

    def loss(self, logits, batch):
        loss, stats = super().loss(logits, batch)
        self.steps_left -= 1
        return (loss * float("nan") if self.steps_left < 0 else loss), stats


def make_items(folder, n_per_class=4, size=40, seed=0):
    return colour_items(folder, CLASSES, n_per_class, size, seed)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    return {
        "train": make_items(root / "train", 4, seed=0),
        "val": make_items(root / "val", 2, seed=1),
        "cache": FeatureCache(root / "cache", progress=False),
    }


def config(tmp_path, **overrides):
    values = dict(epochs=4, batch_size=4, lr=0.5, warmup_epochs=1, warmup_lr=0.05, output_dir=str(tmp_path / "run"),
                  progress=False, seed=3)
    values.update(overrides)
    return TrainConfig(**values)


# -- schedule -----------------------------------------------------------------------------------


def test_warmup_constant_then_cosine():
    s = LRSchedule(base_lr=0.002, epochs=10, warmup_epochs=1, warmup_lr=1e-5)
    assert s.lr_at(0) == 1e-5
    assert s.lr_at(1) == pytest.approx(0.002)
    assert s.lr_at(5.5) == pytest.approx(0.001)  # half-way through the 9 cosine epochs
    assert s.lr_at(9) == pytest.approx(0.001 * (1 + math.cos(math.pi * 8 / 9)))
    assert s.lr_at(10) == pytest.approx(0.0)
    lrs = [s.lr_at(e) for e in range(1, 10)]
    assert lrs == sorted(lrs, reverse=True)
    assert LRSchedule(0.1, 5, warmup_epochs=0, name="constant").lr_at(3) == 0.1
    with pytest.raises(KeyError, match="cosin"):
        LRSchedule(0.1, 5, name="cosin")


def test_optimizer_registry():
    p = [nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer("sgd", p, 0.1, 0.9, 0.0), torch.optim.SGD)
    assert isinstance(build_optimizer("adamw", p, 0.1, 0.9, 0.0), torch.optim.AdamW)
    with pytest.raises(KeyError, match="adamw"):
        build_optimizer("adam_w", p, 0.1, 0.9, 0.0)


def test_config_rejects_unknown_keys():
    assert TrainConfig.from_dict({"lr": 0.1}).lr == 0.1
    with pytest.raises(VLPromptError, match="'epoch'.*epochs"):
        TrainConfig.from_dict({"epoch": 3})


# -- training -----------------------------------------------------------------------------------


def test_training_reduces_the_loss_and_writes_logs(tiny_vit, data, tmp_path):
    method = ToyMethod(tiny_vit, CLASSES)
    cfg = config(tmp_path, epochs=15, optimizer="adamw", lr=0.05, warmup_epochs=0, weight_decay=0.0, eval_every=5)
    result = Trainer(method, cfg, cache=data["cache"]).fit(data["train"], data["val"])
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, 16))
    assert {"loss", "acc", "lr", "seconds"} <= set(lines[0])
    assert [r["epoch"] for r in lines if "val" in r] == [5, 10, 15]
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    assert lines[-1]["acc"] == 100.0
    schedule = LRSchedule(0.05, 15, warmup_epochs=0)
    assert [r["lr"] for r in lines] == [schedule.lr_at(e) for e in range(15)]
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["val"]["top1"] == result["val"]["top1"] and saved["val"]["n_images"] == 6
    assert saved["train"]["loss"] == pytest.approx(lines[-1]["loss"])


@pytest.mark.parametrize("views", [0, 2])
def test_resume_matches_an_uninterrupted_run(tiny_vit, data, tmp_path, views):
    straight = ToyMethod(tiny_vit, CLASSES)
    full = Trainer(straight, config(tmp_path / "a", augment_views=views), cache=data["cache"]).fit(
        data["train"], data["val"]
    )

    first = ToyMethod(tiny_vit, CLASSES)
    Trainer(first, config(tmp_path / "b", epochs=2, augment_views=views), cache=data["cache"]).fit(data["train"])
    resumed_method = ToyMethod(tiny_vit, CLASSES, seed=99)  # a fresh process would init differently
    resumed = Trainer(resumed_method, config(tmp_path / "b", augment_views=views), cache=data["cache"]).fit(
        data["train"], data["val"], resume=True
    )
    assert torch.equal(resumed_method.text, straight.text)
    assert resumed["val"] == full["val"]
    assert resumed["train"]["loss"] == full["train"]["loss"]
    log = [json.loads(x) for x in (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "a" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["loss"], r["acc"], r["lr"]) for r in log] == [
        (r["epoch"], r["loss"], r["acc"], r["lr"]) for r in ref
    ]


def test_images_in_the_loop_are_reproducible(tiny_vit, data, tmp_path):
    runs = []
    for name in ("a", "b"):
        method = ImageToy(tiny_vit, CLASSES)
        Trainer(method, config(tmp_path / name, epochs=2, num_workers=0)).fit(data["train"])
        runs.append(method.text.detach().clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], ImageToy(tiny_vit, CLASSES).text)


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tiny_vit, data, tmp_path):
    # 12 items, batch 4 -> 3 steps per epoch; the 8th step (epoch 3, step 2) is NaN.
    method = NaNAfter(tiny_vit, CLASSES, steps=7)
    with pytest.raises(VLPromptError, match=r"loss is nan at epoch 3/4, step 2/3.*epoch 2\) is intact"):
        Trainer(method, config(tmp_path), cache=data["cache"]).fit(data["train"])
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert payload["epoch"] == 2
    assert torch.isfinite(payload["trainable"]["text"]).all()
    restored = ToyMethod(tiny_vit, CLASSES, seed=5)
    restored.load_trainable_state(payload["trainable"])
    assert torch.equal(restored.text, payload["trainable"]["text"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_checkpoint_holds_trainable_state_only(tiny_vit, data, tmp_path):
    method = ToyMethod(tiny_vit, CLASSES)
    Trainer(method, config(tmp_path, epochs=1), cache=data["cache"]).fit(data["train"])
    path = tmp_path / "run" / "last.pt"
    payload = torch.load(path, weights_only=True)
    assert set(payload["trainable"]) == {"text"}
    assert payload["classnames"] == CLASSES
    assert payload["backbone"] == tiny_vit.identity.to_dict()
    assert payload["epoch"] == 1 and payload["config"]["epochs"] == 1

    def tensors(obj):
        if isinstance(obj, torch.Tensor):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from tensors(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                yield from tensors(v)

    backbone_numel = sum(p.numel() for p in tiny_vit.parameters())
    saved_floats = sum(t.numel() for t in tensors(payload) if t.is_floating_point())
    assert saved_floats < 0.05 * backbone_numel  # text + momentum, no tower weights
    assert path.stat().st_size < 200_000


def test_resume_refuses_other_classes_or_backbone(tiny_vit, data, tmp_path):
    Trainer(ToyMethod(tiny_vit, CLASSES), config(tmp_path, epochs=1), cache=data["cache"]).fit(data["train"])
    renamed = ["red", "green", "cyan"]
    with pytest.raises(VLPromptError, match=r"'blue' in the checkpoint vs 'cyan' here"):
        Trainer(ToyMethod(tiny_vit, renamed), config(tmp_path), cache=data["cache"]).fit(data["train"], resume=True)
    path = tmp_path / "run" / "last.pt"
    payload = load_checkpoint(path)
    payload["backbone"] = {**payload["backbone"], "name": "ViT-B-16", "pretrained": "openai"}
    save_checkpoint(path, {k: v for k, v in payload.items() if k not in ("format", "version")})
    with pytest.raises(VLPromptError, match=r"ViT-B-16 \(openai\).*vlprompt-test-vit \(random weights\)"):
        Trainer(ToyMethod(tiny_vit, CLASSES), config(tmp_path), cache=data["cache"]).fit(data["train"], resume=True)


def test_bad_labels_and_precision_on_cpu(tiny_vit, data, tmp_path):
    bad = [Item(data["train"][0].path, 7, "purple")]
    with pytest.raises(VLPromptError, match="label 7.*3 classes"):
        Trainer(ToyMethod(tiny_vit, CLASSES), config(tmp_path), cache=data["cache"]).fit(bad)
    with pytest.warns(UserWarning, match="fp16 needs CUDA"):
        result = Trainer(ToyMethod(tiny_vit, CLASSES), config(tmp_path, epochs=1, precision="fp16"),
                         cache=data["cache"]).fit(data["train"])
    assert result["precision"] == "fp32"


# -- evaluation ---------------------------------------------------------------------------------


def test_evaluate_encodes_text_once_and_matches_forward(tiny_vit, data):
    method = ToyMethod(tiny_vit, CLASSES)
    items = data["train"] + data["val"]
    logits = predict_logits(method, tiny_vit, items, cache=data["cache"], batch_size=4)
    assert method.class_feature_calls == 1  # 5 batches, one text encoding
    per_image = PerImageToy(tiny_vit, CLASSES)
    per_image.load_trainable_state(method.trainable_state())
    torch.testing.assert_close(predict_logits(per_image, tiny_vit, items, cache=data["cache"], batch_size=4), logits)
    metrics = evaluate_method(method, tiny_vit, items, cache=data["cache"])
    assert set(metrics) == {"top1", "top5", "mean_per_class_recall", "n_images"} and metrics["n_images"] == 18
    assert evaluate_method(method, tiny_vit, items) == metrics  # without a cache: extracted once
    image_method = ImageToy(tiny_vit, CLASSES)
    image_method.load_trainable_state(method.trainable_state())
    torch.testing.assert_close(predict_logits(image_method, tiny_vit, items, batch_size=4), logits)


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_autocast_paths_keep_fp32_master_weights(tiny_vit, data, tmp_path, monkeypatch, name):
    """The CUDA autocast / GradScaler code paths, exercised with CPU autocast."""
    import vlprompt.engine.trainer as trainer_module
    from vlprompt.engine.precision import Precision

    monkeypatch.setattr(trainer_module, "resolve_precision", lambda requested, device: Precision(name, "cpu"))
    method = ToyMethod(tiny_vit, CLASSES)
    before = method.text.detach().clone()
    result = Trainer(method, config(tmp_path, epochs=2, grad_clip=1.0), cache=data["cache"]).fit(data["train"])
    assert result["precision"] == name and math.isfinite(result["train"]["loss"])
    assert method.text.dtype == torch.float32 and not torch.equal(method.text, before)
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    assert (payload["scaler"] is not None) == (name == "fp16")


class GroupedToy(ToyMethod):
    """Two parameter groups, the second at a tenth of the learning rate (as LASP's LayerNorms)."""

    def __init__(self, backbone, classnames):
        super().__init__(backbone, classnames)
        self.bias = nn.Parameter(torch.zeros(backbone.identity.embed_dim))

    def param_groups(self, lr):
        return [{"params": [self.text]}, {"params": [self.bias], "lr_scale": 0.1}]


def test_method_param_groups_keep_their_lr_scale(tiny_vit, data, tmp_path):
    method = GroupedToy(tiny_vit, CLASSES)
    trainer = Trainer(method, config(tmp_path, epochs=2, output_dir=None), cache=data["cache"])
    seen = []
    original = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append([group["lr"] for group in self.param_groups])
        return original(self, *args, **kwargs)

    torch.optim.SGD.step = spy
    try:
        trainer.fit(data["train"])
    finally:
        torch.optim.SGD.step = original
    assert seen[0] == pytest.approx([0.05, 0.005])  # warm-up lr, and a tenth of it
    assert seen[-1][1] == pytest.approx(seen[-1][0] * 0.1)
