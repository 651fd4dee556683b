"""What every method may rely on, whatever library the CLIP model came from."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vlprompt.backbones.capabilities import Capability
from vlprompt.backbones.deep_prompts import DeepPrompts, VisualPrompts
from vlprompt.backbones.text_layout import TextLayout
from vlprompt.errors import VLPromptError


@dataclass(frozen=True)
class BackboneIdentity:
    """Who a backbone is: stored in every checkpoint and every feature-cache key.

    ``create_backbone(spec, pretrained)`` rebuilds it (`vlprompt.backbones.backbone_from_identity`), where the
    spec is `name` when it already starts with ``<source>:`` (``hf-hub:org/repo``, ``local-dir:/path``) or is
    an open_clip architecture, else ``<source>:<name>``.
    """

    source: str  # registry name of the loader, e.g. "open_clip", "hf", "openai", "local-dir"
    name: str  # architecture ("ViT-B-16"), located model ("local-dir:/path"), hub id or file
    pretrained: str | None  # tag, path or None for random weights (or weights that came with the model)
    embed_dim: int
    width: int  # text tower width: the size of one token embedding
    context_length: int
    weights_hash: str | None = None  # `short_hash` of the weights' sha256, when known

    def to_dict(self) -> dict:
        return asdict(self)

    def cache_key(self) -> str:
        """Stable short key: same weights and architecture -> same key."""
        text = f"{self.source}|{self.name}|{self.pretrained}|{self.weights_hash}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def same_model(self, other: BackboneIdentity | dict) -> bool:
        other = other if isinstance(other, BackboneIdentity) else BackboneIdentity(**other)
        if self.weights_hash and other.weights_hash:
            return self.weights_hash == other.weights_hash
        return (self.source, self.name, self.pretrained) == (other.source, other.name, other.pretrained)

    def describe(self) -> str:
        return describe_identity(self.to_dict())


def weight_source(ident: dict) -> str:
    """Where an identity's weights came from, in words: the tag or file, the checkpoint file a name
    points at (``openai:<file>`` records no tag), an in-memory state dict, or random weights."""
    pretrained, digest = ident.get("pretrained"), ident.get("weights_hash")
    if pretrained and str(pretrained).startswith(STATE_DICT_TAG):
        return f"in-memory state dict, weights {digest}"
    if pretrained and pretrained != "torchscript":
        return str(pretrained)
    if ident.get("source") == "openai":
        return f"OpenAI-layout checkpoint file, weights {digest}" if digest else "OpenAI-layout checkpoint file"
    return f"weights {digest}" if digest else "random weights"


def describe_identity(ident: dict) -> str:
    """``name (weight source)``, e.g. ``ViT-B-16 (openai)`` or ``/m/ViT-B-16.pt (OpenAI-layout checkpoint file, ...)``."""
    return f"{ident.get('name')} ({weight_source(ident)})"


STATE_DICT_TAG = "state_dict:"  # `pretrained` recorded for a backbone built from an in-memory state dict


class Backbone(nn.Module):
    """Interface of a frozen CLIP-like model seen through its token embeddings.

    Implementations wrap one library (open_clip, transformers...). Methods only use this interface,
    so learned vectors can stand in for words whatever the tower.

    The core (tokenize, eot_index, embed_tokens, encode_text_embeds, encode_image, logit_scale) is always
    there. Everything else is optional and declared in `capabilities` (see `Capability`); a method checks
    ``backbone.supports(cap)`` or calls ``backbone.require(cap, "<method>")`` before relying on it, and an
    optional method called on a backbone that lacks it raises the same one-line `VLPromptError`.

    Deep prompts (`Capability.DEEP_TEXT_PROMPTS`): ``encode_text_embeds(embeds, eot, deep=DeepPrompts(...))``
    runs the text blocks one by one and, at the input of block i (1 <= i < J), replaces the hidden states
    of the prompt positions ``[deep.start, deep.start + n)`` with ``deep.layers[i - 1]`` (MaPLe / IVLP /
    PromptSRC); block 0 sees the embeddings, which already carry the shallow prompt. ``deep=None`` or no
    layers is the plain forward. Visual prompts (`Capability.VISUAL_PROMPTS`): ``encode_image(images,
    visual=VisualPrompts(...))`` inserts ``visual.shallow`` after the class token and replaces those
    positions with ``visual.deep[i - 1]`` at the input of image block i; they are dropped before pooling.
    """

    identity: BackboneIdentity
    causal: bool  # causal text tower: truncation and shared-prefix reuse are exact
    shared_prefix: bool = True  # switch: let prompt assemblers use `encode_text_embeds_shared` when exact
    capabilities: frozenset[Capability] = frozenset()  # set per instance by each implementation
    train_transform: Callable
    eval_transform: Callable

    # -- capabilities ------------------------------------------------------------------------

    def supports(self, capability: Capability) -> bool:
        return Capability(capability) in self.capabilities

    def require(self, capability: Capability, who: str, hint: str = "") -> None:
        """Raise one line naming `who`, the capability and this backbone when it is not provided."""
        if not self.supports(capability):
            raise VLPromptError(
                f"{who} needs {Capability(capability)}, which {type(self).__name__} ({self.identity.name}) "
                f"does not provide{f' ({hint})' if hint else ''}"
            )

    def _refuse_deep(self, deep: DeepPrompts | None) -> None:
        """For towers without the deep hook: no deep layers is the plain forward, anything else is refused."""
        if deep is not None and deep.layers:
            self.require(Capability.DEEP_TEXT_PROMPTS, "encode_text_embeds(deep=...)")

    # -- text --------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:  # [N, L] long
        raise NotImplementedError

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:  # [N] long: where the text is pooled
        raise NotImplementedError

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:  # [N, L, W]
        raise NotImplementedError

    def encode_text_embeds(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True, deep: DeepPrompts | None = None
    ) -> torch.Tensor:  # [N, D], not normalised
        raise NotImplementedError

    def text_token_states(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        """Last-layer token states ``[N, L, W]`` before the final norm (DFSP decomposes these);
        `pool_text_states` of them equals `encode_text_embeds`. `Capability.TEXT_TOKEN_STATES`."""
        self.require(Capability.TEXT_TOKEN_STATES, "text_token_states")
        raise NotImplementedError

    def pool_text_states(self, states: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """``[N, L, W]`` token states -> ``[N, D]`` features (final norm, pooling, projection)."""
        self.require(Capability.TEXT_TOKEN_STATES, "pool_text_states")
        raise NotImplementedError

    def text_block_count(self) -> int:
        """How many text blocks deep prompts can address (depth J <= this). `Capability.DEEP_TEXT_PROMPTS`."""
        self.require(Capability.DEEP_TEXT_PROMPTS, "text_block_count")
        raise NotImplementedError

    def image_prompt_shape(self) -> tuple[int, int]:
        """(image blocks, image token width) for visual prompts. `Capability.VISUAL_PROMPTS`."""
        self.require(Capability.VISUAL_PROMPTS, "image_prompt_shape")
        raise NotImplementedError

    def text_states_with_layout(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, layout: TextLayout, truncate: bool = True
    ) -> torch.Tensor:
        """`text_token_states` with `layout`'s extra attention blocks and position ids (Tailor's composed
        prompts). `Capability.TEXT_LAYOUT`; an empty layout is the plain forward."""
        self.require(Capability.TEXT_LAYOUT, "text_states_with_layout")
        raise NotImplementedError

    def encode_text_with_layout(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, layout: TextLayout, truncate: bool = True
    ) -> torch.Tensor:
        """``[N, D]`` features of `text_states_with_layout` (final norm, pooling, projection)."""
        self.require(Capability.TEXT_LAYOUT, "encode_text_with_layout")
        return self.pool_text_states(self.text_states_with_layout(embeds, eot_index, layout, truncate), eot_index)

    def shared_prefix_unsupported(self) -> str | None:
        """Why `encode_text_embeds_shared` cannot run exactly on this tower now (None: it can)."""
        if not self.supports(Capability.SHARED_PREFIX):
            return f"{type(self).__name__} has no shared-prefix text encoding"
        return None

    def encode_text_embeds_shared(
        self,
        prefix: torch.Tensor,
        suffix: torch.Tensor,
        eot_index: torch.Tensor,
        truncate: bool = True,
        deep: DeepPrompts | None = None,
    ) -> torch.Tensor:
        """Prompts whose first S embeddings are shared within a group, encoded with the prefix run once.

        prefix ``[S, W]`` or ``[G, S, W]``; suffix ``[N, T, W]`` or ``[G, N, T, W]`` (prompt n of group g
        is ``cat(prefix[g], suffix[g, n])``); eot_index ``[N]``: pooled positions in the whole prompt,
        all >= S. Returns ``[N, D]`` or ``[G, N, D]``, equal to `encode_text_embeds` on the whole prompts.
        `Capability.SHARED_PREFIX`. `deep` prompts are taken when their tokens are shared ``[n, W]`` tensors
        whose positions lie inside the prefix (they are then class-independent, so the prefix stays shared).
        """
        self.require(Capability.SHARED_PREFIX, "encode_text_embeds_shared")
        raise NotImplementedError

    # -- image -------------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor, visual: VisualPrompts | None = None) -> torch.Tensor:
        """``[B, D]``, not normalised; `visual` prompts need `Capability.VISUAL_PROMPTS`."""
        raise NotImplementedError

    def image_token_states(self, images: torch.Tensor, visual: VisualPrompts | None = None) -> torch.Tensor:
        """The image tower's last-block sequence ``[B, 1 + T, W_img]`` (class token first, before the final
        norm, visual prompts dropped); `pool_image_states` of it equals `encode_image`.
        `Capability.IMAGE_TOKEN_STATES`."""
        self.require(Capability.IMAGE_TOKEN_STATES, "image_token_states")
        raise NotImplementedError

    def pool_image_states(self, states: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + T, W_img]`` states -> ``[B, D]`` image features (the tower's own pooling, norm, projection)."""
        self.require(Capability.IMAGE_TOKEN_STATES, "pool_image_states")
        raise NotImplementedError

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, T, W_img]`` output tokens of the image tower (patch tokens). `Capability.IMAGE_TOKENS`."""
        self.require(Capability.IMAGE_TOKENS, "image_tokens")
        raise NotImplementedError

    def image_norm_modules(self) -> list[nn.Module]:
        """The image tower's per-block LayerNorms (pre/post norms excluded). `Capability.IMAGE_NORMS`."""
        self.require(Capability.IMAGE_NORMS, "image_norm_modules")
        raise NotImplementedError

    def image_norm_parameters(self) -> dict[str, nn.Parameter]:
        """The affine parameters of `image_norm_modules`, named as in ``self.named_parameters()`` (what LASP's
        LayerNorm re-calibration tunes, as its official code: every block's two norms, nothing else)."""
        self.require(Capability.IMAGE_NORMS, "image_norm_parameters")
        names = {id(module): name for name, module in self.named_modules()}
        return {
            f"{names[id(module)]}.{key}": param
            for module in self.image_norm_modules()
            for key, param in module.named_parameters(recurse=False)
        }

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(learned temperature): the multiplier of cosine similarities."""
        raise NotImplementedError

    # -- derived helpers, shared by every implementation ------------------------------------

    def encode_text(self, texts: Sequence[str] | torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Plain prompts through the embedding path (the same path learned prompts take)."""
        ids = texts if isinstance(texts, torch.Tensor) else self.tokenize(texts)
        ids = ids.to(self.device)
        return self.encode_text_embeds(self.embed_tokens(ids), self.eot_index(ids), truncate=truncate)

    @property
    def start_length(self) -> int:
        """How many tokens the tokenizer writes before the text: 1 for CLIP's [SOS] or BERT's [CLS], 0 for
        T5-style tokenizers that only end the text. Prompt assembly splices text after them."""
        if getattr(self, "_start_length", None) is None:
            empty = self.tokenize([""])
            self._start_length = int(self.eot_index(empty)[0])
        return self._start_length

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype
