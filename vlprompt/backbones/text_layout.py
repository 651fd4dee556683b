"""A custom attention pattern and position ids for one text pass (Tailor's composition of prompts).

`TextLayout.blocked[i, j]` True means query position i may not attend key position j, on top of the
tower's own (causal) mask; `position_ids[i]` is the positional-embedding row position i takes. Both are
shared by every sequence of the call (composed prompts put their attribute prompts at the same positions
for every class). The backbone turns them into the additive float mask its blocks take, so a blocked
pair gets exactly zero attention weight (``exp(-inf) = 0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlprompt.errors import VLPromptError


@dataclass(frozen=True)
class TextLayout:
    blocked: torch.Tensor | None = None  # [L, L] bool
    position_ids: torch.Tensor | None = None  # [L] long

    def __post_init__(self) -> None:
        if self.blocked is not None and (self.blocked.dim() != 2 or self.blocked.shape[0] != self.blocked.shape[1]):
            raise VLPromptError(f"text layout: blocked must be a square [L, L] mask, got {tuple(self.blocked.shape)}")
        if self.position_ids is not None and self.position_ids.dim() != 1:
            raise VLPromptError(f"text layout: position_ids must be [L], got {tuple(self.position_ids.shape)}")

    def positions(self, length: int, table: torch.Tensor) -> torch.Tensor:
        """``[length, W]`` rows of the positional embedding `table` for the first `length` positions."""
        if self.position_ids is None:
            return table[:length]
        if self.position_ids.shape[0] < length:
            raise VLPromptError(f"text layout has {self.position_ids.shape[0]} position ids for {length} positions")
        ids = self.position_ids[:length].to(table.device)
        if int(ids.min()) < 0 or int(ids.max()) >= table.shape[0]:
            raise VLPromptError(f"text layout position ids must lie in [0, {table.shape[0]}), got {ids.tolist()}")
        return table[ids]

    def mask(self, length: int, base: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """Additive ``[length, length]`` mask: the tower's own `base` (or zeros) with blocked pairs at -inf."""
        mask = base[:length, :length].to(device, dtype) if base is not None else None
        if self.blocked is None:
            return mask
        if self.blocked.shape[0] < length:
            raise VLPromptError(f"text layout mask covers {self.blocked.shape[0]} positions, the pass runs {length}")
        blocked = self.blocked[:length, :length].to(device)
        if bool(blocked.all(dim=-1).any()):
            raise VLPromptError("text layout blocks every key for some position (its attention would be undefined)")
        mask = torch.zeros(length, length, dtype=dtype, device=device) if mask is None else mask.clone()
        return mask.masked_fill(blocked, float("-inf"))


__all__ = ["TextLayout"]
