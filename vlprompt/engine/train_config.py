"""How to train, as a checked dataclass: built when an experiment config is loaded, before any work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlprompt.devices import check_device_name
from vlprompt.engine.optim import OPTIMIZERS, SCHEDULES
from vlprompt.engine.reporters import check_report_to
from vlprompt.errors import VLPromptError
from vlprompt.typed_config import from_dict

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig:
    """How to train; CoOp's defaults (SGD 0.002, momentum 0.9, wd 5e-4, batch 32, 1 warm-up epoch)."""

    optimizer: str = "sgd"  # sgd | adam | adamw (registry: vlprompt.engine.optim.OPTIMIZERS)
    lr: float = 0.002
    momentum: float = 0.9  # SGD momentum, Adam/AdamW beta1
    weight_decay: float = 5e-4
    epochs: int = 10
    batch_size: int = 32  # global batch, split over ranks
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5  # constant during warm-up
    schedule: str = "cosine"  # cosine | constant | step3, after warm-up
    schedule_per_step: bool = False  # False: lr changes once per epoch, like CoOp
    grad_clip: float | None = None  # max gradient norm
    seed: int = 1
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (autocast on CUDA only)
    augment_views: int = 0  # 0: cached eval-transform features; N: N cached augmented views
    eval_every: int = 0  # evaluate val items every N epochs (0: only after the last epoch)
    output_dir: str | None = None  # last.pt, metrics.jsonl, result.json; None: nothing written
    num_workers: int = 0
    eval_batch_size: int = 256
    device: str = "auto"  # auto: cuda:LOCAL_RANK if available, else cpu
    progress: bool | None = None  # None: progress bars only on a terminal
    report_to: list[str] = field(default_factory=list)  # trackers fed each epoch record: tensorboard, wandb

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, where: str = "train") -> TrainConfig:
        """Build from a dict: unknown keys, wrong types and invalid values fail with one clear line."""
        config = from_dict(cls, values, where)
        config.check(where)
        return config

    def check(self, where: str = "train config") -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise VLPromptError(f"{where}: {name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_epochs < 0 or self.augment_views < 0 or self.eval_every < 0 or self.num_workers < 0:
            raise VLPromptError(f"{where}: warmup_epochs, augment_views, eval_every and num_workers must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise VLPromptError(f"{where}: grad_clip must be positive or None, got {self.grad_clip}")
        if self.lr <= 0 or self.warmup_lr < 0 or self.weight_decay < 0:
            raise VLPromptError(f"{where}: lr must be > 0, warmup_lr and weight_decay >= 0")
        OPTIMIZERS.get(self.optimizer)
        SCHEDULES.get(self.schedule)
        check_device_name(self.device, where)
        if self.precision not in PRECISIONS:
            raise VLPromptError(f"{where}: precision {self.precision!r} is not one of {list(PRECISIONS)}")
        check_report_to(self.report_to, where)
