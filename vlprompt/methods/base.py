"""What the engine may rely on from any method, the method registry and `build_method`.

A method is an ``nn.Module`` built from ``(backbone, label_space, config)``: the label space is a list
of classes (classification) or attribute-object pairs (compositional zero-shot). It holds its
learnable parameters and the frozen tensors it derives once; it never touches files, devices,
distributed state or checkpoints (the engine does). Everything the engine, the runner or the CLI
may ask of a method is a hook declared here with a default, so none of them names a method.

Adding a method is one module: a config dataclass and a class, registered with
``@register_method("name", tasks=(...))``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

import vlprompt  # its lazy exports give save_prompt / load_prompt at call time (the zoo imports methods)
from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.label_space import ClassLabels, LabelSpace, PairLabels, as_label_space
from vlprompt.registry import UnknownNameError, unknown_name_message
from vlprompt.typed_config import from_dict

TASKS = ("classification", "czsl")


@dataclass(frozen=True)
class MethodContext:
    """What a protocol knows before a method is built: the training label space and the label spaces
    it will evaluate on (e.g. ``{"base": ..., "new": ...}``). Configs may resolve against it."""

    train: LabelSpace
    evaluations: dict[str, LabelSpace] = field(default_factory=dict)


@dataclass
class MethodConfig:
    """Base for a method's config dataclass.

    ``from_dict`` checks keys and value types (one clear line on a typo); ``retired_keys`` lists
    fields that published checkpoints may still carry and that are now ignored.
    """

    retired_keys: ClassVar[tuple[str, ...]] = ()
    # integer fields that count something and must be >= 1 wherever a method has them
    positive_fields: ClassVar[tuple[str, ...]] = ("n_ctx", "groups", "encode_batch_size")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, where: str = "method") -> MethodConfig:
        config = from_dict(cls, values, where)
        for name in cls.positive_fields:
            value = getattr(config, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise VLPromptError(f"{where}: {name} must be >= 1, got {value}")
        config.check(where)
        return config

    def check(self, where: str) -> None:
        """Value checks that need no backbone (ranges, choices): run when the config is loaded."""

    def resolve(self, context: MethodContext) -> None:
        """Fill values that depend on the protocol's label spaces (e.g. LASP's ``virtual_classes: new``)."""


@dataclass(frozen=True)
class MethodSpec:
    """One registered method: its name, the class per task it serves and the config class of each."""

    name: str
    classes: dict[str, type[PromptMethod]]

    def cls(self, task: str) -> type[PromptMethod]:
        if task not in self.classes:
            raise VLPromptError(
                f"method {self.name!r} does not do {task}; it serves {', '.join(sorted(self.classes))}. "
                f"Methods for {task}: {', '.join(METHODS.names(task))}"
            )
        return self.classes[task]


class MethodRegistry:
    """Name -> `MethodSpec`. One name may serve several tasks with a class each (``coop``, ``zero-shot``)."""

    kind = "method"

    def __init__(self) -> None:
        self._specs: dict[str, MethodSpec] = {}

    def add(self, name: str, cls: type[PromptMethod], tasks: Sequence[str]) -> None:
        spec = self._specs.setdefault(name, MethodSpec(name, {}))
        for task in tasks:
            if task not in TASKS:
                raise ValueError(f"method {name!r}: unknown task {task!r} (valid: {', '.join(TASKS)})")
            if task in spec.classes:
                raise ValueError(f"method {name!r} is registered twice for {task}")
            spec.classes[task] = cls

    def spec(self, name: str, task: str | None = None) -> MethodSpec:
        if name not in self._specs:
            raise UnknownNameError(unknown_name_message(self.kind, str(name), self.names(task)))
        return self._specs[name]

    def get(self, name: str, task: str = "classification") -> type[PromptMethod]:
        """The class of method `name` for `task` (unknown names list the valid ones)."""
        return self.spec(name, task).cls(task)

    def names(self, task: str | None = None) -> list[str]:
        return sorted(n for n, s in self._specs.items() if task is None or task in s.classes)

    def items(self, task: str | None = None) -> list[tuple[str, str, type[PromptMethod]]]:
        """(name, task, class) of every registered method, optionally of one task."""
        return [(n, t, c) for n in self.names() for t, c in sorted(self._specs[n].classes.items())
                if task is None or t == task]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self):
        return iter(self.names())


METHODS = MethodRegistry()


def register_method(
    name: str, config_class: type[MethodConfig] | None = None, tasks: Sequence[str] = ("classification",)
) -> Callable[[type[PromptMethod]], type[PromptMethod]]:
    """Class decorator: register a method under `name` for `tasks` (peft-style: name, config, tasks)."""

    def decorator(cls: type[PromptMethod]) -> type[PromptMethod]:
        cls.name = name
        if config_class is not None:
            cls.config_class = config_class
        METHODS.add(name, cls, tasks)
        return cls

    return decorator


def method_config(name: str, values: dict[str, Any] | None, task: str = "classification",
                  where: str | None = None) -> MethodConfig:
    """The checked config dataclass of method `name` (what an experiment config's method section becomes)."""
    cls = METHODS.get(name, task)
    return cls.config_class.from_dict(values, where=where or f"{name} config")


class PromptMethod(nn.Module):
    """Interface of a prompt-learning method.

    - ``needs_images``: False -> the engine feeds cached, L2-normalised image features
      (``batch["features"]``, [B, D]); True -> it feeds transformed images (``batch["images"]``).
    - ``forward(batch) -> logits [B, C]`` over the current labels (``self.classnames``).
    - ``loss(logits, batch) -> (loss, stats)``; default: cross-entropy on ``batch["labels"]``.
    - ``class_features() -> [C, D]`` normalised, or None when text depends on the image (CoCoOp):
      evaluation then encodes the text once instead of per batch.

    Hooks with defaults (override what differs):

    - ``param_groups(lr)``: optimizer groups (each may carry ``lr_scale``);
    - ``train_step(batch, model, backward)``: one step's forward, loss and backward;
    - ``fits_in_one_shot`` + ``fit_features(...)``: methods fitted in closed form on cached features
      (linear probe) instead of by the trainer;
    - ``on_epoch_end(epoch, epochs)``: after each training epoch (PromptSRC's Gaussian prompt aggregation);
    - ``set_label_space(labels)``: predict over other labels (base-to-new, cross-dataset, CZSL phases);
      ``class_agnostic = False`` methods refuse new class names;
    - ``result_metadata()``: what a result JSON and a checkpoint record beyond the metrics.
    """

    name: ClassVar[str] = "method"
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    needs_images: ClassVar[bool] = False
    class_agnostic: ClassVar[bool] = True  # can it take new class names after training?
    fits_in_one_shot: ClassVar[bool] = False  # fitted by `fit_features`, not by the trainer
    # with needs_images: the trainer also puts the frozen tower's L2-normalised features of the very same
    # images in ``batch["frozen_features"]``, read from the feature cache (no second image pass)
    frozen_image_features: ClassVar[bool] = False

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: MethodConfig) -> None:
        super().__init__()
        self._backbone = [backbone]  # held, not owned: checkpoints never contain backbone weights
        self.label_space: LabelSpace = as_label_space(labels)
        self.classnames = self.label_space.names
        self.config = config

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    @property
    def task(self) -> str:
        return self.label_space.task

    # -- to override ------------------------------------------------------------------------

    def class_features(self) -> torch.Tensor | None:
        raise NotImplementedError

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Classify over other class names (default: refused; class-agnostic methods override)."""
        raise VLPromptError(f"{self.name}: cannot take new class names")

    # -- hooks with defaults ----------------------------------------------------------------

    def set_label_space(self, labels: LabelSpace | Sequence[str]) -> None:
        """Predict over `labels` from now on. Class labels go through `set_classnames`."""
        labels = as_label_space(labels)
        if labels == self.label_space:
            return
        if not isinstance(labels, ClassLabels) or not isinstance(self.label_space, ClassLabels):
            raise VLPromptError(f"{self.name}: a {self.task} method cannot take {labels.task} labels")
        if not self.class_agnostic and list(labels.classnames) != self.classnames:
            raise VLPromptError(
                f"{self.name}: tied to its {len(self.classnames)} training classes (its learned parameters "
                "depend on the class), so it cannot take new class names"
            )
        self.set_classnames(labels.names)
        self.label_space = labels
        self.classnames = labels.names

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; default: every trainable parameter at `lr`."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "lr_scale": 1.0, "name": "prompt"}]

    def train_step(
        self, batch: dict[str, torch.Tensor], model: nn.Module, backward: Callable[[torch.Tensor], None]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward (through `model`: the method, or its DDP wrapper), loss, ``backward(loss)``.

        Override to combine the gradients of several losses (gradient surgery); call `backward` (it
        applies loss scaling) or set ``.grad`` yourself. Returns the loss the NaN guard checks."""
        logits = model(batch)
        loss, stats = self.loss(logits, batch)
        backward(loss)
        return loss, stats

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Called by the trainer after epoch `epoch` (1-based) of `epochs` (weight averaging over epochs)."""

    def fit_features(
        self, features: torch.Tensor, labels: torch.Tensor,
        val_features: torch.Tensor | None = None, val_labels: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """One-shot fit on cached image features (only for ``fits_in_one_shot`` methods)."""
        raise VLPromptError(f"{self.name}: is trained by the trainer, not fitted in one shot")

    def result_metadata(self) -> dict[str, Any]:
        """Recorded in result JSONs and checkpoints: the class names the training loss saw (a method
        with extra text-only classes, like LASP's virtual classes, adds them)."""
        return {"loss_classnames": list(self.classnames), "virtual_classnames": []}

    # -- shared behaviour -------------------------------------------------------------------

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "features" in batch:
            return batch["features"]
        return F.normalize(self.backbone.encode_image(batch["images"]), dim=-1)

    def save_pretrained(self, directory: str | os.PathLike, **kwargs: Any) -> Path:
        """peft's name for saving: the prompt in Hub layout under `directory` (``vlprompt_model.safetensors``,
        ``vlprompt_config.json``, a model card ``README.md``), ready to upload; `kwargs` go to `save_prompt`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return vlprompt.save_prompt(directory, self, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | os.PathLike,
        backbone: Backbone | None = None,
        classnames: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> PromptMethod:
        """peft's name for loading: `vlprompt.load_prompt` (a folder, a file, a zoo name or ``hf://org/repo``).
        Called on a method class (``CoOp.from_pretrained``), the prompt must be of that method."""
        method = vlprompt.load_prompt(path_or_name, backbone, classnames, **kwargs)
        if cls is not PromptMethod and not isinstance(method, cls):
            raise VLPromptError(f"{path_or_name} holds a {method.name} prompt, not {cls.__name__}")
        return method

    def __call__(self, batch: dict[str, torch.Tensor] | torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return super().__call__(as_batch(batch), *args, **kwargs)  # `method(images)` works too

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


def as_batch(batch: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch dict as given, or an image tensor ``[B, 3, H, W]`` wrapped as ``{"images": ...}``."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() != 4:
            raise VLPromptError(f"a method takes a batch dict or images [B, 3, H, W], got a tensor of shape {tuple(batch.shape)}")
        return {"images": batch}
    return batch


def build_method(
    name: str, backbone: Backbone, labels: LabelSpace | Sequence[str],
    config: MethodConfig | dict[str, Any] | None = None,
) -> PromptMethod:
    """Method by registry name for the task of `labels` (class names, `ClassLabels` or `PairLabels`),
    with a config dataclass or dict (unknown keys and wrong types fail clearly)."""
    labels = as_label_space(labels)
    cls = METHODS.get(name, labels.task)
    if not isinstance(config, MethodConfig):
        config = cls.config_class.from_dict(config, where=f"{name} config")
    elif not isinstance(config, cls.config_class):
        raise VLPromptError(f"{name}: config is a {type(config).__name__}, expected {cls.config_class.__name__}")
    return cls(backbone, labels, config)


__all__ = [
    "METHODS", "ClassLabels", "MethodConfig", "MethodContext", "PairLabels", "PromptMethod", "as_batch",
    "build_method", "method_config", "register_method",
]
