"""Optimizers and learning-rate schedules by name.

The schedule is a pure function of training progress (epoch, possibly fractional), so resuming
needs no scheduler object state: the learning rate of epoch ``e`` is always ``lr_at(e)``.

CoOp's default: SGD, lr 0.002, momentum 0.9, weight decay 5e-4; one warm-up epoch at a constant
1e-5, then cosine annealing. Here the cosine runs over the epochs *after* warm-up
(epoch ``W`` gets the full lr, the last epoch a small positive one), stepped once per epoch
(``schedule_per_step`` evaluates it at fractional epochs instead). Dassl's cosine uses
``T_max = epochs`` and starts it one epoch late, which differs slightly in the final epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from vlprompt.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
SCHEDULES: Registry[Callable[[float, float, int], float]] = Registry("lr schedule")


@OPTIMIZERS.register("sgd")
def _sgd(params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam with L2 weight decay (not AdamW): what CSP and DFSP train with."""
    return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)


def build_optimizer(
    name: str, params: Iterable[torch.nn.Parameter], lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Optimizer by registry name (unknown names list the valid ones). For adamw, momentum is beta1."""
    return OPTIMIZERS.get(name)(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay)


@SCHEDULES.register("cosine")
def _cosine(base_lr: float, t: float, length: int) -> float:
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(t / max(length, 1), 1.0)))


@SCHEDULES.register("constant")
def _constant(base_lr: float, t: float, length: int) -> float:
    return base_lr


@SCHEDULES.register("step3")
def _step3(base_lr: float, t: float, length: int) -> float:
    """StepLR(step_size=3, gamma=0.5): DFSP's schedule."""
    return base_lr * 0.5 ** math.floor(t / 3)


@dataclass(frozen=True)
class LRSchedule:
    """Constant warm-up for `warmup_epochs`, then `name` (cosine|constant) over the rest."""

    base_lr: float
    epochs: int
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    name: str = "cosine"

    def __post_init__(self) -> None:
        SCHEDULES.get(self.name)  # fail early on an unknown name

    def lr_at(self, epoch: float) -> float:
        """Learning rate at (possibly fractional) epoch `epoch`, counted from 0."""
        if epoch < self.warmup_epochs:
            return self.warmup_lr
        return SCHEDULES.get(self.name)(self.base_lr, epoch - self.warmup_epochs, self.epochs - self.warmup_epochs)

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> float:
        """Set every param group's lr for `epoch`; returns it."""
        lr = self.lr_at(epoch)
        for group in optimizer.param_groups:  # a group may run at a fixed fraction (e.g. LASP's LayerNorms)
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr
