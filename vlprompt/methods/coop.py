"""CoOp: learned context vectors in place of the hand-written prompt words (Zhou et al., IJCV'22).

Initialisation as the released code (KaiyangZhou/CoOp, trainers/coop.py): random class-specific context
draws every class's vectors independently from N(0, 0.02); with init words the released code keeps ONE
context initialised from the words and ignores ``class_specific`` (``csc_word_init: shared``, the
default); ``csc_word_init: copies`` gives each class its own copy of the word init instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.label_space import LabelSpace
from vlprompt.prompts.assembler import PromptAssembler
from vlprompt.prompts.context import check_init, init_strategy, initial_context
from vlprompt.prompts.templates import prompt_classname

_LAYOUTS = {
    "end": "{ctx} {class}.",
    "front": "{class} {ctx}.",
    "middle": "{ctx_a} {class} {ctx_b}.",
}


@dataclass
class CoOpConfig(MethodConfig):
    n_ctx: int = 16
    ctx_init: str = ""  # words such as "a photo of a" (sets n_ctx), or "" for N(0, 0.02)
    class_specific: bool = False
    class_position: str = "end"  # end | middle | front
    init_std: float = 0.02
    init_seed: int | None = None  # None: draw from the global RNG (seeded by the engine)
    # context init: "" (words if ctx_init else normal) | normal | word | uniform | vocab | class_label
    init: str = ""
    class_label_fill: str = "vocab"  # class_label init: rest of the positions from sampled vocab, or "cycle"
    # class_specific with ctx_init words: "shared" (released: one context from the words, class_specific
    # ignored) | "copies" (one copy of the word init per class, then trained separately)
    csc_word_init: str = "shared"

    def check(self, where: str) -> None:
        check_init(self.init, self.ctx_init, where)
        if self.csc_word_init not in CSC_WORD_INIT:
            raise VLPromptError(f"{where}: csc_word_init {self.csc_word_init!r} is not one of {list(CSC_WORD_INIT)}")
        if self.class_position not in _LAYOUTS:
            raise VLPromptError(f"{where}: class_position {self.class_position!r} is not one of {sorted(_LAYOUTS)}")
        if self.init_std <= 0:
            raise VLPromptError(f"{where}: init_std must be > 0, got {self.init_std}")


CSC_WORD_INIT = ("shared", "copies")
log = logging.getLogger(__name__)


def context_slots(n_ctx: int, position: str) -> dict[str, int]:
    """How the n context tokens are split around the class name."""
    if position == "middle":
        return {"ctx_a": n_ctx // 2, "ctx_b": n_ctx - n_ctx // 2}
    return {"ctx": n_ctx}


@register_method("coop")
class CoOp(PromptMethod):
    """Unified or class-specific context; class token at the end, middle or front."""

    config_class = CoOpConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: CoOpConfig) -> None:
        super().__init__(backbone, labels, config)
        classnames = self.classnames
        config.check(self.name)  # also when built from a config object, not through from_dict
        strategy = init_strategy(config.init, config.ctx_init)
        class_specific = config.class_specific and not (strategy == "word" and config.csc_word_init == "shared")
        if config.class_specific and not class_specific:
            log.info("coop: class_specific with ctx_init words keeps one shared context, as the released CoOp "
                     "(csc_word_init: copies for one copy per class)")
        n_classes = len(classnames) if class_specific and strategy in ("normal", "uniform") else None
        ctx = initial_context(
            backbone, config.n_ctx, config.ctx_init, config.init_std, config.init_seed, config.init, classnames,
            class_label_fill=config.class_label_fill, n_classes=n_classes,
        )
        self.n_ctx = ctx.shape[-2]
        if class_specific and ctx.dim() == 2:  # word / vocab / class-label init copied per class
            ctx = ctx.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.ctx = nn.Parameter(ctx)
        self.class_agnostic = not class_specific
        self._build_prompts(classnames)

    def _build_prompts(self, classnames: Sequence[str]) -> None:
        template = _LAYOUTS[self.config.class_position]
        self.prompts = PromptAssembler(
            self.backbone,
            template,
            {"class": [prompt_classname(name) for name in classnames]},
            context_slots(self.n_ctx, self.config.class_position),
        )
        self.classnames = list(classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        if not self.class_agnostic and len(classnames) != self.ctx.shape[0]:
            raise VLPromptError(
                "coop: class-specific context is tied to the trained classes; "
                "new class names need unified context (class_specific: false)"
            )
        self._build_prompts(classnames)

    def context_vectors(self) -> dict[str, torch.Tensor]:
        """The learned context split into the template's slots."""
        if self.config.class_position == "middle":
            half = self.n_ctx // 2
            return {"ctx_a": self.ctx[..., :half, :], "ctx_b": self.ctx[..., half:, :]}
        return {"ctx": self.ctx}

    def class_features(self) -> torch.Tensor:
        return F.normalize(self.prompts.encode(**self.context_vectors()), dim=-1)

    def result_metadata(self) -> dict[str, Any]:
        return {**super().result_metadata(), "ctx_init": context_init_record(self.config, self.n_ctx)}


def context_init_record(config: Any, n_ctx: int) -> dict[str, Any]:
    """How the context started (recorded in result JSONs; checkpoints hold the config itself)."""
    return {"strategy": init_strategy(config.init, config.ctx_init), "n_ctx": n_ctx, "seed": config.init_seed,
            "words": config.ctx_init or None}
