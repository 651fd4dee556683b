"""Text-side regularisers shared by LASP and KgCoOp, as pure functions of feature tensors (their frozen
targets come from `vlprompt.prompts.handcrafted`).

- `text_to_text_loss`: LASP's L_TT, a cross-entropy in text space at CLIP's logit scale.
- `lasp_text_loss`: the whole L_TT of a LASP step from raw soft features: bias, normalisation, the noise
  on the hand-crafted features (given, so the loss is reproducible without the global RNG), groups.
- `kgcoop_loss`: KgCoOp's 1 - mean cosine between learned and hand-crafted class features.

Notation: ``soft [C, D]`` are the L2-normalised soft-prompt class features, ``hand [T, C, D]`` the
L2-normalised hand-crafted features (template t, class c), ``s`` the logit scale, and
``logits[t, i, j] = s * <soft_i, hand_tj>``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vlprompt.errors import VLPromptError

DIRECTIONS = ("soft_as_classifier", "handcrafted_as_classifier", "symmetric")


def text_to_text_loss(
    soft: torch.Tensor, hand: torch.Tensor, scale: float | torch.Tensor, direction: str = "soft_as_classifier"
) -> torch.Tensor:
    """LASP's text-to-text cross-entropy, averaged over templates and classes.

    - ``soft_as_classifier`` (the official code's, default): each hand-crafted feature ``hand[t, j]`` is
      classified among the soft-prompt class features; softmax over i of ``logits[t, :, j]``, target j.
    - ``handcrafted_as_classifier`` (the paper's wording): each soft feature ``soft[i]`` is classified
      among the hand-crafted features of template t; softmax over j of ``logits[t, i, :]``, target i.
    - ``symmetric``: the sum of the two.
    """
    if direction not in DIRECTIONS:
        raise VLPromptError(f"text-to-text direction {direction!r} is not one of {list(DIRECTIONS)}")
    if soft.dim() != 2 or hand.dim() != 3 or hand.shape[1:] != soft.shape:
        raise VLPromptError(
            f"text_to_text_loss needs soft [C, D] and hand [T, C, D], got {tuple(soft.shape)} and {tuple(hand.shape)}"
        )
    T, C, _ = hand.shape
    logits = float(scale) * torch.einsum("id,tjd->tij", soft.float(), hand.float())  # [T, i, j]
    target = torch.arange(C, device=soft.device).repeat(T)
    loss = soft.new_zeros((), dtype=torch.float32)
    if direction in ("soft_as_classifier", "symmetric"):
        loss = loss + F.cross_entropy(logits.transpose(1, 2).reshape(T * C, C), target)  # rows j, softmax over i
    if direction in ("handcrafted_as_classifier", "symmetric"):
        loss = loss + F.cross_entropy(logits.reshape(T * C, C), target)  # rows i, softmax over j
    return loss


def lasp_text_loss(
    soft: torch.Tensor,
    hand: torch.Tensor,
    scale: float | torch.Tensor,
    bias: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    group_templates: Sequence[Sequence[int]] | None = None,
    direction: str = "soft_as_classifier",
) -> torch.Tensor:
    """LASP's L_TT as the method computes it in a training step, from features.

    Args:
        soft: raw (not normalised) soft-prompt class features ``[C, D]``, or ``[G, C, D]`` for G groups.
        hand: L2-normalised hand-crafted features ``[T, C, D]`` (template t, class c).
        scale: CLIP's logit scale (``backbone.logit_scale``).
        bias: LASP's text bias ``[D]`` / ``[1, D]``, added to every soft feature before normalisation.
        noise: a tensor added to `hand` (not re-normalised, as the official code): the method draws
            ``noise_std * randn_like(hand)`` on a ``noise_prob`` fraction of the steps; None: no noise.
        group_templates: the template indices each group uses (default: every group all templates).
        direction: see `text_to_text_loss`.

    Returns the mean over groups of each group's `text_to_text_loss`.
    """
    feats = soft if soft.dim() == 3 else soft.unsqueeze(0)
    if bias is not None:
        feats = feats + bias.reshape(1, 1, -1).to(feats.dtype)
    feats = F.normalize(feats, dim=-1)
    if noise is not None:
        if noise.shape != hand.shape:
            raise VLPromptError(f"lasp_text_loss: noise must have hand's shape {tuple(hand.shape)}, got {tuple(noise.shape)}")
        hand = hand + noise
    groups = group_templates if group_templates is not None else [list(range(hand.shape[0]))] * feats.shape[0]
    if len(groups) != feats.shape[0]:
        raise VLPromptError(f"lasp_text_loss: {feats.shape[0]} groups of features but {len(groups)} template groups")
    return group_text_losses(feats, hand, scale, groups, direction)


def group_text_losses(feats: torch.Tensor, hand: torch.Tensor, scale: float | torch.Tensor,
                      group_templates: Sequence[Sequence[int]], direction: str) -> torch.Tensor:
    """Mean over groups g of L_TT(normalised ``feats[g]``, ``hand[group_templates[g]]``)."""
    losses = [text_to_text_loss(feats[g], hand[torch.as_tensor(list(idx), dtype=torch.long, device=hand.device)], scale,
                                direction) for g, idx in enumerate(group_templates)]
    return torch.stack(losses).mean()


def kgcoop_loss(soft: torch.Tensor, hand: torch.Tensor) -> torch.Tensor:
    """``1 - mean_c cos(soft_c, hand_c)`` for ``[C, D]`` features (normalised here, so any scale works)."""
    if soft.shape != hand.shape:
        raise VLPromptError(f"kgcoop_loss needs features of one shape, got {tuple(soft.shape)} and {tuple(hand.shape)}")
    return 1.0 - F.cosine_similarity(soft.float(), hand.float(), dim=-1).mean()
