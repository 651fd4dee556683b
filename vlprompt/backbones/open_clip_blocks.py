"""open_clip's `Transformer.forward`, block by block, so prompt tokens can replace hidden states between blocks.

Without prompts it runs exactly the same operations as ``Transformer.forward`` (batch-first handling,
gradient checkpointing), so a depth-1 deep prompt or a zero-length visual prompt reproduces the plain output.
Only towers whose forward is open_clip's own loop qualify (`runs_as_blocks`).
"""

from __future__ import annotations

import torch
from open_clip.transformer import Transformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlprompt.backbones.deep_prompts import DeepPrompts, VisualPrompts, write_positions


def runs_as_blocks(transformer: nn.Module) -> bool:
    """Whether `transformer` is open_clip's `Transformer` running its own block loop (nothing overridden)."""
    return (
        isinstance(transformer, Transformer)
        and type(transformer).forward is Transformer.forward
        and "forward" not in vars(transformer)
    )


def run_blocks(
    transformer: Transformer,
    x: torch.Tensor,
    attn_mask: torch.Tensor | None,
    prompts: DeepPrompts | VisualPrompts,
    start: int,
) -> torch.Tensor:
    """``transformer(x, attn_mask)`` with ``prompts.at_block(i)`` written over positions ``[start, start + n)``
    at the input of every block i that has tokens. x is ``[N, L, W]`` (batch first) as for the plain call."""
    prompts.check(len(transformer.resblocks))
    if not transformer.batch_first:
        x = x.transpose(0, 1).contiguous()  # NLD -> LND
    for i, block in enumerate(transformer.resblocks):
        tokens = prompts.at_block(i)
        if tokens is not None:
            if transformer.batch_first:
                x = write_positions(x, tokens, start, prompts)
            else:
                x = write_positions(x.transpose(0, 1), tokens, start, prompts).transpose(0, 1)
        if transformer.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint(block, x, None, None, attn_mask, use_reentrant=False)
        else:
            x = block(x, attn_mask=attn_mask)
    if not transformer.batch_first:
        x = x.transpose(0, 1)  # LND -> NLD
    return x


__all__ = ["run_blocks", "runs_as_blocks"]
