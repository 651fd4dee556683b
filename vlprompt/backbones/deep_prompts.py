"""Learned tokens inside the towers, beyond the input embeddings (MaPLe, IVLP, PromptSRC, VPT).

Both kinds are plain tensors handed to one forward call, so the backbone stays frozen and shared: the
method owns the parameters, the backbone only knows where they go.

- `DeepPrompts` (text): the shallow prompt is already in the embeddings the prompt assembler builds; at the
  input of text blocks 1..J-1 the hidden states of the prompt positions ``[start, start + n)`` are replaced
  by ``layers[0..J-2]`` (depth J = ``len(layers) + 1``; no layers = depth 1 = the plain forward).
- `VisualPrompts` (image): ``shallow`` tokens are inserted right after the class token, after the positional
  embedding (before the tower's pre-norm, as MaPLe does); ``deep[i]`` replaces them at the input of block i+1.
  They are dropped before pooling, so the output has the unprompted shape and meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from vlprompt.errors import VLPromptError


def _check_tokens(tokens: Sequence[torch.Tensor], what: str) -> int:
    """Every tensor ``[n, W]`` (shared) or ``[B, n, W]`` (one row per sequence), all with one n; returns n."""
    counts = set()
    for i, t in enumerate(tokens):
        if t.dim() not in (2, 3):
            raise VLPromptError(f"{what}[{i}] has shape {tuple(t.shape)}; prompt tokens are [n, W] or [B, n, W]")
        counts.add(int(t.shape[-2]))
    if len(counts) > 1:
        raise VLPromptError(f"{what} hold different token counts {sorted(counts)}; every layer replaces the same positions")
    return counts.pop() if counts else 0


def _per_sequence(tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[n, W]`` (shared) or ``[B, n, W]`` tokens as ``[B, n, W]`` in x's dtype."""
    tokens = tokens.to(x.dtype)
    if tokens.dim() == 2:
        return tokens.unsqueeze(0).expand(x.shape[0], -1, -1)
    if tokens.shape[0] != x.shape[0]:
        raise VLPromptError(f"prompt tokens for {tokens.shape[0]} sequences given to a batch of {x.shape[0]}")
    return tokens


def replace_positions(x: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """``x [B, L, W]`` with positions ``[start, start + n)`` taken from `tokens` (``[n, W]`` or ``[B, n, W]``),
    out of place so gradients reach `tokens` and never the replaced states."""
    n = tokens.shape[-2]
    if start < 0 or start + n > x.shape[1]:
        raise VLPromptError(f"prompt positions {start}..{start + n - 1} are outside the sequence of {x.shape[1]} tokens")
    return torch.cat([x[:, :start], _per_sequence(tokens, x), x[:, start + n :]], dim=1)


def add_positions(x: torch.Tensor, offsets: torch.Tensor, start: int) -> torch.Tensor:
    """``x [B, L, W]`` with `offsets` (``[n, W]`` or ``[B, n, W]``) added to positions ``[start, start + n)``
    (Qin & Eisner's deep perturbation), out of place."""
    n = offsets.shape[-2]
    if start < 0 or start + n > x.shape[1]:
        raise VLPromptError(f"prompt positions {start}..{start + n - 1} are outside the sequence of {x.shape[1]} tokens")
    return torch.cat([x[:, :start], x[:, start : start + n] + _per_sequence(offsets, x), x[:, start + n :]], dim=1)


def write_positions(
    x: torch.Tensor, tokens: torch.Tensor, start: int, prompts: DeepPrompts | VisualPrompts
) -> torch.Tensor:
    """One block's prompt `tokens` written into ``x`` at ``[start, start + n)``: added to the states for
    additive deep prompts, else replacing them (every tower's block loop writes through this)."""
    return (add_positions if getattr(prompts, "additive", False) else replace_positions)(x, tokens, start)


def insert_positions(x: torch.Tensor, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """``x [B, L, W]`` with `tokens` inserted before position `start`: ``[B, L + n, W]``."""
    return torch.cat([x[:, :start], _per_sequence(tokens, x), x[:, start:]], dim=1)


def drop_positions(x: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """``x [B, L, W]`` without positions ``[start, start + n)``: undoes `insert_positions`."""
    return torch.cat([x[:, :start], x[:, start + n :]], dim=1)


@dataclass(frozen=True)
class DeepPrompts:
    """Per-layer text prompt tokens: ``layers[i]`` (``[n, W]`` or ``[N, n, W]``) replaces the states of
    positions ``[start, start + n)`` at the input of text block ``i + 1``."""

    layers: tuple[torch.Tensor, ...]
    start: int = 1  # after [SOS]; the prompt assembler's first context position
    additive: bool = False  # add the layers to the states (offsets, Qin & Eisner) instead of replacing them

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        _check_tokens(self.layers, "deep prompt layers")

    @property
    def depth(self) -> int:
        """J: the input embeddings count as layer 0, so no deep layers is depth 1."""
        return len(self.layers) + 1

    @property
    def n_tokens(self) -> int:
        return _check_tokens(self.layers, "deep prompt layers")

    def check(self, blocks: int) -> None:
        if self.depth > blocks:
            raise VLPromptError(f"deep prompts of depth {self.depth} need {self.depth} text blocks; the tower has {blocks}")

    def at_block(self, index: int) -> torch.Tensor | None:
        """Tokens replacing the prompt states at the input of block `index` (None: leave them)."""
        return self.layers[index - 1] if 1 <= index <= len(self.layers) else None


@dataclass(frozen=True)
class VisualPrompts:
    """Image prompt tokens: ``shallow`` (``[n, W_img]`` or ``[B, n, W_img]``) inserted after the class token;
    ``deep[i]`` replaces them at the input of image block ``i + 1``. n = 0 is the plain forward."""

    shallow: torch.Tensor
    deep: tuple[torch.Tensor, ...] = field(default=())

    START = 1  # right after the class token

    def __post_init__(self) -> None:
        object.__setattr__(self, "deep", tuple(self.deep))
        _check_tokens((self.shallow, *self.deep), "visual prompts")

    @property
    def depth(self) -> int:
        return len(self.deep) + 1

    @property
    def n_tokens(self) -> int:
        return int(self.shallow.shape[-2])

    def check(self, blocks: int) -> None:
        if self.depth > blocks:
            raise VLPromptError(f"visual prompts of depth {self.depth} need {self.depth} image blocks; the tower has {blocks}")

    def at_block(self, index: int) -> torch.Tensor | None:
        return self.deep[index - 1] if 1 <= index <= len(self.deep) else None


__all__ = ["DeepPrompts", "VisualPrompts", "add_positions", "drop_positions", "insert_positions", "replace_positions",
           "write_positions"]
