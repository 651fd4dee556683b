"""Evaluate a pair method on a CZSL phase: text encoded once (in chunks), scores streamed.

Memory stays bounded whatever the number of candidate pairs: the pair text features ``[P, D]`` are
the only per-pair tensor; scores exist one ``[n, chunk]`` block at a time and are reduced to a
`ScoreSummary` (``O(n K)``). The open world's feasibility-threshold search (50 thresholds on the
validation set) runs all thresholds in the same single pass over the scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from vlprompt.czsl.data import CZSLDataset
from vlprompt.czsl.metrics import FEASIBILITY_RULES, blocks_metrics
from vlprompt.engine.features import extract_image_features
from vlprompt.engine.views import SeededImages
from vlprompt.errors import VLPromptError
from vlprompt.methods.pairs import PairMethod


@dataclass
class EvalOptions:
    batch_size: int = 128  # images per batch
    pair_chunk: int = 16384  # pair columns per score block
    k: int = 8  # non-seen candidates kept per image (float32 rounding ties after a bias)
    num_workers: int = 0
    threshold_trials: int = 50  # open world: thresholds tried on val
    feasibility_rule: str = "multiply"  # open world: multiply (released CSP/DFSP Evaluator) | mask (-inf)

    def __post_init__(self) -> None:
        if self.feasibility_rule not in FEASIBILITY_RULES:
            raise VLPromptError(f"feasibility_rule {self.feasibility_rule!r} is not one of {list(FEASIBILITY_RULES)}")


def _no_seed(index: int) -> int:
    return 0


@torch.no_grad()
def image_features(method: PairMethod, items: Sequence, state: dict[str, Any], options: EvalOptions,
                   cache=None) -> torch.Tensor:
    """``[n, D]`` normalised image features as the method scores them."""
    backbone = method.backbone
    if not method.needs_images:
        if cache is not None:
            feats = cache.get(backbone, items, backbone.eval_transform, views=1)[0]
        else:
            feats = extract_image_features(backbone, items, backbone.eval_transform, batch_size=options.batch_size,
                                           num_workers=options.num_workers, progress=False)
        return feats.to(method.pair_index.device).float()
    loader = DataLoader(SeededImages(items, backbone.eval_transform, _no_seed), batch_size=options.batch_size,
                        num_workers=options.num_workers)
    out = []
    for images, _, _ in loader:
        out.append(method.eval_image_features({"images": images.to(backbone.device)}, state).float())
    if not out:
        return torch.empty(0, backbone.identity.embed_dim)
    return torch.cat(out)


@torch.no_grad()
def batch_scores(method: PairMethod, items: Sequence, state: dict[str, Any], options: EvalOptions) -> torch.Tensor:
    """``[n, P]`` scores of a method whose text side depends on the image batch (DFSP ``img2txt``):
    each batch of ``options.batch_size`` images scored on its own, as the released code does."""
    backbone = method.backbone
    loader = DataLoader(SeededImages(items, backbone.eval_transform, _no_seed), batch_size=options.batch_size,
                        num_workers=options.num_workers)
    return torch.cat([method.eval_batch_scores({"images": images.to(backbone.device)}, state).float().cpu()
                      for images, _, _ in loader])


@torch.no_grad()
def stream_scores(method: PairMethod, state: dict[str, Any], images: torch.Tensor, n_pairs: int, chunk: int):
    """Yield ``(column slice, scores [n, chunk])`` over all pair columns."""
    scale = method.backbone.logit_scale.float()
    for start in range(0, n_pairs, chunk):
        cols = slice(start, min(start + chunk, n_pairs))
        text = method.eval_text_features(state, cols).float().to(images.device)
        yield cols, (scale * images @ text.t()).cpu()


@torch.no_grad()
def evaluate_phase(method: PairMethod, dataset: CZSLDataset, phase: str, options: EvalOptions | None = None,
                   feasibility: torch.Tensor | None = None, threshold: float | None = None, cache=None,
                   search_threshold: bool = False) -> dict[str, Any]:
    """CZSL metrics of `method` on `phase` (``val`` / ``test``).

    Open world with `feasibility` ``[P]``: `threshold` filters infeasible pairs by
    ``options.feasibility_rule`` (recorded in the result); with ``search_threshold=True`` all thresholds
    of the grid are scored in one pass and the one with the best AUC is returned (``result["threshold"]``,
    CSP's rule: strictly better AUC, start -10; when none beats AUC 0 the result is the one at -10,
    threshold and statistics alike, and ``result["threshold_aucs"]`` lists the grid's AUCs).
    """
    options = options or EvalOptions()
    items = dataset.items[phase]
    if not items:
        raise VLPromptError(f"{dataset.name}: no {phase} images")
    started = time.perf_counter()
    was_training = method.training
    method.eval()
    labels = dataset.labels(phase)
    pairs = dataset.all_pair_index
    seen, closed = dataset.seen_mask(), dataset.closed_mask(phase)
    state = method.prepare_eval(pairs)
    if getattr(method, "batch_scores", False):
        full = batch_scores(method, items, state, options)
        blocks = ((slice(s, min(s + options.pair_chunk, len(pairs))), full[:, s : s + options.pair_chunk])
                  for s in range(0, len(pairs), options.pair_chunk))
    else:
        blocks = stream_scores(method, state, image_features(method, items, state, options, cache), len(pairs),
                               options.pair_chunk)
    if feasibility is not None and not search_threshold and threshold is None:
        raise VLPromptError("open-world evaluation with feasibility scores needs a threshold (or a search on val)")
    result = blocks_metrics(blocks, labels["attr"], labels["obj"], labels["pair"], pairs, seen, closed, options.k,
                            feasibility, None if search_threshold else threshold, options.feasibility_rule,
                            options.threshold_trials)
    method.train(was_training)
    result.update({"phase": phase, "open_world": dataset.open_world, "n_pairs": len(pairs),
                   "n_candidates": int(closed.sum()), "n_images": len(items),
                   "seconds": time.perf_counter() - started})
    return result


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """A small table: rows = names, columns = S / U / HM / AUC / attr / obj."""
    cols = [("best_seen", "S"), ("best_unseen", "U"), ("best_hm", "HM"), ("AUC", "AUC"), ("attr_acc", "attr"),
            ("obj_acc", "obj")]
    lines = ["{:<24}".format("") + "".join(f"{c:>8}" for _, c in cols)]
    for name, r in results.items():
        lines.append(f"{name:<24}" + "".join(f"{r.get(k, float('nan')):8.2f}" for k, _ in cols))
    return "\n".join(lines)


@torch.no_grad()
def validation_loss(method: PairMethod, dataset: CZSLDataset, phase: str, train_labels: Any,
                    options: EvalOptions | None = None, cache=None) -> float:
    """The method's training loss on `phase` images with every pair of the split as a candidate, averaged
    over batches of ``options.batch_size`` (the released DFSP's validation loss, its ``best_loss``)."""
    options = options or EvalOptions()
    items = dataset.items[phase]
    labels = dataset.labels(phase)["pair"]
    backbone = method.backbone
    was_training = method.training
    method.eval()
    method.set_pairs(dataset.all_pair_index)
    try:
        losses = []
        if method.needs_images:
            loader = DataLoader(SeededImages(items, backbone.eval_transform, _no_seed), batch_size=options.batch_size,
                                num_workers=options.num_workers)
            batches = ({"images": images.to(backbone.device)} for images, _, _ in loader)
        else:
            feats = image_features(method, items, {}, options, cache)
            batches = ({"features": feats[i : i + options.batch_size]} for i in range(0, len(items), options.batch_size))
        start = 0
        with method.text_reused():  # eval mode: the pairs' text is the same for every batch
            for batch in batches:
                n = len(next(iter(batch.values())))
                batch["labels"] = labels[start : start + n].to(method.pair_index.device)
                start += n
                loss, _ = method.loss(method(batch), batch)
                losses.append(float(loss))
    finally:
        method.set_label_space(train_labels)
        method.train(was_training)
    return float(np.mean(losses)) if losses else float("nan")
