"""Pieces shared by the deep and multi-modal prompt methods (VPT, IVLP, MaPLe, PromptSRC).

The parameters live in the method; the backbone only receives them per call (`DeepPrompts`,
`VisualPrompts`), so its frozen weights stay untouched and shared.

Released behaviour reproduced here (muzairkhattak/multimodal-prompt-learning, muzairkhattak/PromptSRC):

- The text context is initialised from the first ``n_ctx`` tokens of ``ctx_init`` when ``n_ctx <= 4``, and the
  prompt keeps the rest of ``ctx_init`` as fixed words: with ``n_ctx = 2`` and ``"a photo of a"`` the prompt is
  ``[SOS] <ctx> <ctx> of a <class>.``. Otherwise ``n_ctx`` tokens drawn from N(0, 0.02) before the class name.
- Prompt depth J: the shallow prompt is the input of block 0; blocks 1..J-1 get their own tokens (N(0, 0.02)),
  which replace the prompt positions' states (text: after [SOS]; image: the inserted visual tokens).
- Visual tokens have no positional embedding and go in before ``ln_pre``. The release appends them after the
  patch tokens; vlprompt inserts them after the class token. Without a causal mask and with class-token pooling
  the two orders compute the same output (attention is permutation-equivariant), up to float rounding.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.capabilities import Capability
from vlprompt.backbones.deep_prompts import DeepPrompts, VisualPrompts
from vlprompt.errors import VLPromptError
from vlprompt.prompts.assembler import PromptAssembler
from vlprompt.prompts.context import word_embeddings
from vlprompt.prompts.templates import prompt_classname


def check_depth(method: str, what: str, depth: int, blocks: int, minimum: int, clamp: bool = False) -> int:
    """The depth to use. Beyond the tower's blocks (the world model has 3, ViT-B/16 12): clamped to them with a
    warning when `clamp` (the methods' ``clamp_depth``, default on, so the released settings run on any ViT),
    else one error line."""
    if depth > blocks and clamp and blocks >= minimum:
        warnings.warn(f"{method}: {what} {depth} clamped to the tower's {blocks} blocks", stacklevel=3)
        return blocks
    if not minimum <= depth <= blocks:
        raise VLPromptError(
            f"{method}: {what} {depth} does not fit this backbone: its tower has {blocks} blocks, so the depth must "
            f"be {minimum}..{blocks} (depth J prompts blocks 0..J-1; the released ViT-B/16 settings need 12 blocks; "
            "clamp_depth: true clamps)"
        )
    return depth


def check_positive(where: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise VLPromptError(f"{where}: {name} must be >= 1, got {value}")


def released_context(backbone: Backbone, n_ctx: int, ctx_init: str, std: float) -> tuple[torch.Tensor, str]:
    """(context ``[n_ctx, W]``, the fixed words that follow it) as the releases build them."""
    if ctx_init and n_ctx <= 4:
        words = ctx_init.replace("_", " ").split()
        for k in range(1, len(words) + 1):
            head = word_embeddings(backbone, " ".join(words[:k]))
            if head.shape[0] == n_ctx:
                return head, " ".join(words[k:])
            if head.shape[0] > n_ctx:
                break
        raise VLPromptError(
            f"ctx_init {ctx_init!r} does not start with words of exactly {n_ctx} tokens; the released code takes the "
            f"first n_ctx tokens of ctx_init (choose n_ctx <= its token count, or ctx_init: '')"
        )
    return torch.randn(n_ctx, backbone.identity.width) * std, ""


def normal_tokens(count: int, n: int, width: int, std: float) -> nn.ParameterList:
    return nn.ParameterList([nn.Parameter(torch.randn(n, width) * std) for _ in range(count)])


class ClassPrompts(nn.Module):
    """``[SOS] <ctx> <rest of ctx_init> <class>.`` for every class; encodes with optional deep text prompts
    (exact shared-prefix path when the tower allows it: the deep tokens are class-independent)."""

    def __init__(self, backbone: Backbone, classnames: Sequence[str], n_ctx: int, rest: str) -> None:
        super().__init__()
        template = "{ctx} " + (rest + " " if rest else "") + "{class}."
        names = [prompt_classname(name) for name in classnames]
        self.prompts = PromptAssembler(backbone, template, {"class": names}, {"ctx": n_ctx})
        self.start = int(self.prompts.positions("ctx")[0, 0])

    def encode(self, ctx: torch.Tensor, layers: Sequence[torch.Tensor] = (), checkpointing: bool = False) -> torch.Tensor:
        """``[C, D]`` L2-normalised text features (`checkpointing`: recompute block activations in backward)."""
        deep = DeepPrompts(tuple(layers), start=self.start) if len(layers) else None
        with self.prompts.backbone.activation_checkpointing(checkpointing and torch.is_grad_enabled()):
            return F.normalize(self.prompts.encode(deep=deep, ctx=ctx), dim=-1)


class ClassTextCache:
    """Frozen text features of the current class list, encoded once per list (they do not depend on the
    batch or the prompts): VPT's classifier, PromptSRC's frozen targets."""

    def __init__(self) -> None:
        self._entry: tuple[tuple[str, ...], torch.Tensor] | None = None

    def get(self, classnames: Sequence[str], encode: Callable[[Sequence[str]], torch.Tensor]) -> torch.Tensor:
        key = tuple(classnames)
        if self._entry is None or self._entry[0] != key:
            self._entry = (key, encode(classnames))
        return self._entry[1]


def require_text_depth(backbone: Backbone, method: str, depth: int, clamp: bool) -> int:
    """The text prompt depth to use (checked against the text tower)."""
    if depth <= 1:
        return depth
    backbone.require(Capability.DEEP_TEXT_PROMPTS, method, "deep text prompts need an open_clip or HF CLIP/SigLIP text tower")
    return check_depth(method, "text prompt depth", depth, backbone.text_block_count(), 1, clamp)


def require_visual_depth(backbone: Backbone, method: str, depth: int, clamp: bool) -> tuple[int, int]:
    """(depth to use, image token width), checked against the image tower."""
    backbone.require(Capability.VISUAL_PROMPTS, method, "visual prompts need an open_clip ViT or Hugging Face CLIP vision tower")
    blocks, width = backbone.image_prompt_shape()
    return check_depth(method, "vision prompt depth", depth, blocks, 1, clamp), width


class VisualPromptTokens(nn.Module):
    """VPT-style image prompts: ``shallow [n, W_img]`` plus ``deep`` tokens for blocks 1..J-1 (N(0, std))."""

    def __init__(self, n: int, depth: int, width: int, std: float) -> None:
        super().__init__()
        self.shallow = nn.Parameter(torch.randn(n, width) * std)
        self.deep = normal_tokens(depth - 1, n, width, std)

    def prompts(self) -> VisualPrompts:
        return VisualPrompts(self.shallow, tuple(self.deep))


def encode_prompted_images(
    backbone: Backbone, images: torch.Tensor, visual: VisualPrompts | None, checkpointing: bool = False
) -> torch.Tensor:
    """``[B, D]`` L2-normalised features of the prompted image tower (`checkpointing`: recompute block
    activations in backward instead of keeping them)."""
    with backbone.activation_checkpointing(checkpointing and torch.is_grad_enabled()):
        return F.normalize(backbone.encode_image(images, visual=visual), dim=-1)


__all__ = [
    "ClassPrompts", "ClassTextCache", "VisualPromptTokens", "check_depth", "check_positive", "encode_prompted_images",
    "normal_tokens", "released_context", "require_text_depth", "require_visual_depth",
]
