"""Tailor on CLIP: single-attribute soft prompts composed to describe attribute combinations.

Tailor (Yang et al., ACL 2023) trains one soft prompt per attribute and concatenates them for
multi-attribute control, with two fixes: a prompt mask (the prompts do not attend to each other) plus
re-indexed position ids (each prompt keeps the positions it was trained at), and an optional trainable
connector between the prompts. Here a class name is a combination "<a> <b>" (first word: attribute A,
e.g. a colour; the rest: attribute B, e.g. a shape):

- stage ``attributes`` (default): prompt A is trained as CoOp on attribute-A labels only
  (``"{ctx_a} {a}."`` over the A words), prompt B on attribute-B labels (``"{ctx_b} {b}."``); the two
  losses share nothing, so this is two separate single-attribute runs on the same images;
- the composed classifier is ``"[SOS] {ctx_a} {ctx_b} {connector} {a} {b}. [EOT]"``; with ``mask`` the
  positions of each prompt get zero attention to those of the other (in a causal tower A precedes B, so
  only B -> A is new); with ``reindex`` prompt B takes positions 1..n as A does, and what follows continues
  from n + 1, as after one prompt in training; the connector and the class words attend to everything;
- stage ``connector``: only the connector trains, on the composed classifier over a few combinations.

Needs `Capability.TEXT_LAYOUT` when ``mask`` or ``reindex`` is on (plain concatenation otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.capabilities import Capability
from vlprompt.backbones.text_layout import TextLayout
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.label_space import LabelSpace
from vlprompt.prompts.assembler import PromptAssembler
from vlprompt.prompts.context import context_class_prompts, initial_context
from vlprompt.prompts.templates import prompt_classname

STAGES = ("attributes", "connector")


@dataclass
class TailorConfig(MethodConfig):
    n_ctx: int = 4  # tokens of each attribute prompt
    ctx_init: str = ""  # words both attribute prompts start from (sets n_ctx), or "" for N(0, init_std)
    n_connector: int = 0  # trainable connector tokens between the prompts and the class words (0: none)
    stage: str = "attributes"  # attributes | connector: what trains (see the module docstring)
    mask: bool = True  # prompt B gets zero attention to prompt A
    reindex: bool = True  # prompt B takes the positions it was trained at (1..n)
    init_std: float = 0.02
    init_seed: int | None = None

    def check(self, where: str) -> None:
        if self.stage not in STAGES:
            raise VLPromptError(f"{where}: stage {self.stage!r} is not one of {', '.join(STAGES)}")
        if self.n_ctx < 1 and not self.ctx_init:
            raise VLPromptError(f"{where}: n_ctx must be at least 1, got {self.n_ctx}")
        if self.n_connector < 0:
            raise VLPromptError(f"{where}: n_connector must be >= 0, got {self.n_connector}")
        if self.stage == "connector" and self.n_connector == 0:
            raise VLPromptError(f"{where}: stage 'connector' trains the connector, so n_connector must be at least 1")


def split_combination(name: str) -> tuple[str, str]:
    """``"red circle"`` -> ``("red", "circle")``: the first word is attribute A, the rest attribute B."""
    words = prompt_classname(name).split()
    if len(words) < 2:
        raise VLPromptError(f"tailor: class {name!r} is not a combination '<attribute A> <attribute B>' (two or more words)")
    return words[0], " ".join(words[1:])


def _vocabulary(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


def composition_layout(length: int, pos_a: torch.Tensor, pos_b: torch.Tensor, mask: bool, reindex: bool) -> TextLayout:
    """Tailor's layout over `length` positions with prompt A at `pos_a` and prompt B at `pos_b` (B right
    after A): each prompt's queries blocked from the other's keys; B re-indexed to A's positions and every later position
    shifted back by len(B)."""
    blocked = None
    if mask:
        blocked = torch.zeros(length, length, dtype=torch.bool)
        blocked[pos_b.view(-1, 1), pos_a.view(1, -1)] = True
        blocked[pos_a.view(-1, 1), pos_b.view(1, -1)] = True  # already so in a causal tower; not in a bidirectional one
    position_ids = None
    if reindex:
        position_ids = torch.arange(length)
        n = len(pos_b)
        position_ids[pos_b] = pos_a[:n] if len(pos_a) >= n else torch.arange(n) + int(pos_a[0])
        after = torch.arange(length) > int(pos_b.max())
        position_ids[after] -= n
    return TextLayout(blocked=blocked, position_ids=position_ids)


@register_method("tailor", TailorConfig)
class Tailor(PromptMethod):
    """Two attribute prompts (+ an optional connector) composed under Tailor's mask and positions."""

    config_class = TailorConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: TailorConfig) -> None:
        super().__init__(backbone, labels, config)
        if config.mask or config.reindex:
            backbone.require(Capability.TEXT_LAYOUT, "tailor", "set mask: false and reindex: false for plain concatenation")
        seed = config.init_seed
        ctx_a = initial_context(backbone, config.n_ctx, config.ctx_init, config.init_std, seed)
        ctx_b = initial_context(backbone, config.n_ctx, config.ctx_init, config.init_std, None if seed is None else seed + 1)
        self.n_ctx = ctx_a.shape[0]
        self.ctx_a = nn.Parameter(ctx_a)
        self.ctx_b = nn.Parameter(ctx_b)
        if config.n_connector:
            self.connector = nn.Parameter(
                initial_context(backbone, config.n_connector, "", config.init_std, None if seed is None else seed + 2)
            )
        trains = {"attributes": ("ctx_a", "ctx_b"), "connector": ("connector",)}[config.stage]
        for name, param in self.named_parameters():
            param.requires_grad_(name in trains)
        self._build(self.classnames)

    # -- prompts -----------------------------------------------------------------------------

    def _build(self, classnames: Sequence[str]) -> None:
        parts = [split_combination(name) for name in classnames]
        self.attrs_a = _vocabulary([a for a, _ in parts])
        self.attrs_b = _vocabulary([b for _, b in parts])
        index_a = {a: i for i, a in enumerate(self.attrs_a)}
        index_b = {b: i for i, b in enumerate(self.attrs_b)}
        self.register_buffer("label_a", torch.tensor([index_a[a] for a, _ in parts]), persistent=False)
        self.register_buffer("label_b", torch.tensor([index_b[b] for _, b in parts]), persistent=False)
        m = self.config.n_connector
        learned = {"ctx_a": self.n_ctx, "ctx_b": self.n_ctx, **({"conn": m} if m else {})}
        self.composed = PromptAssembler(
            self.backbone, "{ctx_a}{ctx_b}" + ("{conn}" if m else "") + " {class}.",
            {"class": [f"{a} {b}" for a, b in parts]}, learned,
        )
        self.prompt_a = context_class_prompts(self.backbone, self.attrs_a, self.n_ctx)
        self.prompt_b = context_class_prompts(self.backbone, self.attrs_b, self.n_ctx)
        length = self.composed.token_ids.shape[1]
        pos_a, pos_b = self.composed.positions("ctx_a")[0], self.composed.positions("ctx_b")[0]
        self.layout = composition_layout(length, pos_a, pos_b, self.config.mask, self.config.reindex)
        self.classnames = list(classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self._build(classnames)

    def composed_embeds(self) -> torch.Tensor:
        vectors = {"ctx_a": self.ctx_a, "ctx_b": self.ctx_b}
        if self.config.n_connector:
            vectors["conn"] = self.connector
        return self.composed.assemble(**vectors)

    def class_features(self) -> torch.Tensor:
        embeds, eot = self.composed_embeds(), self.composed.eot_index
        if self.config.mask or self.config.reindex:
            feats = self.backbone.encode_text_with_layout(embeds, eot, self.layout)
        else:
            feats = self.backbone.encode_text_embeds(embeds, eot)
        return F.normalize(feats, dim=-1)

    def attribute_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each attribute prompt's own classifier: ``[A, D]`` over the A words, ``[B, D]`` over the B words."""
        return (F.normalize(self.prompt_a.encode(ctx=self.ctx_a), dim=-1),
                F.normalize(self.prompt_b.encode(ctx=self.ctx_b), dim=-1))

    # -- training ----------------------------------------------------------------------------

    def train_step(self, batch, model, backward):
        if self.config.stage == "connector":
            return super().train_step(batch, model, backward)
        image = self.image_features(batch)
        feats_a, feats_b = self.attribute_features()
        scale = self.backbone.logit_scale
        logits_a = scale * image @ feats_a.to(image.dtype).t()
        logits_b = scale * image @ feats_b.to(image.dtype).t()
        labels_a, labels_b = self.label_a[batch["labels"]], self.label_b[batch["labels"]]
        loss_a = F.cross_entropy(logits_a.float(), labels_a)
        loss_b = F.cross_entropy(logits_b.float(), labels_b)
        loss = loss_a + loss_b
        backward(loss)
        return loss, {
            "loss": float(loss.detach()), "loss_a": float(loss_a.detach()), "loss_b": float(loss_b.detach()),
            "acc_a": float((logits_a.argmax(-1) == labels_a).float().mean()) * 100,
            "acc_b": float((logits_b.argmax(-1) == labels_b).float().mean()) * 100,
        }

    # every prompt tensor is saved, whatever the stage trains
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.named_parameters()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        if set(state) != set(own):
            raise VLPromptError(f"tailor: checkpoint holds {sorted(state)} but this config has {sorted(own)}")
        with torch.no_grad():
            for key, value in state.items():
                if own[key].shape != value.shape:
                    raise VLPromptError(
                        f"tailor: {key} has shape {tuple(value.shape)} in the checkpoint, {tuple(own[key].shape)} here"
                    )
                own[key].copy_(value)

    def result_metadata(self) -> dict[str, Any]:
        return {**super().result_metadata(), "attributes_a": self.attrs_a, "attributes_b": self.attrs_b}


__all__ = ["Tailor", "TailorConfig", "composition_layout", "split_combination"]
