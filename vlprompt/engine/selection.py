"""Which epoch's weights a run keeps: the last one, or the best on a validation score (the released
DFSP keeps its best validation epoch). The trainer asks an `EpochSelector` after every epoch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vlprompt.methods.base import PromptMethod


@dataclass
class EpochSelector:
    """Keep the trainable state of the epoch with the best ``score(method)`` (higher is better; the
    first epoch wins ties, as the released ``>`` comparison). `metric` names the score in results."""

    metric: str
    score: Callable[[PromptMethod, Any], float]  # (method, the trainer's feature cache or None) -> score
    values: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    _best: dict[str, torch.Tensor] | None = None

    def after_epoch(self, epoch: int, method: PromptMethod, cache: Any = None) -> float:
        was_training = method.training
        method.eval()
        with torch.no_grad():
            value = float(self.score(method, cache))
        method.train(was_training)
        if self.best_epoch is None or value > max(self.values):
            self.best_epoch = epoch
            self._best = {k: v.detach().clone() for k, v in method.trainable_state().items()}
        self.values.append(value)
        return value

    def restore(self, method: PromptMethod) -> None:
        """Load the best epoch's trainable state into `method`."""
        if self._best is not None:
            with torch.no_grad():
                params = dict(method.named_parameters())
                for name, value in self._best.items():
                    params[name].copy_(value)

    def summary(self) -> dict[str, Any]:
        return {"rule": "best_val", "metric": self.metric, "best_epoch": self.best_epoch, "values": self.values}
