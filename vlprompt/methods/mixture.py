"""Mixtures of soft prompts (Qin & Eisner, NAACL'21; released code hiaoxui/soft-prompts).

K soft prompts start from K hand-written templates (a template bank): template k = ``before {} after``
becomes ``{pre} {class} {post}`` with the learned slots initialised to the embeddings of `before` and
`after` (the released code trains an offset ``bias[0]`` on the frozen template embeddings, which is
the same parameterisation). The classifier marginalises over the prompt:

    p(y | x) = sum_k w_k p_k(y | x),   p_k(y | x) = softmax_y(s <v_x, t_{k,y}>)

and `forward` returns log p(y | x) (``logsumexp_k(log w_k + log p_k)``). Weights (``weights``):

- ``em`` (default, as released): w starts uniform; E-step: responsibilities
  r_{x,k} = w_k p_k(y|x) / sum_k' w_k' p_k'(y|x) (no gradient); the prompts take a gradient step on the
  responsibility-weighted log-likelihood sum_k r_{x,k} log p_k(y|x); M-step (closed form):
  w_k = sum_x r_{x,k} / sum_{x,k'} r_{x,k'}. Deviation: the released trainer runs the E-step over the
  whole training set once per epoch; here it runs on each batch with the current prompts and the M-step
  pools the responsibilities of the last ``m_step_every`` steps (1: every batch; with 1- to 4-shot
  world sets a batch is most of an epoch).
- ``sgd``: w = softmax(learned logits), trained with the prompts on -log p(y|x);
- ``data``: data-dependent w(x) = softmax(A v_x + b), A and b zero-initialised (uniform at start) and
  trained by SGD (the released ``conditional_prompt`` instead multiplies w by a Bayes p(t|x) from the LM,
  which a CLIP classifier has no counterpart for);
- ``uniform``: fixed equal weights (no weight learning).

``deep: true`` adds Qin & Eisner's deep perturbation: learned offsets, zero-initialised, added to the
hidden states of each template's prefix positions at the input of every text block after the first
(``DeepPrompts(additive=True)``; the released ``bias[1:]``). Only the prefix positions (contiguous after
[SOS]) are perturbed: the suffix moves with the class name's length. Needs a backbone with
`Capability.DEEP_TEXT_PROMPTS`.

`result_metadata` reports the weights and the effective number of prompts exp(entropy(w)).
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
from vlprompt.backbones.deep_prompts import DeepPrompts
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.label_space import LabelSpace
from vlprompt.methods.lasp import resolve_templates
from vlprompt.prompts.assembler import PromptAssembler
from vlprompt.prompts.context import word_embeddings
from vlprompt.prompts.templates import SLOT, prompt_classname

WEIGHTS = ("em", "sgd", "data", "uniform")


@dataclass
class MixtureConfig(MethodConfig):
    templates: Any = "imagenet_select7"  # bank name, "{}" template, text file or list: one soft prompt each
    weights: str = "em"  # em | sgd | data | uniform
    m_step_every: int = 1  # em: pool the responsibilities of this many steps per M-step
    deep: bool = False  # deep perturbation of the prefix positions' hidden states

    def check(self, where: str) -> None:
        if self.weights not in WEIGHTS:
            raise VLPromptError(f"{where}: weights {self.weights!r} is not one of {list(WEIGHTS)}")
        if self.m_step_every < 1:
            raise VLPromptError(f"{where}: m_step_every must be >= 1, got {self.m_step_every}")


def responsibilities(log_weights: torch.Tensor, log_p_label: torch.Tensor) -> torch.Tensor:
    """E-step: ``[B, K]`` r_{x,k} = w_k p_k(y|x) / sum_k' w_k' p_k'(y|x) from ``log w [K]`` (or ``[B, K]``) and
    ``log p_k(y_x | x) [B, K]``."""
    joint = log_weights + log_p_label
    return torch.softmax(joint, dim=-1)


def m_step(resp: torch.Tensor) -> torch.Tensor:
    """M-step: ``w_k = sum_x r_{x,k} / sum_{x,k'} r_{x,k'}`` from ``[B, K]`` responsibilities (or their sums ``[K]``)."""
    total = resp.sum(dim=0) if resp.dim() == 2 else resp
    return total / total.sum()


def effective_number(weights: torch.Tensor) -> float:
    """exp(entropy(w)): 1 for one-hot weights, K for uniform ones (the released ``effective_pattern_num``)."""
    w = weights.float().clamp_min(0)
    w = w / w.sum()
    entropy = -(w * torch.log(w.clamp_min(1e-30))).sum()
    return float(torch.exp(entropy))


def split_template(template: str) -> tuple[str, str]:
    """``"a photo of a {}."`` -> ``("a photo of a", ".")``."""
    if template.count(SLOT) != 1:
        raise VLPromptError(f"mixture: template {template!r} must hold exactly one '{{}}'")
    before, after = template.split(SLOT)
    return before.strip(), after.strip()


@register_method("mixture")
class SoftPromptMixture(PromptMethod):
    config_class = MixtureConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: MixtureConfig) -> None:
        super().__init__(backbone, labels, config)
        self.templates = resolve_templates(config)
        self.parts = [split_template(t) for t in self.templates]
        K = len(self.templates)
        self.vectors = nn.ParameterDict()
        for k, (before, after) in enumerate(self.parts):
            if before:
                self.vectors[f"pre{k}"] = nn.Parameter(word_embeddings(backbone, before))
            if after:
                self.vectors[f"post{k}"] = nn.Parameter(word_embeddings(backbone, after))
        self.deep = nn.ParameterDict()
        if config.deep:
            backbone.require(Capability.DEEP_TEXT_PROMPTS, "mixture (deep: true)")
            blocks = backbone.text_block_count()
            for k in range(K):
                if f"pre{k}" in self.vectors and blocks > 1:
                    n = self.vectors[f"pre{k}"].shape[0]
                    self.deep[f"deep{k}"] = nn.Parameter(torch.zeros(blocks - 1, n, backbone.identity.width))
        embed_dim = backbone.identity.embed_dim
        self.register_buffer("em_weights", torch.full((K,), 1.0 / K))  # em / uniform
        self.weight_logits = nn.Parameter(torch.zeros(K)) if config.weights == "sgd" else None
        self.gate = nn.Linear(embed_dim, K) if config.weights == "data" else None
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
        self.register_buffer("_resp_sum", torch.zeros(K), persistent=False)
        self._resp_steps = 0
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (log p_k [K, B, C], log w) of a training forward
        self._seen_weights: torch.Tensor | None = None  # data weights: mean w(x) of the last training batch
        self._build_prompts(self.classnames)

    # -- prompts ------------------------------------------------------------------------------

    def _build_prompts(self, classnames: Sequence[str]) -> None:
        names = [prompt_classname(c) for c in classnames]
        assemblers = []
        for k, (before, after) in enumerate(self.parts):
            learned = {}
            template = "{class}"
            if before:
                learned["pre"] = self.vectors[f"pre{k}"].shape[0]
                template = "{pre} " + template
            if after:
                learned["post"] = self.vectors[f"post{k}"].shape[0]
                template = template + " {post}"
            assemblers.append(PromptAssembler(self.backbone, template, {"class": names}, learned))
        self.prompts = nn.ModuleList(assemblers)
        self.classnames = list(classnames)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        self._build_prompts(classnames)

    def _slot_vectors(self, k: int) -> dict[str, torch.Tensor]:
        out = {}
        if f"pre{k}" in self.vectors:
            out["pre"] = self.vectors[f"pre{k}"]
        if f"post{k}" in self.vectors:
            out["post"] = self.vectors[f"post{k}"]
        return out

    def component_features(self) -> torch.Tensor:
        """``[K, C, D]`` normalised class features of every soft prompt."""
        feats = []
        for k, assembler in enumerate(self.prompts):
            vectors = self._slot_vectors(k)
            if f"deep{k}" in self.deep:
                offsets = self.deep[f"deep{k}"]
                deep = DeepPrompts(tuple(offsets.unbind(0)), start=int(assembler.positions("pre")[0, 0]), additive=True)
                embeds = assembler.assemble(**vectors)
                feats.append(self.backbone.encode_text_embeds(embeds, assembler.eot_index, deep=deep))
            else:
                feats.append(assembler.encode(**vectors))
        return F.normalize(torch.stack(feats), dim=-1)

    def class_features(self) -> None:
        return None  # a mixture of classifiers is not one linear classifier

    # -- weights ------------------------------------------------------------------------------

    def log_weights(self, image: torch.Tensor) -> torch.Tensor:
        """``[K]`` or ``[B, K]`` (data-dependent) log mixture weights."""
        if self.weight_logits is not None:
            return F.log_softmax(self.weight_logits.float(), dim=-1)
        if self.gate is not None:
            return F.log_softmax(self.gate(image.float()), dim=-1)
        return torch.log(self.em_weights.float())

    def mixture_weights(self) -> torch.Tensor:
        """``[K]`` the weights now (data-dependent: the mean w(x) of the last training batch, or the
        weights of a zero image feature)."""
        if self.gate is not None:
            if self._seen_weights is not None:
                return self._seen_weights
            return torch.softmax(self.gate.bias.detach().float(), dim=-1)
        return self.log_weights(torch.zeros(0)).detach().exp()

    # -- forward and loss ---------------------------------------------------------------------

    def component_log_probs(self, image: torch.Tensor) -> torch.Tensor:
        """``[K, B, C]`` log p_k(y | x)."""
        text = self.component_features().to(image.dtype)
        logits = self.backbone.logit_scale * torch.einsum("bd,kcd->kbc", image, text)
        return F.log_softmax(logits.float(), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.image_features(batch)
        log_p = self.component_log_probs(image)
        log_w = self.log_weights(image)  # [K] or [B, K]
        log_w_bk = log_w.t().unsqueeze(-1) if log_w.dim() == 2 else log_w.view(-1, 1, 1)
        self._last = (log_p, log_w) if self.training else None
        return torch.logsumexp(log_w_bk + log_p, dim=0)  # [B, C] = log p(y | x)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        last, self._last = self._last, None
        labels = batch["labels"]
        acc = float((logits.argmax(-1) == labels).float().mean()) * 100
        if last is None or self.config.weights != "em":
            loss = F.nll_loss(logits.float(), labels)  # -log sum_k w_k p_k(y|x)
            if last is not None and self.gate is not None:
                self._seen_weights = last[1].detach().exp().mean(0)
            return loss, {"loss": float(loss.detach()), "acc": acc, "effective_prompts": effective_number(self.mixture_weights())}
        log_p, log_w = last
        log_p_label = log_p.gather(-1, labels.view(1, -1, 1).expand(log_p.shape[0], -1, 1)).squeeze(-1).t()  # [B, K]
        with torch.no_grad():
            resp = responsibilities(log_w.detach(), log_p_label.detach())  # E-step
        loss = -(resp * log_p_label).sum(-1).mean()
        with torch.no_grad():  # M-step
            self._resp_sum += resp.sum(0)
            self._resp_steps += 1
            if self._resp_steps >= self.config.m_step_every:
                self.em_weights.copy_(m_step(self._resp_sum))
                self._resp_sum.zero_()
                self._resp_steps = 0
        nll = -float(torch.logsumexp(log_w.detach().view(1, -1) + log_p_label.detach(), dim=-1).mean())
        stats = {"loss": float(loss.detach()), "nll": nll, "acc": acc}
        return loss, {**stats, "effective_prompts": effective_number(self.em_weights)}

    # -- checkpoint: the EM weights are state too -------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = super().trainable_state()
        if self.config.weights == "em":
            state["em_weights"] = self.em_weights.detach()
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        weights = state.pop("em_weights", None)
        if self.config.weights == "em":
            if weights is None:
                raise VLPromptError("mixture: checkpoint holds no em_weights (saved with another weights mode?)")
            with torch.no_grad():
                self.em_weights.copy_(weights)
        super().load_trainable_state(state)

    def result_metadata(self) -> dict[str, Any]:
        w = self.mixture_weights()
        return {
            **super().result_metadata(),
            "mixture": {
                "templates": list(self.templates), "weights_mode": self.config.weights, "deep": self.config.deep,
                "weights": [round(float(x), 6) for x in w], "effective_prompts": effective_number(w),
                "max_effective_prompts": len(self.templates),
            },
        }


__all__ = ["MixtureConfig", "SoftPromptMixture", "effective_number", "m_step", "responsibilities", "split_template"]
