"""Initial values for learned context vectors: random (CoOp's N(0, 0.02)) or from words."""

from __future__ import annotations

import torch

from vlprompt.backbones.base import Backbone


def word_embeddings(backbone: Backbone, words: str) -> torch.Tensor:
    """Token embeddings [k, W] of `words` (no SOS/EOT): the prompt they start from is exactly them."""
    ids = backbone.tokenize([words])
    eot = int(backbone.eot_index(ids)[0])
    with torch.no_grad():
        return backbone.embed_tokens(ids[:, backbone.start_length : eot])[0].detach().float().cpu().clone()


def initial_context(
    backbone: Backbone, n_ctx: int, init_words: str = "", std: float = 0.02, seed: int | None = None,
    n_classes: int | None = None,
) -> torch.Tensor:
    """[n, W] context: from words when given (n = their token count), else N(0, std); with `n_classes`
    random context is ``[n_classes, n, W]``, every class drawn independently (CoOp's class-specific init)."""
    if init_words:
        return word_embeddings(backbone, init_words)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    shape = (n_ctx, backbone.identity.width) if n_classes is None else (n_classes, n_ctx, backbone.identity.width)
    return torch.randn(*shape, generator=generator) * std
