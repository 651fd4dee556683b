"""Classification metrics on cases worked out by hand."""

from __future__ import annotations

import pytest
import torch

from vlprompt.engine.metrics import classification_metrics


def test_hand_computed_three_classes():
    # labels 0,0,0,1; predictions 0,0,1,2 -> top1 2/4; class 0 recall 2/3, class 1 recall 0;
    # class 2 has no image and is left out of the mean: (2/3 + 0) / 2 = 33.33.
    logits = torch.tensor([[3.0, 2, 1], [5, 1, 0], [0, 4, 1], [0, 1, 2]])
    labels = torch.tensor([0, 0, 0, 1])
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(50.0)
    assert m["top5"] == pytest.approx(100.0)  # k capped at 3 classes: every label is in the top 3
    assert m["mean_per_class_recall"] == pytest.approx(100.0 / 3)
    assert m["n_images"] == 4


def test_top5_with_six_classes():
    # Both images score classes 0 > 1 > ... > 5. Label 5 is ranked 6th (miss), label 4 5th (hit).
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1], [6.0, 5, 4, 3, 2, 1]])
    m = classification_metrics(logits, torch.tensor([5, 4]))
    assert m == {"top1": 0.0, "top5": 50.0, "mean_per_class_recall": 0.0, "n_images": 2}


def test_balanced_recall_differs_from_top1():
    # 3 images of class 0 all right, 1 image of class 1 wrong: top1 75, mean recall (100 + 0) / 2 = 50.
    logits = torch.tensor([[1.0, 0], [1, 0], [1, 0], [1, 0]])
    m = classification_metrics(logits, torch.tensor([0, 0, 0, 1]))
    assert (m["top1"], m["mean_per_class_recall"]) == (75.0, 50.0)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="expected logits"):
        classification_metrics(torch.zeros(3, 2), torch.zeros(2))
