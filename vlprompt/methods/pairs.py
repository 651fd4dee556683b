"""Pair-scoring methods for compositional zero-shot (CZSL): the shared base, zero-shot CLIP and a
CoOp-style learned prefix (CSP and DFSP build on these pieces in their own modules).

Every method is an ordinary `PromptMethod` whose label space is `PairLabels` (attributes, objects and
the current candidate pairs; ``classnames`` = "attr obj"), so the generic `Trainer` trains it:
``forward(batch) -> [B, P]`` logits over the current pairs (the train pairs while training).
Evaluation goes through `prepare_eval` / `eval_image_features` / `eval_text_features` so text is
encoded once per evaluation, in chunks, whatever the number of candidate pairs.

Prompts ("[prefix] [attr] [obj]") are built with one `PromptAssembler` holding a single tokenized
prompt; per-pair attribute / object vectors enter through its batch axis, so nothing of size
``P x L x W`` exists beyond one chunk of pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import MethodConfig, PromptMethod, register_method
from vlprompt.methods.label_space import LabelSpace, PairLabels
from vlprompt.prompts.assembler import PromptAssembler
from vlprompt.prompts.context import word_embeddings


def clean_name(name: str, underscores: bool = False) -> str:
    """CSP/DFSP's text form of a primitive, as released: '.' -> ' ', lower-case (UT-Zappos' dotted
    names). ``underscores=True`` also turns '_' into a space (C-GQA has names such as ``traffic_light``,
    which the released code tokenizes with the underscore)."""
    name = name.replace(".", " ")
    return (name.replace("_", " ") if underscores else name).lower()


@torch.no_grad()
def mean_token_embeddings(backbone: Backbone, names: Sequence[str], underscores: bool = False) -> torch.Tensor:
    """``[N, W]``: mean of each name's BPE token embeddings between SOT and EOT (CSP's init)."""
    ids = backbone.tokenize([clean_name(n, underscores) for n in names])
    eot = backbone.eot_index(ids)
    emb = backbone.embed_tokens(ids).float().cpu()
    pos = torch.arange(ids.shape[1])[None]
    mask = ((pos >= backbone.start_length) & (pos < eot[:, None])).float()
    return (emb * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)


def group_mean(values: torch.Tensor, groups: torch.Tensor, n_groups: int, dim: int = 0,
               empty: float = 0.0) -> torch.Tensor:
    """Mean of `values` over positions along `dim` that share a group id, vectorised (index_add).

    Groups with no member get `empty` (never NaN).
    """
    values = values.movedim(dim, 0)
    shape = (n_groups, *values.shape[1:])
    sums = torch.zeros(shape, dtype=values.dtype, device=values.device).index_add_(0, groups, values)
    counts = torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add_(
        0, groups, torch.ones_like(groups, dtype=values.dtype))
    view = (n_groups,) + (1,) * (values.dim() - 1)
    out = sums / counts.clamp(min=1).view(view)
    out = torch.where(counts.view(view) > 0, out, torch.full_like(out, empty))
    return out.movedim(0, dim)


@dataclass
class PairMethodConfig(MethodConfig):
    text_batch: int = 1024  # pairs per text-encoder chunk at evaluation
    underscores_as_spaces: bool = False  # names: '.' -> ' ' as released; True: '_' -> ' ' too (C-GQA names)


class PairMethod(PromptMethod):
    """Base: primitives, the current candidate pairs and the eval protocol hooks."""

    config_class: ClassVar[type[MethodConfig]] = PairMethodConfig
    _text_memo: dict[str, Any] | None = None  # set inside `text_reused`

    def __init__(self, backbone: Backbone, labels: LabelSpace, config: PairMethodConfig) -> None:
        if not isinstance(labels, PairLabels):
            raise VLPromptError(f"{self.name}: a CZSL method needs attribute-object pairs (PairLabels), "
                                f"got {type(labels).__name__}")
        super().__init__(backbone, labels, config)
        self.attrs, self.objs = list(labels.attrs), list(labels.objs)
        self.register_buffer("pair_index", labels.pair_tensor(), persistent=False)

    @property
    def n_attrs(self) -> int:
        return len(self.attrs)

    def set_pairs(self, pairs: torch.Tensor) -> None:
        """Make `pairs` ``[P, 2]`` the current candidate set (train pairs to train, phase pairs to test)."""
        self.set_label_space(self.label_space.with_pairs(pairs))

    def set_label_space(self, labels: LabelSpace | Sequence[str]) -> None:
        """Other candidate pairs over the same primitives (the learned vectors belong to the primitives)."""
        if not isinstance(labels, PairLabels):
            raise VLPromptError(f"{self.name}: CZSL methods take candidate pairs (PairLabels), not class names")
        if (labels.attrs, labels.objs) != (self.label_space.attrs, self.label_space.objs):
            raise VLPromptError(
                f"{self.name}: trained on {len(self.attrs)} attributes and {len(self.objs)} objects; candidate "
                "pairs must use the same primitives in the same order"
            )
        self.pair_index = labels.pair_tensor().to(self.pair_index.device)
        self.label_space = labels
        self.classnames = labels.names

    def set_classnames(self, classnames: Sequence[str]) -> None:
        raise VLPromptError(f"{self.name}: CZSL methods take candidate pairs via set_pairs(), not class names")

    # -- text side ------------------------------------------------------------------------

    def pair_text_features(self, pairs: torch.Tensor) -> torch.Tensor:
        """``[P, D]`` raw (not normalised) text features of `pairs` (grad flows to learned vectors)."""
        raise NotImplementedError

    def chunked_text_features(self, pairs: torch.Tensor) -> torch.Tensor:
        step = self.config.text_batch
        return torch.cat([self.pair_text_features(pairs[i : i + step]) for i in range(0, len(pairs), step)])

    def class_features(self) -> torch.Tensor:
        return F.normalize(self.chunked_text_features(self.pair_index), dim=-1)

    # -- evaluation protocol --------------------------------------------------------------

    @torch.no_grad()
    def prepare_eval(self, pairs: torch.Tensor) -> dict[str, Any]:
        """Everything image-independent for scoring `pairs`: computed once per evaluation."""
        return {"text": F.normalize(self.chunked_text_features(pairs.to(self.pair_index.device)).float(), dim=-1)}

    def eval_image_features(self, batch: dict[str, torch.Tensor], state: dict[str, Any]) -> torch.Tensor:
        return self.image_features(batch).float()

    def eval_text_features(self, state: dict[str, Any], cols: slice) -> torch.Tensor:
        return state["text"][cols]

    @contextmanager
    def text_reused(self) -> Iterator[None]:
        """Within (eval mode, no grad): `forward` encodes the current pairs' text once and reuses it for
        every batch, since it does not depend on the images (the validation loss of best-epoch selection)."""
        self._text_memo = {}
        try:
            yield
        finally:
            self._text_memo = None

    def _pair_text(self, compute: Callable[[], Any]) -> Any:
        """``compute()``, or its value memoised inside `text_reused`."""
        if self._text_memo is None:
            return compute()
        if "text" not in self._text_memo:
            self._text_memo["text"] = compute()
        return self._text_memo["text"]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.image_features(batch)
        text = self._pair_text(lambda: F.normalize(self.pair_text_features(self.pair_index), dim=-1))
        return self.backbone.logit_scale * image @ text.to(image.dtype).t()


class SlotPrompt(nn.Module):
    """"{prefix} {attr} {obj}" with one-token attr/obj slots, pairs fed through the batch axis."""

    def __init__(self, backbone: Backbone, prefix: str | None, n_ctx: int = 0) -> None:
        super().__init__()
        if prefix is None:  # learned prefix slot
            template, learned = "{ctx} {attr} {obj}", {"ctx": n_ctx, "attr": 1, "obj": 1}
        else:
            template, learned = prefix + " {attr} {obj}", {"attr": 1, "obj": 1}
        self.assembler = PromptAssembler(backbone, template, {}, learned)
        # pairs ride the batch axis (one prompt per "image"): a shared prefix would be re-run per pair
        # anyway, so take the plain path
        self.assembler.use_shared_prefix = False
        self.has_ctx = prefix is None

    def encode(self, attr_vecs: torch.Tensor, obj_vecs: torch.Tensor, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """attr/obj vectors ``[P, W]`` -> text features ``[P, D]``."""
        vectors = {"attr": attr_vecs[:, None, None, :], "obj": obj_vecs[:, None, None, :]}
        if self.has_ctx:
            vectors["ctx"] = ctx
        return self.assembler.encode(**vectors)[:, 0]

    def token_states(
        self, attr_vecs: torch.Tensor, obj_vecs: torch.Tensor, ctx: torch.Tensor | None = None,
        length: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer token states ``[P, L, W]`` (before the final norm) and each prompt's EOT index.

        `length`: run the tower on the first `length` positions (padding after the end token included,
        as a CLIP loaded with that context length does); None: cut after the end token."""
        vectors = {"attr": attr_vecs[:, None, None, :], "obj": obj_vecs[:, None, None, :]}
        if self.has_ctx:
            vectors["ctx"] = ctx
        embeds = self.assembler.assemble(**vectors)[:, 0]
        eot = self.assembler.eot_index.repeat(len(embeds))
        if length is None:
            return self.assembler.backbone.text_token_states(embeds, eot), eot
        return self.assembler.backbone.text_token_states(embeds[:, :length], eot, truncate=False), eot


