"""Exact shared-prefix encoding through a causal stack of open_clip ``ResidualAttentionBlock``s.

In a causal text tower, a position only sees the positions before it. When every prompt starts with
the same ``S`` embeddings (``[SOS]`` + shared context, ``[SOS] a photo of``...), the hidden states of
those ``S`` positions are identical for all prompts in every layer. We run them once — per group: one
group for prompts shared by all, one group per image for CoCoOp-style conditioned context — and run
only the class-dependent suffixes, whose queries attend to the prefix's keys/values (all of them) and to
their own (causally). Forward and backward equal the plain pass up to floating-point rounding.

Shapes: prefix ``x_p`` [G, S, W]; suffixes ``x_s`` [G, N, T, W] (N prompts per group). The prefix
keys/values are never copied N times: suffix queries of a group are folded to [G, H, N*T, d] and meet
the prefix keys [G, H, S, d] in one matmul.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, Transformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlprompt.backbones.deep_prompts import DeepPrompts, write_positions


def unsupported_reason(transformer: nn.Module, attn_mask: torch.Tensor | None) -> str | None:
    """Why the shared-prefix path would not be exact for this text transformer (None: it is)."""
    if attn_mask is None:
        return "text tower is not causal"
    if not isinstance(transformer, Transformer) or type(transformer).forward is not Transformer.forward:
        return f"text transformer {type(transformer).__name__} is not open_clip's Transformer"
    if "forward" in vars(transformer):
        return "text transformer's forward is overridden on the instance"
    L = attn_mask.shape[-1]
    causal = torch.full((L, L), float("-inf"), device=attn_mask.device).triu(1)
    if attn_mask.shape != (L, L) or not torch.equal(attn_mask.float(), causal):
        return "text attention mask is not the standard causal mask"
    for i, block in enumerate(transformer.resblocks):
        why = _block_unsupported(block)
        if why:
            return f"block {i}: {why}"
    return None


def _block_unsupported(block: nn.Module) -> str | None:
    kind = type(block)
    if not isinstance(block, ResidualAttentionBlock) or kind.forward is not ResidualAttentionBlock.forward:
        return f"{kind.__name__} is not open_clip's ResidualAttentionBlock"
    if kind.attention is not ResidualAttentionBlock.attention or {"forward", "attention"} & set(vars(block)):
        return "attention or forward overridden"
    if hasattr(block, "ln_1_kv"):
        return "cross-attention block"
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or type(attn).forward is not nn.MultiheadAttention.forward:
        return f"attention module {type(attn).__name__} is not nn.MultiheadAttention"
    if not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
        return "separate q/k/v projections"
    if attn.bias_k is not None or attn.add_zero_attn:
        return "extra key/value biases"
    if attn.head_dim * attn.num_heads != attn.embed_dim:
        return "embedding width not divisible by heads"
    return None


def _dropout_active(blocks: Sequence[nn.Module]) -> bool:
    return any(b.training and b.attn.dropout > 0 for b in blocks)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[G, T, W] -> [G, H, T, d];  [G, N, T, W] -> [G, H, N, T, d]."""
    *lead, T, W = x.shape
    x = x.reshape(*lead, T, heads, W // heads)
    if len(lead) == 1:
        return x.transpose(1, 2)
    return x.permute(0, 3, 1, 2, 4)


def _mlp_residual(block: ResidualAttentionBlock, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    attn = block.attn
    x = x + block.ls_1(F.linear(attended, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def shared_block(
    block: ResidualAttentionBlock, x_p: torch.Tensor, x_s: torch.Tensor, last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One block on (prefix [G, S, W], suffixes [G, N, T, W]). With ``last`` the prefix is not advanced
    (nothing after the last block reads it) and is returned unchanged."""
    attn = block.attn
    H = attn.num_heads
    G, S, W = x_p.shape
    N, T = x_s.shape[1], x_s.shape[2]
    d = W // H
    scale = d**-0.5
    q_p, k_p, v_p = F.linear(block.ln_1(x_p), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q_s, k_s, v_s = F.linear(block.ln_1(x_s), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    k_p, v_p = _split_heads(k_p, H), _split_heads(v_p, H)  # [G, H, S, d]
    q_s, k_s, v_s = (_split_heads(t, H) for t in (q_s, k_s, v_s))  # [G, H, N, T, d]

    # Scores of every suffix query against the prefix keys (one matmul per group and head) and
    # against its own prompt's keys (causal), one softmax over both.
    q_fold = q_s.reshape(G, H, N * T, d)
    s_p = torch.matmul(q_fold, k_p.transpose(-1, -2)).mul_(scale).view(G, H, N, T, S)
    s_s = torch.matmul(q_s, k_s.transpose(-1, -2)).mul_(scale)  # [G, H, N, T, T]
    future = torch.ones(T, T, dtype=torch.bool, device=x_s.device).triu(1)
    s_s = s_s.masked_fill(future, float("-inf"))
    weights = torch.softmax(torch.cat([s_p, s_s], dim=-1), dim=-1)
    w_p, w_s = weights.split([S, T], dim=-1)
    out = torch.matmul(w_p.reshape(G, H, N * T, S), v_p).view(G, H, N, T, d) + torch.matmul(w_s, v_s)
    out = out.permute(0, 2, 3, 1, 4).reshape(G, N, T, W)
    x_s = _mlp_residual(block, x_s, out)

    if not last:
        q_p = _split_heads(q_p, H)
        out_p = F.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True)  # [G, H, S, d]
        x_p = _mlp_residual(block, x_p, out_p.transpose(1, 2).reshape(G, S, W))
    return x_p, x_s


def shared_prefix_forward(
    blocks: Sequence[nn.Module],
    x_p: torch.Tensor,
    x_s: torch.Tensor,
    grad_checkpointing: bool = False,
    deep: DeepPrompts | None = None,
) -> torch.Tensor:
    """Run the blocks on prefix [G, S, W] and suffixes [G, N, T, W]; returns the suffixes' output.

    `deep` prompts (shared ``[n, W]`` tokens whose positions lie inside the prefix) replace (``additive``: are
    added to) the prefix's states at the input of blocks 1..J-1: the same tokens in every prompt, so the prefix
    stays shared."""
    if _dropout_active(blocks):
        raise RuntimeError("shared-prefix encoding needs attention dropout off")
    n = len(blocks)
    if deep is not None:
        deep.check(n)
        if deep.layers and (deep.start + deep.n_tokens > x_p.shape[1] or any(t.dim() != 2 for t in deep.layers)):
            raise ValueError("shared-prefix deep prompts must be shared [n, W] tokens inside the prefix")
    for i, block in enumerate(blocks):
        last = i == n - 1
        tokens = deep.at_block(i) if deep is not None else None
        if tokens is not None:
            x_p = write_positions(x_p, tokens, deep.start, deep)
        if grad_checkpointing and torch.is_grad_enabled():
            x_p, x_s = checkpoint(shared_block, block, x_p, x_s, last, use_reentrant=False)
        else:
            x_p, x_s = shared_block(block, x_p, x_s, last)
    return x_s
