"""Compact storage of the world CLIP's weights: fp16, and only the token-embedding rows in use.

The recipe zeroes every token-embedding row no caption uses, so the file keeps only the used rows
and their ids (49408 x 128 floats would otherwise be most of the file).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlprompt.paths import atomic_path

_EMBED = "token_embedding.weight"
_ROWS, _IDS, _SHAPE = "token_embedding.rows", "token_embedding.ids", "token_embedding.shape"


def save_compact_weights(state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write fp16 weights with only the non-zero token-embedding rows (atomic)."""
    embed = state_dict[_EMBED]
    ids = torch.nonzero(embed.abs().sum(1)).flatten()
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state_dict.items() if k != _EMBED}
    tensors[_ROWS] = embed[ids].to(torch.float16).contiguous()
    tensors[_IDS] = ids.to(torch.int64)
    tensors[_SHAPE] = torch.tensor(list(embed.shape), dtype=torch.int64)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata or {})
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; weights are meant to be shared


def load_compact_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a compact file back into a full fp32 open_clip state dict."""
    tensors = load_file(str(path))
    ids, rows, shape = tensors.pop(_IDS), tensors.pop(_ROWS), tensors.pop(_SHAPE)
    state = {k: v.float() for k, v in tensors.items()}
    embed = torch.zeros(*shape.tolist(), dtype=torch.float32)
    embed[ids] = rows.float()
    state[_EMBED] = embed
    return state