# -- zero-shot --------------------------------------------------------------------------------

@dataclass
class ZeroShotPairConfig(PairMethodConfig):
    template: str = "a photo of {attr} {obj}"


@register_method("zero-shot", ZeroShotPairConfig, tasks=("czsl",))
class ZeroShotPairs(PairMethod):
    """CLIP with the hard prompt "a photo of {attr} {obj}" (CSP's `clip` baseline)."""

    def pair_text_features(self, pairs: torch.Tensor) -> torch.Tensor:
        u = self.config.underscores_as_spaces
        texts = [self.config.template.format(attr=clean_name(self.attrs[a], u), obj=clean_name(self.objs[o], u))
                 for a, o in pairs.tolist()]
        with torch.no_grad():
            return self.backbone.encode_text(texts)


# -- CoOp prefix, CSP --------------------------------------------------------------------------

@dataclass
class CoOpPairConfig(PairMethodConfig):
    ctx_init: str = "a photo of"  # the learned prefix starts from these words (sets n_ctx)


@register_method("coop", CoOpPairConfig, tasks=("czsl",))
class CoOpPairs(PairMethod):
    """CSP repo's CoOp baseline: a learned prefix; attr/obj vectors frozen at their mean-BPE init."""

    def __init__(self, backbone: Backbone, labels: PairLabels, config: CoOpPairConfig) -> None:
        super().__init__(backbone, labels, config)
        ctx = word_embeddings(backbone, config.ctx_init)
        self.ctx = nn.Parameter(ctx)
        self.register_buffer("vocab", mean_token_embeddings(backbone, self.attrs + self.objs,
                                                            config.underscores_as_spaces), persistent=False)
        self.prompt = SlotPrompt(backbone, None, ctx.shape[0])

    def pair_text_features(self, pairs: torch.Tensor) -> torch.Tensor:
        vocab = self.vocab
        return self.prompt.encode(vocab[pairs[:, 0]], vocab[self.n_attrs + pairs[:, 1]], self.ctx)
