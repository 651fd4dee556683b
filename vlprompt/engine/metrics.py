"""Classification metrics, as percentages (0-100)."""

from __future__ import annotations

import torch


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """top1, top5 (k capped at the number of classes), mean per-class recall and the image count.

    Mean per-class recall averages over the classes present in `labels`; classes with no test
    image have no recall and are left out (as on base-to-new splits evaluated separately).
    """
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"expected logits [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    n, num_classes = logits.shape
    if n == 0:
        return {"top1": float("nan"), "top5": float("nan"), "mean_per_class_recall": float("nan"), "n_images": 0}
    labels = labels.to(logits.device).long()
    k = min(5, num_classes)
    topk = logits.topk(k, dim=1).indices  # [N, k]
    hits = topk == labels[:, None]
    correct1 = hits[:, 0].float()
    present = labels.unique()
    recalls = torch.stack([correct1[labels == c].mean() for c in present])
    return {
        "top1": 100.0 * correct1.mean().item(),
        "top5": 100.0 * hits.any(dim=1).float().mean().item(),
        "mean_per_class_recall": 100.0 * recalls.mean().item(),
        "n_images": int(n),
    }
