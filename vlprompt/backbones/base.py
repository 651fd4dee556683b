"""What every method may rely on, whatever library the CLIP model came from."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneIdentity:
    """Who a backbone is: stored in every checkpoint and every feature-cache key."""

    source: str  # registry name of the loader, e.g. "open_clip"
    name: str  # architecture, e.g. "ViT-B-16"
    pretrained: str | None  # tag, path or None for random weights
    embed_dim: int
    width: int  # text tower width: the size of one token embedding
    context_length: int
    weights_hash: str | None = None  # sha256 prefix of the weights, when known

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
        return f"{self.name} ({self.pretrained or 'random weights'})"


class Backbone(nn.Module):
    """Interface of a frozen CLIP-like model seen through its token embeddings.

    Implementations wrap one library (open_clip, transformers...). Methods only use this interface,
    so learned vectors can stand in for words whatever the tower.
    """

    identity: BackboneIdentity
    causal: bool  # causal text tower: truncation and shared-prefix reuse are exact
    shared_prefix: bool = True  # switch: let prompt assemblers use `encode_text_embeds_shared` when exact
    train_transform: Callable
    eval_transform: Callable

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:  # [N, L] long
        raise NotImplementedError

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:  # [N] long: where the text is pooled
        raise NotImplementedError

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:  # [N, L, W]
        raise NotImplementedError

    def encode_text_embeds(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True
    ) -> torch.Tensor:  # [N, D], not normalised
        raise NotImplementedError

    def text_token_states(self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True) -> torch.Tensor:
        """Last-layer token states ``[N, L, W]`` before the final norm (DFSP decomposes these);
        `pool_text_states` of them equals `encode_text_embeds`. Optional for a backbone."""
        raise NotImplementedError(f"{type(self).__name__} does not expose text token states")

    def pool_text_states(self, states: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        """``[N, L, W]`` token states -> ``[N, D]`` features (final norm, pooling, projection)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose text token states")

    def image_token_states(self, images: torch.Tensor) -> torch.Tensor:
        """The image tower's last-block sequence ``[B, 1 + T, W_img]`` (class token first, before the
        final norm); `pool_image_states` of it equals `encode_image`. Optional for a backbone."""
        raise NotImplementedError(f"{type(self).__name__} does not expose image token states")

    def pool_image_states(self, states: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + T, W_img]`` states -> ``[B, D]`` image features (the tower's own pooling, norm, projection)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose image token states")

    def shared_prefix_unsupported(self) -> str | None:
        """Why `encode_text_embeds_shared` cannot run exactly on this tower (None: it can)."""
        return f"{type(self).__name__} has no shared-prefix text encoding"

    def encode_text_embeds_shared(
        self, prefix: torch.Tensor, suffix: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True
    ) -> torch.Tensor:
        """Prompts whose first S embeddings are shared within a group, encoded with the prefix run once.

        prefix ``[S, W]`` or ``[G, S, W]``; suffix ``[N, T, W]`` or ``[G, N, T, W]`` (prompt n of group g
        is ``cat(prefix[g], suffix[g, n])``); eot_index ``[N]``: pooled positions in the whole prompt,
        all >= S. Returns ``[N, D]`` or ``[G, N, D]``, equal to `encode_text_embeds` on the whole prompts.
        """
        raise NotImplementedError

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:  # [B, D], not normalised
        raise NotImplementedError

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:  # [B, T, W_img]
        raise NotImplementedError

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
