"""KgCoOp: CE + weight x (1 - mean cos) to the hand-crafted class features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlprompt.methods import build_method
from vlprompt.methods.text_losses import kgcoop_loss

CLASSES = ["cat", "dog", "red car"]


def test_kgcoop_loss_equals_hand_computation():
    soft = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])  # not unit: the loss normalises
    hand = torch.tensor([[0.6, 0.8], [0.0, 1.0], [-4.0, 3.0]])
    cosines = [0.6, 1.0, 0.0]
    assert float(kgcoop_loss(soft, hand)) == pytest.approx(1 - sum(cosines) / 3, rel=1e-6)
    # ||a - b||^2 = 2 - 2 cos for unit vectors: the paper's form is twice this loss
    a, b = F.normalize(soft, dim=-1), F.normalize(hand, dim=-1)
    assert float(((a - b) ** 2).sum(-1).mean()) == pytest.approx(2 * float(kgcoop_loss(soft, hand)), rel=1e-6)


def test_kgcoop_method_loss(tiny_vit):
    method = build_method("kgcoop", tiny_vit, CLASSES, {"templates": "a photo of a {}."})
    assert method.config.weight == 8.0 and method.n_ctx > 0
    hand = method.handcrafted()
    # ctx from "a photo of a" and the same template: the learned features start at the hand-crafted ones
    torch.testing.assert_close(method.class_features(), hand, atol=1e-5, rtol=0)
    with torch.no_grad():
        method.ctx.add_(0.05 * torch.randn(method.ctx.shape, generator=torch.Generator().manual_seed(0)))
    method.train()
    g = torch.Generator().manual_seed(1)
    batch = {
        "features": F.normalize(torch.randn(4, tiny_vit.identity.embed_dim, generator=g), dim=-1),
        "labels": torch.tensor([0, 1, 2, 0]),
    }
    loss, stats = method.loss(method(batch), batch)
    with torch.no_grad():
        text = method.class_features()
        ce = F.cross_entropy(tiny_vit.logit_scale * batch["features"] @ text.t(), batch["labels"])
        cos = [float(F.cosine_similarity(text[c], hand[c], dim=0)) for c in range(3)]
    want = float(ce) + 8.0 * (1 - sum(cos) / 3)
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    assert stats["kg_loss"] == pytest.approx(1 - sum(cos) / 3, rel=1e-4) and stats["kg_loss"] > 0
    assert not math.isclose(stats["loss"], stats["ce"])
    loss.backward()
    assert {n for n, p in method.named_parameters() if p.grad is not None} == {"ctx"}
    assert all(p.grad is None for p in tiny_vit.parameters())


def test_kgcoop_weight_zero_is_coop(tiny_vit):
    kg = build_method("kgcoop", tiny_vit, CLASSES, {"weight": 0.0})
    coop = build_method("coop", tiny_vit, CLASSES, {"n_ctx": 4, "ctx_init": "a photo of a"})
    kg.train()
    coop.train()
    batch = {"features": F.normalize(torch.randn(3, tiny_vit.identity.embed_dim), dim=-1), "labels": torch.tensor([0, 1, 2])}
    l_kg, _ = kg.loss(kg(batch), batch)
    l_coop, _ = coop.loss(coop(batch), batch)
    assert float(l_kg.detach()) == pytest.approx(float(l_coop.detach()), rel=1e-6)
