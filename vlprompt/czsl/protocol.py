"""The open-world protocol on a score matrix, without a method object: feasibility filter, threshold
search (CSP/DFSP's grid and rule) and the reference metrics, for scores computed anywhere
(another codebase, a saved matrix, a unit test)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vlprompt.czsl.metrics import (
    NO_THRESHOLD,
    apply_feasibility,
    dense_metrics,
    feasibility_thresholds,
    pick_threshold,
)
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

    def at(th: float) -> dict[str, Any]:
        filtered = apply_feasibility(scores.float(), feasibility, seen, th, rule=rule)
        return dense_metrics(filtered, attr_gt, obj_gt, pair_gt, pairs_t, seen)

    if threshold is not None:
        result = at(float(threshold))
        result["threshold"] = float(threshold)
    else:
        grid = feasibility_thresholds(feasibility, seen, trials)
        runs = [at(float(th)) for th in grid]
        best = pick_threshold([r["AUC"] for r in runs], grid)
        result = runs[best] if best is not None else at(NO_THRESHOLD)
        result["threshold"] = float(grid[best]) if best is not None else NO_THRESHOLD
        result["threshold_aucs"] = [float(r["AUC"]) for r in runs]
        result["threshold_grid"] = np.asarray(grid, dtype=float).tolist()
    result["feasibility_rule"] = rule
    return result
