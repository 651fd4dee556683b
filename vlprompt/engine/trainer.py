"""Fit any prompt method: schedule, precision, DDP, checkpoints with exact resume, NaN guard, logs.

The trainer never knows which method it runs. It decides where image features come from: methods
with ``needs_images = False`` train on cached features (one eval-transform view, or
``augment_views`` train-transform views of which one is drawn per item per epoch); others get
transformed images from a DataLoader. Everything random in an epoch (sample order, view choice,
augmentation) is seeded from ``(seed, epoch)`` and the item itself, so a resumed run, or a run on
another number of ranks, sees the same data in the same order.

``batch_size`` is the *global* batch: under torchrun each of W ranks takes ``batch_size / W``
samples of every global batch, and DDP's gradient averaging reproduces the single-process step.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from vlprompt.backbones.base import Backbone
from vlprompt.devices import check_device_available
from vlprompt.engine import distributed as dist_utils
from vlprompt.engine.cache import FeatureCache
from vlprompt.engine.checkpoint import (
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vlprompt.engine.evaluate import evaluate_method
from vlprompt.engine.logging import MetricsLog, PlainProgress, on_terminal, progress_bar, write_json
from vlprompt.engine.optim import LRSchedule, build_optimizer
from vlprompt.engine.precision import Precision, resolve_precision
from vlprompt.engine.reporters import Reporters
from vlprompt.engine.selection import EpochSelector
from vlprompt.engine.train_config import TrainConfig
from vlprompt.engine.views import ItemLike, SeededImages, augmentation_identity, stable_seed
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import PromptMethod


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch: call before building a method whose init draws random numbers."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _EpochSeed:
    """Seed of an item's augmentation in one epoch (picklable for DataLoader workers)."""

    def __init__(self, fingerprints: list[str], seed: int, epoch: int) -> None:
        self.fingerprints, self.seed, self.epoch = fingerprints, seed, epoch

    def __call__(self, index: int) -> int:
        return stable_seed("train-image", self.seed, self.epoch, self.fingerprints[index])


class _CachedViewSeed:
    """Seed of the feature cache's view ``views[index]`` of an item (`FeatureCache`'s own seeding), so the
    image a method sees is the one whose frozen features the cache holds (picklable for workers)."""

    def __init__(self, fingerprints: list[str], views: list[int], base: int) -> None:
        self.fingerprints, self.views, self.base = fingerprints, views, base

    def __call__(self, index: int) -> int:
        return stable_seed("view", self.base, self.fingerprints[index], self.views[index])


