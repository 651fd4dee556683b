"""The open-world protocol on a score matrix, without a method object: feasibility filter, threshold
search (CSP/DFSP's grid and rule) and the reference metrics, for scores computed anywhere
(another codebase, a saved matrix, a unit test). The same code path as the evaluator
(`vlprompt.czsl.metrics.blocks_metrics`), fed one block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlprompt.czsl.metrics import blocks_metrics
from vlprompt.errors import VLPromptError

PairList = torch.Tensor | Sequence[tuple[int, int]]


def _pair_tensor(pairs: PairList, what: str) -> torch.Tensor:
    t = torch.as_tensor(pairs, dtype=torch.long)
    if t.dim() != 2 or t.shape[1] != 2:
        raise VLPromptError(f"{what} must be [N, 2] (attribute, object) indices, got shape {tuple(t.shape)}")
    return t


def seen_mask_of(pairs: PairList, train_pairs: PairList) -> torch.Tensor:
    """``[P]`` bool: which of `pairs` are train (seen) pairs."""
    pairs, train = _pair_tensor(pairs, "pairs"), _pair_tensor(train_pairs, "train_pairs")
    return (pairs[:, None, :] == train[None, :, :]).all(-1).any(1)


def open_world_protocol(
    scores: torch.Tensor,
    pair_gt: torch.Tensor,
    pairs: PairList,
    train_pairs: PairList,
    feasibility: torch.Tensor,
    threshold: float | None = None,
    rule: str = "multiply",
    trials: int = 50,
) -> dict[str, Any]:
    """Open-world metrics of ``scores`` ``[n, P]`` (columns = `pairs`, every attribute-object pair).

    Args:
        pair_gt: ``[n]`` column of each image's true pair.
        pairs / train_pairs: ``[P, 2]`` / ``[S, 2]`` (attribute, object) indices (tensors or tuples).
        feasibility: ``[P]`` feasibility scores (`vlprompt.czsl.feasibility.feasibility_scores`).
        threshold: None searches the released grid (``trials`` points) on these scores, as on the
            validation set, keeping the best AUC (strictly better, start -10); a number applies it
            (as on the test set with the threshold found on val).
        rule: ``multiply`` (the released Evaluator: ``score * (1[f >= th] + seen)``) or ``mask`` (-inf).

    Returns the metrics (AUC, best HM, seen / unseen curves, bias list, ...) plus ``threshold``,
    ``feasibility_rule`` and, after a search, ``threshold_aucs`` (one AUC per grid point).
    """
    pairs_t = _pair_tensor(pairs, "pairs")
    if scores.dim() != 2 or scores.shape[1] != len(pairs_t):
        raise VLPromptError(f"scores must be [n, {len(pairs_t)}] (one column per pair), got {tuple(scores.shape)}")
    if feasibility.shape != (len(pairs_t),):
        raise VLPromptError(f"feasibility must be [{len(pairs_t)}], got {tuple(feasibility.shape)}")
    pair_gt = torch.as_tensor(pair_gt, dtype=torch.long)
    seen = seen_mask_of(pairs_t, train_pairs)
    attr_gt, obj_gt = pairs_t[pair_gt, 0], pairs_t[pair_gt, 1]

    return blocks_metrics([(slice(0, len(pairs_t)), scores.float())], attr_gt, obj_gt, pair_gt, pairs_t, seen,
                          feasibility=feasibility, threshold=threshold, rule=rule, trials=trials)
