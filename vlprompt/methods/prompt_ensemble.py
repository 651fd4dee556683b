"""Prompt ensembling (Lester, Al-Rfou & Constant, EMNLP'21, section 6): N soft prompts, one frozen model.

N unified contexts ``ctx [N, n, W]`` in ``"{ctx} {class}."``, each with its own init (a strategy per
member, cycled; a seeded member m draws with ``init_seed + m``). Training runs all N in ONE batched pass
of the text tower: the assembler's batch dimension carries the members (``[N, C, n, W]``), and in a causal
tower each member's shared ``[SOS] + ctx`` prefix is encoded once. The loss is the sum of the members'
cross-entropies, so each member gets exactly the gradient it would get trained alone (disjoint
parameters). Prediction combines the members:

- ``average`` (default): p(y|x) = mean_m p_m(y|x); logits returned are log p(y|x);
- ``vote``: majority vote of the members' top-1, ties broken by the averaged probability; the returned
  scores are ``votes + mean_m p_m(y|x)`` (an argmax-consistent score, not log-probabilities).

One checkpoint holds all N prompts (``ctx``). Lester et al. report that the vote beats both the average
and the best single member on SuperGLUE.
"""

from __future__ import annotations

import math
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
from vlprompt.prompts.context import check_init, context_class_prompts, init_strategy, initial_context

COMBINE = ("average", "vote")


@dataclass
class PromptEnsembleConfig(MethodConfig):
    n_prompts: int = 4
    n_ctx: int = 4
    init: Any = "vocab"  # a strategy, or a list of strategies cycled over the members
    ctx_init: str = ""  # words for members whose init is "word" (their token count must equal n_ctx)
    init_std: float = 0.02
    init_seed: int | None = None  # None: global RNG (seeded by the engine); else member m uses init_seed + m
    class_label_fill: str = "vocab"
    combine: str = "average"  # average | vote

    def member_inits(self) -> list[str]:
        inits = [self.init] if isinstance(self.init, str) else list(self.init)
        return [init_strategy(inits[m % len(inits)], self.ctx_init) for m in range(self.n_prompts)]

    def check(self, where: str) -> None:
        if self.n_prompts < 1 or self.n_ctx < 1:
            raise VLPromptError(f"{where}: n_prompts and n_ctx must be >= 1, got {self.n_prompts} and {self.n_ctx}")
        if self.combine not in COMBINE:
            raise VLPromptError(f"{where}: combine {self.combine!r} is not one of {list(COMBINE)}")
        inits = [self.init] if isinstance(self.init, str) else self.init
        if not isinstance(inits, (list, tuple)) or not inits:
            raise VLPromptError(f"{where}: init must be a strategy or a non-empty list of them")
        for strategy in inits:
            check_init(strategy, "", where)


def combine_probabilities(member_logits: torch.Tensor, how: str = "average") -> torch.Tensor:
    """``[N, B, C]`` member logits -> ``[B, C]`` ensemble scores (see the module docstring)."""
    log_probs = F.log_softmax(member_logits.float(), dim=-1)
    mean_log_prob = torch.logsumexp(log_probs, dim=0) - math.log(member_logits.shape[0])
    if how == "average":
        return mean_log_prob
    if how == "vote":
        votes = F.one_hot(member_logits.argmax(-1), member_logits.shape[-1]).sum(0).float()
        return votes + mean_log_prob.exp()
    raise VLPromptError(f"prompt ensemble: combine {how!r} is not one of {list(COMBINE)}")


@register_method("prompt_ensemble")
class PromptEnsemble(PromptMethod):
    config_class = PromptEnsembleConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: PromptEnsembleConfig) -> None:
        super().__init__(backbone, labels, config)
        members = []
        for m, strategy in enumerate(config.member_inits()):
            seed = config.init_seed + m if config.init_seed is not None else None
            ctx = initial_context(
                backbone, config.n_ctx, config.ctx_init, config.init_std, seed, strategy, self.classnames,
                class_label_fill=config.class_label_fill,
            )
            if ctx.shape[0] != config.n_ctx:
                raise VLPromptError(
                    f"prompt_ensemble: member {m} ({strategy}) starts with {ctx.shape[0]} tokens, n_ctx is {config.n_ctx}"
                )
            members.append(ctx)
        self.ctx = nn.Parameter(torch.stack(members))  # [N, n, W]
        self._last_member_logits: torch.Tensor | None = None
        self._build_prompts(self.classnames)

    def _build_prompts(self, classnames: Sequence[str]) -> None:
        self.prompts = context_class_prompts(self.backbone, classnames, self.config.n_ctx)
        self.classnames = list(classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self._build_prompts(classnames)

    def class_features(self) -> None:
        return None  # the ensemble is not one linear classifier

    def member_features(self) -> torch.Tensor:
        """``[N, C, D]`` normalised class features of every member, in one batched text-tower call."""
        N, n, W = self.ctx.shape
        ctx = self.ctx.unsqueeze(1).expand(N, len(self.classnames), n, W)
        return F.normalize(self.prompts.encode(ctx=ctx), dim=-1)

    def member_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[N, B, C]``: each member's CLIP logits."""
        image = self.image_features(batch)
        text = self.member_features().to(image.dtype)
        return self.backbone.logit_scale * torch.einsum("bd,ncd->nbc", image, text)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        member = self.member_logits(batch)
        self._last_member_logits = member if self.training else None
        return combine_probabilities(member, self.config.combine)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        member, self._last_member_logits = self._last_member_logits, None
        if member is None:
            return super().loss(logits, batch)
        labels = batch["labels"]
        per_member = torch.stack([F.cross_entropy(m.float(), labels) for m in member])
        loss = per_member.sum()  # each member's own gradient, as if trained alone
        acc = (logits.argmax(-1) == labels).float().mean()
        return loss, {"loss": float(per_member.mean().detach()), "acc": float(acc) * 100}

    def result_metadata(self) -> dict[str, Any]:
        return {
            **super().result_metadata(),
            "ensemble": {"n_prompts": int(self.ctx.shape[0]), "combine": self.config.combine,
                         "inits": self.config.member_inits(), "seed": self.config.init_seed},
        }
