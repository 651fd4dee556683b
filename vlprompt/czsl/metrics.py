"""The CZSL evaluation protocol of ``ExplainableML/czsl`` ``Evaluator`` (copied by CSP, DFSP, Troika,
PLID), ported step by step, plus a streaming form that never holds the ``n x P`` score matrix.

Protocol (scores ``S [n, P]`` over ``dataset.pairs``; a prediction is correct iff attribute *and*
object match):

1. ``predict(S, b)``: add ``b`` to every non-seen pair, set non-candidates to -1e10, argmax.
2. attribute / object accuracy from ``predict(S, 0)``; ``unseen_max`` / ``seen_at_max`` from
   ``predict(S, 1e3)``.
3. gaps ``d_i = max_{seen p} S[i, p] - S[i, gt_i]`` of unseen images correct at bias 1e3, minus
   1e-4, sorted; ``biaslist = d[::max(len(d) // 20, 1)]``.
4. sweep the bias list, append the 1e3 point; AUC = trapezoid(seen, x=unseen); HM = 2su/(s+u)
   (0 where s+u = 0); best seen / unseen = maxima over the sweep; ``biasterm`` at the best HM.

Arithmetic follows the reference: float32 scores, float32 bias addition, float32 accuracy means,
float64 trapezoid. Ties are broken by the lowest pair index (``argmax``); the reference calls
``topk(1)``, whose order among exact ties is unspecified in PyTorch (it differs between tensor sizes),
so exact ties are the one place where two runs of the reference itself may disagree.

The streaming form rests on one fact: a bias is added to *all* non-seen pairs alike, so for any bias
the prediction is either the best seen candidate or the best non-seen candidate. Per image it keeps
the best seen candidate, the top-K non-seen candidates (K covers float32 rounding ties after adding
a bias) and the ground-truth score: O(n K) memory whatever P is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vlprompt.errors import VLPromptError

BIAS = 1e3
MAGIC_BINSIZE = 20
CLOSED_FILL = -1e10


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    fn = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it; identical results
    return float(fn(y, x))


def harmonic_mean(seen: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """2su/(s+u), 0 where s+u == 0 (scipy.stats.hmean's zero semantics; NaN stays NaN)."""
    seen, unseen = np.asarray(seen, dtype=np.float64), np.asarray(unseen, dtype=np.float64)
    total = seen + unseen
    with np.errstate(invalid="ignore", divide="ignore"):
        hm = np.where(total == 0, 0.0, 2 * seen * unseen / np.where(total == 0, 1.0, total))
    return hm


def _mean(match: torch.Tensor) -> float:
    """float(tensor.mean()) as the reference computes it (NaN for an empty set)."""
    return float(match.float().mean()) if match.numel() else float("nan")


# -- the reference, ported over a dense score matrix ----------------------------------------------

def _predict_dense(scores: torch.Tensor, seen_mask: torch.Tensor, closed_mask: torch.Tensor,
                   bias: float | torch.Tensor) -> torch.Tensor:
    s = scores.clone()
    s[:, ~seen_mask] += bias
    s[:, ~closed_mask] = CLOSED_FILL
    return s.argmax(dim=1)


def dense_metrics(scores: torch.Tensor, attr_gt: torch.Tensor, obj_gt: torch.Tensor, pair_gt: torch.Tensor,
                  pairs: torch.Tensor, seen_mask: torch.Tensor, closed_mask: torch.Tensor | None = None,
                  bias: float = BIAS) -> dict[str, float]:
    """The reference evaluator on a full ``[n, P]`` matrix (``pairs`` ``[P, 2]`` attr/obj indices)."""
    scores = scores.float().cpu()
    seen_mask = seen_mask.bool().cpu()
    closed_mask = torch.ones_like(seen_mask) if closed_mask is None else closed_mask.bool().cpu()
    attr_gt, obj_gt, pair_gt = attr_gt.cpu(), obj_gt.cpu(), pair_gt.cpu()
    seen_img = seen_mask[pair_gt]

    def match_of(pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, o = pairs[pred, 0] == attr_gt, pairs[pred, 1] == obj_gt
        return a, o, a & o

    attr_m, obj_m, _ = match_of(_predict_dense(scores, seen_mask, closed_mask, 0.0))
    _, _, match_b = match_of(_predict_dense(scores, seen_mask, closed_mask, bias))
    correct = scores[torch.arange(len(pair_gt)), pair_gt][~seen_img]
    max_seen = scores[~seen_img][:, seen_mask].max(dim=1).values if seen_mask.any() else torch.full_like(correct, float("-inf"))
    diff = (max_seen - correct)[match_b[~seen_img]] - 1e-4
    biaslist = torch.sort(diff)[0]
    biaslist = biaslist[:: max(len(biaslist) // MAGIC_BINSIZE, 1)]
    seen_acc, unseen_acc = [], []
    for b in biaslist:
        _, _, m = match_of(_predict_dense(scores, seen_mask, closed_mask, b))
        seen_acc.append(_mean(m[seen_img]))
        unseen_acc.append(_mean(m[~seen_img]))
    seen_acc.append(_mean(match_b[seen_img]))
    unseen_acc.append(_mean(match_b[~seen_img]))
    return _summarise(np.array(seen_acc), np.array(unseen_acc), biaslist.double().numpy(), bias,
                      _mean(attr_m), _mean(obj_m), seen_img)


def _summarise(seen: np.ndarray, unseen: np.ndarray, biaslist: np.ndarray, bias: float, attr_acc: float,
               obj_acc: float, seen_img: torch.Tensor) -> dict[str, float]:
    auc = _trapezoid(seen, unseen)
    hm = harmonic_mean(seen, unseen)
    idx = int(np.argmax(hm))  # NaN (empty unseen set) -> np.argmax returns the first NaN
    biasterm = bias if idx == len(biaslist) else float(biaslist[idx])
    return {
        "AUC": auc * 100,
        "best_hm": float(np.max(hm)) * 100,
        "best_seen": float(np.max(seen)) * 100,
        "best_unseen": float(np.max(unseen)) * 100,
        "hm_seen": float(seen[idx]) * 100,
        "hm_unseen": float(unseen[idx]) * 100,
        "attr_acc": attr_acc * 100,
        "obj_acc": obj_acc * 100,
        "biasterm": biasterm,
        "n_seen_images": int(seen_img.sum()),
        "n_unseen_images": int((~seen_img).sum()),
        # the bias sweep behind AUC / best HM (last point: the fixed bias), for plots and debugging
        "biaslist": [float(v) for v in biaslist] + [float(bias)],
        "curve_seen": [float(v) * 100 for v in seen],
        "curve_unseen": [float(v) * 100 for v in unseen],
        "curve_hm": [float(v) * 100 for v in np.nan_to_num(hm)],
    }


# -- streaming ----------------------------------------------------------------------------------

@dataclass
class ScoreSummary:
    """What the protocol needs of each image's scores (all indices are into ``dataset.pairs``)."""

    seen_value: torch.Tensor  # [n] best seen candidate score (raw)
    seen_index: torch.Tensor  # [n]
    unseen_values: torch.Tensor  # [n, K] best non-seen candidate scores, descending
    unseen_index: torch.Tensor  # [n, K] (lowest index first among equal scores); -1 where none
    gt_score: torch.Tensor  # [n]

    @property
    def k(self) -> int:
        return self.unseen_values.shape[1]


class ScoreAccumulator:
    """Feed score chunks ``[n, chunk]`` over consecutive pair columns; `summary()` at the end.

    Memory is ``O(n (K + chunk))``: the open world of C-GQA (278k pairs) streams in column chunks.
    """

    def __init__(self, pair_gt: torch.Tensor, seen_mask: torch.Tensor, closed_mask: torch.Tensor | None = None,
                 k: int = 8) -> None:
        self.pair_gt = pair_gt.long().cpu()
        self.seen_mask = seen_mask.bool().cpu()
        self.closed_mask = torch.ones_like(self.seen_mask) if closed_mask is None else closed_mask.bool().cpu()
        n, self.k = len(self.pair_gt), k
        self.seen_value = torch.full((n,), float("-inf"))
        self.seen_index = torch.full((n,), -1, dtype=torch.long)
        self.unseen_values = torch.full((n, k), float("-inf"))
        self.unseen_index = torch.full((n, k), -1, dtype=torch.long)
        self.gt_score = torch.full((n,), float("nan"))
        self.offset = 0

    def add(self, chunk: torch.Tensor, rows: slice | None = None) -> None:
        """Scores of columns ``offset : offset + chunk.shape[1]`` for all images (rows=None), or for
        a row block of images when the caller streams both ways (then call `next_columns` after
        the last row block of a column chunk)."""
        chunk = chunk.detach().float().cpu()
        rows = rows or slice(0, len(self.pair_gt))
        width = chunk.shape[1]
        cols = torch.arange(self.offset, self.offset + width)
        seen = self.seen_mask[cols]
        cand = self.closed_mask[cols]
        gt = self.pair_gt[rows]
        inside = (gt >= self.offset) & (gt < self.offset + width)
        if inside.any():
            r = inside.nonzero().squeeze(1)
            block = self.gt_score[rows]  # a view: rows is a slice
            block[r] = chunk[r, gt[r] - self.offset]
        # Seen: seen pairs are always candidates in the reference (train pairs ⊆ every phase's set).
        s_cols = (seen & cand).nonzero().squeeze(1)
        if len(s_cols):
            vals, arg = chunk[:, s_cols].max(dim=1)  # max() returns the first maximal index
            idx = cols[s_cols][arg]
            cur_v, cur_i = self.seen_value[rows], self.seen_index[rows]
            better = vals > cur_v  # equal: keep the earlier (lower) index
            self.seen_value[rows] = torch.where(better, vals, cur_v)
            self.seen_index[rows] = torch.where(better, idx, cur_i)
        u_cols = (~seen & cand).nonzero().squeeze(1)
        if len(u_cols):
            vals = chunk[:, u_cols]
            v_top, order = _stable_topk(vals, min(self.k, vals.shape[1]))
            i_top = cols[u_cols][order]
            all_v = torch.cat([self.unseen_values[rows], v_top], dim=1)
            all_i = torch.cat([self.unseen_index[rows], i_top], dim=1)
            # merge: descending value, ascending index among ties (existing columns have lower indices)
            key_order = torch.sort(all_v, dim=1, descending=True, stable=True)[1][:, : self.k]
            self.unseen_values[rows] = torch.gather(all_v, 1, key_order)
            self.unseen_index[rows] = torch.gather(all_i, 1, key_order)

    def next_columns(self, width: int) -> None:
        self.offset += width

    def add_columns(self, chunk: torch.Tensor) -> None:
        """All images, next ``chunk.shape[1]`` columns."""
        self.add(chunk)
        self.next_columns(chunk.shape[1])

    def summary(self) -> ScoreSummary:
        if self.offset != len(self.seen_mask):
            raise ValueError(f"scores fed for {self.offset} of {len(self.seen_mask)} pairs")
        return ScoreSummary(self.seen_value, self.seen_index, self.unseen_values, self.unseen_index, self.gt_score)


def _stable_topk(vals: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row ordered by (value descending, column ascending): deterministic under ties.

    ``torch.topk`` picks the values; rows where ties at the k-th value reach beyond the selection are
    redone with a stable full sort (rare except for integer-valued scores).
    """
    top_v, top_i = vals.topk(k, dim=1)
    kth = top_v[:, -1:]
    spill = (vals >= kth).sum(1) > k
    by_index = torch.sort(top_i, dim=1)[0]  # same set, column order
    v_by_index = torch.gather(vals, 1, by_index)
    v, o = torch.sort(v_by_index, dim=1, descending=True, stable=True)
    i = torch.gather(by_index, 1, o)
    if spill.any():
        rows = spill.nonzero().squeeze(1)
        sv, so = torch.sort(vals[rows], dim=1, descending=True, stable=True)
        v[rows], i[rows] = sv[:, :k], so[:, :k]
    return v, i


def summarize(scores: torch.Tensor, pair_gt: torch.Tensor, seen_mask: torch.Tensor,
              closed_mask: torch.Tensor | None = None, k: int = 8, chunk: int = 65536) -> ScoreSummary:
    acc = ScoreAccumulator(pair_gt, seen_mask, closed_mask, k)
    for start in range(0, scores.shape[1], chunk):
        acc.add_columns(scores[:, start : start + chunk])
    return acc.summary()


def _predict_summary(s: ScoreSummary, biases: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted pair per (bias, image) ``[B, n]``, and a flag where K kept scores may not decide a
    float32 rounding tie (the K-th kept score equals the best after adding the bias)."""
    b = biases.float().view(-1, 1, 1)
    uv = s.unseen_values.unsqueeze(0) + b  # float32, as the reference adds it
    valid = (s.unseen_index >= 0).unsqueeze(0)
    uv = torch.where(valid, uv, torch.full_like(uv, float("-inf")))
    best = uv.max(dim=2, keepdim=True).values
    tie = (uv == best) & valid
    big = torch.iinfo(torch.long).max
    candidates = torch.where(tie, s.unseen_index.unsqueeze(0).expand_as(uv), torch.full_like(uv, big, dtype=torch.long))
    u_idx = candidates.min(dim=2).values
    u_best = best.squeeze(2)
    has_u = u_idx != big
    ambiguous = tie[..., -1] & (s.unseen_index[:, -1] >= 0).unsqueeze(0) & (s.k > 1)
    sv = s.seen_value.unsqueeze(0)
    si = s.seen_index.unsqueeze(0).expand_as(u_idx)
    has_s = si >= 0
    pick_u = has_u & (~has_s | (u_best > sv) | ((u_best == sv) & (u_idx < si)))
    pred = torch.where(pick_u, u_idx, si)
    return pred, ambiguous


def summary_metrics(s: ScoreSummary, attr_gt: torch.Tensor, obj_gt: torch.Tensor, pair_gt: torch.Tensor,
                    pairs: torch.Tensor, seen_mask: torch.Tensor, bias: float = BIAS) -> dict[str, float]:
    """The reference metrics from a `ScoreSummary` (equal to `dense_metrics` on the same scores)."""
    seen_mask = seen_mask.bool().cpu()
    pair_gt = pair_gt.cpu()
    seen_img = seen_mask[pair_gt]
    pairs = pairs.cpu()

    def match_of(pred: torch.Tensor):
        safe = pred.clamp(min=0)
        a = (pairs[safe, 0] == attr_gt) & (pred >= 0)
        o = (pairs[safe, 1] == obj_gt) & (pred >= 0)
        return a, o, a & o

    fixed, amb0 = _predict_summary(s, torch.tensor([0.0, bias]))
    attr_m, obj_m, _ = match_of(fixed[0])
    _, _, match_b = match_of(fixed[1])
    correct = s.gt_score[~seen_img]
    max_seen = s.seen_value[~seen_img]
    diff = (max_seen - correct)[match_b[~seen_img]] - 1e-4
    biaslist = torch.sort(diff)[0]
    biaslist = biaslist[:: max(len(biaslist) // MAGIC_BINSIZE, 1)]
    if len(biaslist):
        preds, amb = _predict_summary(s, biaslist)
    else:
        preds, amb = torch.empty(0, len(pair_gt), dtype=torch.long), torch.zeros(0, len(pair_gt), dtype=torch.bool)
    seen_acc, unseen_acc = [], []
    for pred in preds:
        _, _, m = match_of(pred)
        seen_acc.append(_mean(m[seen_img]))
        unseen_acc.append(_mean(m[~seen_img]))
    seen_acc.append(_mean(match_b[seen_img]))
    unseen_acc.append(_mean(match_b[~seen_img]))
    out = _summarise(np.array(seen_acc), np.array(unseen_acc), biaslist.double().numpy(), bias,
                     _mean(attr_m), _mean(obj_m), seen_img)
    out["rounding_ties_beyond_k"] = int(amb0.sum() + amb.sum())
    return out


# -- open world: feasibility -----------------------------------------------------------------------

def feasibility_thresholds(feasibility: torch.Tensor, seen_mask: torch.Tensor, trials: int = 50) -> np.ndarray:
    """CSP's search grid: linspace(min, max) of the unseen pairs' feasibility, ``trials`` points."""
    f, seen = feasibility.float().cpu(), seen_mask.float().cpu()
    low = float((f + seen * 10.0).min())
    high = float((f - seen * 10.0).max())
    return np.linspace(low, high, num=trials)


FEASIBILITY_RULES = ("multiply", "mask")


def apply_feasibility(scores: torch.Tensor, feasibility: torch.Tensor, seen_mask: torch.Tensor, threshold: float,
                      legacy: bool | None = None, columns: slice | None = None, rule: str = "multiply") -> torch.Tensor:
    """Filter infeasible pairs (``feasibility < threshold``; seen pairs are always kept).

    ``rule="multiply"`` (default): the released CSP/DFSP Evaluator's rule
    ``scores * (1[f >= th] + seen_mask)`` (infeasible -> 0; seen pairs doubled when th <= 0).
    ``rule="mask"``: infeasible scores become -inf (stricter: a 0 can still outrank negative scores).
    `legacy` (older keyword): True = multiply, False = mask.
    ``columns`` selects the pair columns `scores` covers (for streamed chunks).
    """
    if legacy is not None:
        rule = "multiply" if legacy else "mask"
    if rule not in FEASIBILITY_RULES:
        raise VLPromptError(f"feasibility rule {rule!r} is not one of {list(FEASIBILITY_RULES)}")
    cols = columns or slice(0, feasibility.shape[0])
    f = feasibility[cols].to(scores.device)
    seen = seen_mask[cols].to(scores.device)
    feasible = f >= threshold
    if rule == "multiply":
        return scores * (feasible.to(scores.dtype) + seen.to(scores.dtype))
    keep = feasible | seen
    return scores.masked_fill(~keep, float("-inf"))


NO_THRESHOLD = -10.0  # the released search's start: every pair passes (feasibility scores are >= -1)


def pick_threshold(aucs: Sequence[float], thresholds: Sequence[float]) -> int | None:
    """Index of the threshold with the best AUC, CSP/DFSP's rule (strictly better than the best so
    far, starting at AUC 0); None when no threshold gives AUC > 0: the released search then keeps
    `NO_THRESHOLD`, and the statistics must be those at `NO_THRESHOLD` too."""
    best_auc, best_i = 0.0, None
    for i, auc in enumerate(aucs):
        if auc > best_auc:
            best_auc, best_i = auc, i
    return best_i


def blocks_metrics(blocks: Iterable[tuple[slice, torch.Tensor]], attr_gt: torch.Tensor, obj_gt: torch.Tensor,
                   pair_gt: torch.Tensor, pairs: torch.Tensor, seen_mask: torch.Tensor,
                   closed_mask: torch.Tensor | None = None, k: int = 8, feasibility: torch.Tensor | None = None,
                   threshold: float | None = None, rule: str = "multiply", trials: int = 50) -> dict:
    """The reference metrics of score ``blocks`` (``(column slice, [n, cols])``, streamed over all pair
    columns), the one code path of the evaluator and `vlprompt.czsl.protocol.open_world_protocol`.

    Without `feasibility`: plain metrics. With it, `threshold` filters by `rule`; ``threshold=None``
    scores the released grid (``trials`` points) plus `NO_THRESHOLD` in one pass and keeps the best AUC
    (`pick_threshold`; when none beats AUC 0, threshold and statistics are those at `NO_THRESHOLD`),
    adding ``threshold_aucs`` and ``threshold_grid``."""
    search = feasibility is not None and threshold is None
    if search:
        grid = feasibility_thresholds(feasibility, seen_mask, trials)
        thresholds = np.append(grid, NO_THRESHOLD)  # the released start value last
    else:
        thresholds = None if feasibility is None else np.array([threshold])
    accs = [ScoreAccumulator(pair_gt, seen_mask, closed_mask, k) for _ in range(1 if thresholds is None else len(thresholds))]
    for cols, block in blocks:
        for i, acc in enumerate(accs):
            acc.add_columns(block if thresholds is None else apply_feasibility(
                block, feasibility, seen_mask, float(thresholds[i]), columns=cols, rule=rule))
    results = [summary_metrics(acc.summary(), attr_gt, obj_gt, pair_gt, pairs, seen_mask) for acc in accs]
    if thresholds is None:
        return dict(results[0])
    best = pick_threshold([r["AUC"] for r in results[:-1]], thresholds[:-1]) if search else 0
    best = len(results) - 1 if best is None else best
    result = dict(results[best])
    result.update(threshold=float(thresholds[best]), feasibility_rule=rule)
    if search:
        result["threshold_aucs"] = [float(r["AUC"]) for r in results[:-1]]
        result["threshold_grid"] = [float(t) for t in grid]
    return result