class Trainer:
    """Train `method` on items; ``fit`` returns the result dict also written to ``result.json``.

    Args:
        method: the prompt method (holds its backbone; only trainable tensors are saved).
        config: a TrainConfig.
        cache: feature cache for methods that train on features (default: the user cache dir).
    """

    def __init__(self, method: PromptMethod, config: TrainConfig | None = None, cache: FeatureCache | None = None,
                 train_transform: Callable | None = None, selector: EpochSelector | None = None) -> None:
        """`train_transform`: the training images' transform (default the backbone's); `selector`: keep
        the best epoch by its score instead of the last one (single process)."""
        self.method = method
        self.train_transform = train_transform
        self.selector = selector
        self.config = config or TrainConfig()
        self.config.check()
        self.cache = cache
        self.history: list[dict[str, Any]] = []
        self.env = dist_utils.DistEnv()
        self.device = torch.device("cpu")

    # -- public API ---------------------------------------------------------------------------

    @property
    def backbone(self) -> Backbone:
        return self.method.backbone

    @property
    def output_dir(self) -> Path | None:
        return Path(self.config.output_dir) if self.config.output_dir else None

    @property
    def checkpoint_path(self) -> Path | None:
        return self.output_dir / "last.pt" if self.output_dir else None

    def fit(
        self,
        train_items: Sequence[ItemLike],
        val_items: Sequence[ItemLike] | None = None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Train for ``config.epochs`` epochs (continuing ``last.pt`` when `resume`); evaluate on
        `val_items` every ``eval_every`` epochs and after the last one."""
        cfg = self.config
        train_items = list(train_items)
        if not train_items:
            raise VLPromptError("no training items")
        self._check_labels(train_items, "training")
        if val_items is not None:
            self._check_labels(val_items, "validation")
        self._setup_device()
        if self.cache is None and (not self.method.needs_images or self.method.frozen_image_features):
            self.cache = FeatureCache(num_workers=cfg.num_workers, progress=self._show_progress)

        method = self.method
        params = self._trainable_parameters()
        # A method may split its parameters into groups with their own lr_scale (param_groups(lr)).
        groups = method.param_groups(cfg.lr)
        optimizer = build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.weight_decay)
        schedule = LRSchedule(cfg.lr, cfg.epochs, cfg.warmup_epochs, cfg.warmup_lr, cfg.schedule)
        precision = resolve_precision(cfg.precision, self.device)
        scaler = precision.scaler()

        start_epoch = self._resume(optimizer, scaler) if resume else 0
        if start_epoch == 0:
            self.history = []
            torch.manual_seed(stable_seed("global", cfg.seed, self.env.rank))
            if self.env.is_main and self.output_dir:
                MetricsLog(self.output_dir / "metrics.jsonl").rewrite([])

        model: nn.Module = method
        if self.env.enabled:
            model = nn.parallel.DistributedDataParallel(
                method,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )

        data = self._training_data(train_items)
        if val_items and self.env.enabled and not self.method.needs_images:
            # rank 0 evaluates alone later; the validation features are built by all ranks now
            self.cache.get(self.backbone, list(val_items), self.backbone.eval_transform, across_ranks=True)
        started = time.perf_counter()
        reporters = Reporters(
            self.output_dir if self.env.is_main else None,
            cfg.report_to if self.env.is_main else [],
            {"method": method.name, "epochs": cfg.epochs, "backbone": self.backbone.identity.name, "train": asdict(cfg)},
        )
        try:
            self._train_epochs(start_epoch, model, data, optimizer, scaler, schedule, precision, params, val_items, reporters)
        finally:
            reporters.close()
        last_eval = self.history[-1].get("val") if self.history and start_epoch < cfg.epochs else None
        if val_items and last_eval is None:  # nothing left to train after resuming a finished run
            last_eval = self._evaluate(val_items)
        if self.selector is not None:
            self.selector.restore(method)

        result = {
            "method": method.name,
            "backbone": self.backbone.identity.to_dict(),
            "num_classes": len(method.classnames),
            "num_train_items": len(train_items),
            "epochs": cfg.epochs,
            "world_size": self.env.world_size,
            "precision": precision.name,
            "train": self.history[-1] if self.history else {},
            "val": last_eval,
            "seconds": time.perf_counter() - started,
            "config": asdict(cfg),
        }
        if self.selector is not None:
            result["selection"] = self.selector.summary()
        if self.env.is_main and self.output_dir:
            write_json(self.output_dir / "result.json", result)
        return result

    def _train_epochs(self, start_epoch, model, data, optimizer, scaler, schedule, precision, params, val_items, reporters):
        """The epoch loop: each epoch's record goes to the history, ``metrics.jsonl`` and the reporters."""
        cfg = self.config
        method = self.method
        # not on a terminal and progress asked for (cfg.progress true): a plain line every 10 s or so
        lines = PlainProgress("  epoch", cfg.epochs) if cfg.progress and self.env.is_main and not on_terminal() else None
        for epoch in range(start_epoch, cfg.epochs):
            record = self._run_epoch(epoch, model, data, optimizer, scaler, schedule, precision, params)
            if lines is not None:
                lines.update(epoch + 1, f"loss {record.get('loss', float('nan')):.4f}")
            method.on_epoch_end(epoch + 1, cfg.epochs)  # first: the epoch's evaluation sees e.g. GPA's final prompts
            is_last = epoch + 1 == cfg.epochs
            if val_items and (is_last or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0)):
                record["val"] = self._evaluate(val_items)
            if self.selector is not None:
                record["select"] = {self.selector.metric: self.selector.after_epoch(epoch + 1, method, self.cache)}
            self.history.append(record)
            self._save(epoch + 1, optimizer, scaler)
            if self.env.is_main and self.output_dir:
                MetricsLog(self.output_dir / "metrics.jsonl").append(record)
            reporters.log(record)

    def evaluate(self, items: Sequence[ItemLike]) -> dict[str, Any]:
        """Metrics of the method on `items` (text side encoded once when it can be)."""
        return evaluate_method(
            self.method, self.backbone, items, cache=self.cache, batch_size=self.config.eval_batch_size,
            num_workers=self.config.num_workers, progress=self._show_progress,
        )

    # -- setup --------------------------------------------------------------------------------

    @property
    def _show_progress(self) -> bool | None:
        return False if not self.env.is_main else self.config.progress

    def _setup_device(self) -> None:
        env = dist_utils.env_from_environ()
        if self.config.device == "auto":
            device = dist_utils.default_device(env)
        else:
            device = torch.device(check_device_available(self.config.device, "train.device"))
            if device.type == "cuda" and device.index is None:  # one GPU per rank under torchrun
                device = torch.device("cuda", env.local_rank % max(torch.cuda.device_count(), 1))
        self.env = dist_utils.init_distributed(device)
        if self.env.enabled and self.config.batch_size % self.env.world_size:
            raise VLPromptError(
                f"batch_size {self.config.batch_size} (global) does not divide by the world size "
                f"{self.env.world_size}"
            )
        self.device = device
        if self.backbone.device != device:
            self.backbone.to(device)
        self.method.to(device)

    @property
    def _train_transform(self) -> Callable:
        return self.train_transform or self.backbone.train_transform

    def _check_labels(self, items: Sequence[ItemLike], what: str) -> None:
        n = len(self.method.classnames)
        bad = next((item for item in items if not 0 <= int(item.label) < n), None)
        if bad is not None:
            raise VLPromptError(
                f"{what} item {bad.path} has label {bad.label}, but the method has {n} classes (0..{n - 1})"
            )

    def _trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.method.parameters() if p.requires_grad]
        if not params:
            raise VLPromptError(f"method {self.method.name!r} has no trainable parameters")
        for p in params:  # master weights stay fp32 whatever the autocast precision
            if p.dtype != torch.float32:
                p.data = p.data.float()
        return params

    def _training_data(self, items: list[ItemLike]) -> dict[str, Any]:
        """Cached features [V, N, D] on the device, or what the image loader needs."""
        labels = torch.tensor([int(item.label) for item in items], dtype=torch.long)
        views = self.config.augment_views
        transform = self._train_transform if views else self.backbone.eval_transform
        if self.method.needs_images:
            data = {"labels": labels, "items": items, "fingerprints": [augmentation_identity(i.path) for i in items]}
            if self.method.frozen_image_features:
                # the frozen features of exactly the images the method sees: view v of an item is the
                # cache's view v (same transform, same seed), so the frozen tower never runs in a step
                data["frozen"] = self.cache.get(self.backbone, items, transform, views=max(views, 1), across_ranks=True)
                data["transform"] = transform
            return data
        # Under torchrun the ranks share the encoding of missing features (a collective call).
        features = self.cache.get(self.backbone, items, transform, views=max(views, 1), across_ranks=True)
        return {"labels": labels.to(self.device), "features": features.to(self.device)}

    # -- one epoch ----------------------------------------------------------------------------

    def _batches(self, epoch: int, data: dict[str, Any]) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        n = len(data["labels"])
        order = torch.randperm(n, generator=torch.Generator().manual_seed(stable_seed("order", self.config.seed, epoch)))
        views = None
        cached = data.get("features", data.get("frozen"))
        if cached is not None and cached.shape[0] > 1:
            g = torch.Generator().manual_seed(stable_seed("views", self.config.seed, epoch))
            views = torch.randint(cached.shape[0], (n,), generator=g)
        return dist_utils.shard_batches(order, self.config.batch_size, self.env), views

    def _batch_iter(self, epoch: int, data: dict[str, Any], batches: list[torch.Tensor], views: torch.Tensor | None):
        if "features" in data:
            for idx in batches:
                idx_d = idx.to(self.device)
                view = views[idx].to(self.device) if views is not None else torch.zeros_like(idx_d)
                yield {"features": data["features"][view, idx_d], "labels": data["labels"][idx_d]}
            return
        if "frozen" in data:
            chosen = views if views is not None else torch.zeros(len(data["labels"]), dtype=torch.long)
            dataset = SeededImages(
                data["items"], data["transform"], _CachedViewSeed(data["fingerprints"], chosen.tolist(), self.cache.seed)
            )
        else:
            dataset = SeededImages(
                data["items"], self._train_transform, _EpochSeed(data["fingerprints"], self.config.seed, epoch)
            )
        loader = DataLoader(
            dataset, batch_sampler=[idx.tolist() for idx in batches], num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for images, labels, index in loader:
            batch = {"images": images.to(self.device, non_blocking=True), "labels": labels.to(self.device)}
            if "frozen" in data:
                view = views[index] if views is not None else torch.zeros_like(index)
                batch["frozen_features"] = data["frozen"][view, index].to(self.device)
            yield batch

    def _run_epoch(
        self,
        epoch: int,
        model: nn.Module,
        data: dict[str, Any],
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        schedule: LRSchedule,
        precision: Precision,
        params: list[nn.Parameter],
    ) -> dict[str, Any]:
        cfg = self.config
        method = self.method
        method.train()
        started = time.perf_counter()
        batches, views = self._batches(epoch, data)
        steps = len(batches)
        lr = schedule.apply(optimizer, epoch)
        sums: dict[str, float] = {}
        count = 0
        bar = progress_bar(
            self._batch_iter(epoch, data, batches, views), desc=f"epoch {epoch + 1}/{cfg.epochs}",
            enabled=self._show_progress, total=steps,
        )
        device_type = self.device.type

        def backward(loss: torch.Tensor) -> None:
            with torch.autocast(device_type, enabled=False):  # backward outside autocast, as recommended
                (scaler.scale(loss) if scaler is not None else loss).backward()

        for step, batch in enumerate(bar):
            if cfg.schedule_per_step:
                lr = schedule.apply(optimizer, epoch + step / steps)
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                # the method's step: forward, loss and backward (a hook, so gradient-surgery methods can
                # combine the gradients of several losses); the NaN guard runs before the optimizer steps
                loss, stats = method.train_step(batch, model, backward)
            bad = not bool(torch.isfinite(loss.detach()).all())
            if dist_utils.any_rank(bad, self.device):
                self._raise_nan(loss, epoch, step, steps)
            if scaler is not None:
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
            n = len(batch["labels"])
            count += n
            stats = {**stats, "loss": float(loss.detach())}
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
        # Sample-weighted means over all ranks.
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys] + [float(count)], dtype=torch.float64, device=self.device)
        dist_utils.all_reduce_sum(totals)
        total = max(totals[-1].item(), 1.0)
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "steps": steps}
        record.update({k: totals[i].item() / total for i, k in enumerate(keys)})
        record["seconds"] = time.perf_counter() - started
        return record

    def _raise_nan(self, loss: torch.Tensor, epoch: int, step: int, steps: int) -> None:
        value = float(loss.detach().float().reshape(-1)[0]) if loss.numel() else float("nan")
        ckpt = self.checkpoint_path
        if ckpt is not None and ckpt.is_file() and self.history:
            kept = f"last good checkpoint {ckpt} (epoch {self.history[-1]['epoch']}) is intact"
        elif ckpt is not None and ckpt.is_file():
            kept = f"checkpoint {ckpt} is intact"
        else:
            kept = "no checkpoint was written yet"
        raise VLPromptError(
            f"loss is {value} at epoch {epoch + 1}/{self.config.epochs}, step {step + 1}/{steps} "
            f"(non-finite if on another rank); training stopped, {kept}. Try a lower lr, grad_clip or precision=fp32"
        )

    def _evaluate(self, items: Sequence[ItemLike]) -> dict[str, Any]:
        """Rank 0 evaluates (cached features make this cheap); every rank gets its metrics."""
        metrics = self.evaluate(items) if self.env.is_main else None
        return dist_utils.broadcast_object(metrics)

    # -- checkpoints --------------------------------------------------------------------------

    def _save(self, epoch: int, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
        if not (self.env.is_main and self.checkpoint_path):
            return
        save_checkpoint(
            self.checkpoint_path,
            {
                "method": self.method.name,
                "epoch": epoch,
                "trainable": {k: v.detach().cpu() for k, v in self.method.trainable_state().items()},
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rng_state(),
                "config": asdict(self.config),
                "classnames": list(self.method.classnames),
                "backbone": self.backbone.identity.to_dict(),
                "history": self.history,
            },
        )

    def _resume(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> int:
        """Load ``last.pt`` into method/optimizer/RNG; returns the epoch to start from."""
        path = self.checkpoint_path
        if path is None:
            raise VLPromptError("resume needs output_dir (where last.pt is)")
        if not path.is_file():
            if self.env.is_main:
                warnings.warn(f"resume: no checkpoint at {path}; starting from epoch 1", stacklevel=3)
            return 0
        payload = load_checkpoint(path)
        check_compatible(
            payload, path, self.backbone.identity.to_dict(), list(self.method.classnames), self.method.name
        )
        self.method.load_trainable_state(payload["trainable"])
        optimizer.load_state_dict(payload["optimizer"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        set_rng_state(payload["rng"])
        self.history = list(payload.get("history", []))
        if self.env.is_main and self.output_dir:  # drop log lines of epochs the checkpoint lacks
            MetricsLog(self.output_dir / "metrics.jsonl").rewrite(self.history)
        return int(payload["epoch"])
