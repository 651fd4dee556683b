"""What the engine may rely on from any method, and the method registry.

A method is an ``nn.Module`` built from ``(backbone, classnames, config)``. It holds its learnable
parameters and the frozen tensors it derives once; it never touches files, devices, distributed
state or checkpoints (the engine does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.registry import Registry

METHODS: Registry[type[PromptMethod]] = Registry("method")


def register_method(name: str) -> Callable[[type[PromptMethod]], type[PromptMethod]]:
    def decorator(cls: type[PromptMethod]) -> type[PromptMethod]:
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


@dataclass
class MethodConfig:
    """Base for a method's config dataclass; `from_dict` rejects unknown keys with one clear line."""

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, where: str = "method") -> MethodConfig:
        values = dict(values or {})
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in valid]
        if unknown:
            from vlprompt.registry import unknown_name_message

            raise VLPromptError(unknown_name_message(f"{where} key", unknown[0], valid))
        return cls(**values)


class PromptMethod(nn.Module):
    """Interface of a prompt-learning method.

    - ``needs_images``: False -> the engine feeds cached, L2-normalised image features
      (``batch["features"]``, [B, D]); True -> it feeds transformed images (``batch["images"]``).
    - ``forward(batch) -> logits [B, C]`` over ``self.classnames``.
    - ``loss(logits, batch) -> (loss, stats)``; default: cross-entropy on ``batch["labels"]``.
    - ``class_features() -> [C, D]`` normalised, or None when text depends on the image (CoCoOp):
      evaluation then encodes the text once instead of per batch.
    - ``set_classnames(names)``: evaluate on other classes (base-to-new, cross-dataset); methods
      whose parameters depend on the classes refuse with a clear error.
    """

    name: ClassVar[str] = "method"
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    needs_images: ClassVar[bool] = False
    class_agnostic: ClassVar[bool] = True  # can it take new class names after training?

    def __init__(self, backbone: Backbone, classnames: Sequence[str], config: MethodConfig) -> None:
        super().__init__()
        self._backbone = [backbone]  # held, not owned: checkpoints never contain backbone weights
        self.classnames = list(classnames)
        self.config = config

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    # -- to override ------------------------------------------------------------------------

    def class_features(self) -> torch.Tensor | None:
        raise NotImplementedError

    def set_classnames(self, classnames: Sequence[str]) -> None:
        raise NotImplementedError

    # -- shared behaviour -------------------------------------------------------------------

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "features" in batch:
            return batch["features"]
        return F.normalize(self.backbone.encode_image(batch["images"]), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.image_features(batch)
        text = self.class_features()
        assert text is not None, f"{self.name} must override forward()"
        return self.backbone.logit_scale * image @ text.to(image.dtype).t()

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = F.cross_entropy(logits.float(), batch["labels"])
        acc = (logits.argmax(-1) == batch["labels"]).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc) * 100}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: parameters that train, never frozen backbone weights."""
        return {k: v.detach() for k, v in self.named_parameters() if v.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        wanted = {k for k, v in own.items() if v.requires_grad}
        if set(state) != wanted:
            raise VLPromptError(
                f"{self.name}: checkpoint holds {sorted(state)} but this method trains {sorted(wanted)}"
            )
        with torch.no_grad():
            for key, value in state.items():
                if own[key].shape != value.shape:
                    raise VLPromptError(
                        f"{self.name}: {key} has shape {tuple(value.shape)} in the checkpoint, "
                        f"{tuple(own[key].shape)} here (another backbone or class count?)"
                    )
                own[key].copy_(value)


def build_method(
    name: str, backbone: Backbone, classnames: Sequence[str], config: dict[str, Any] | None = None
) -> PromptMethod:
    """Method by registry name with a config dict (unknown keys fail clearly)."""
    cls = METHODS.get(name)
    return cls(backbone, classnames, cls.config_class.from_dict(config, where=f"{name} config"))
