"""CoOp, CoCoOp, zero-shot and linear probe against direct computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt.errors import VLPromptError
from vlprompt.methods import build_method

NAMES = ["dog", "cat", "red car", "sea lion"]


def _features(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_coop_from_words_equals_the_hand_written_prompt(any_backbone, position):
    words = {"end": "a photo of a", "middle": "a photo of a", "front": "a photo of a"}[position]
    coop = build_method("coop", any_backbone, NAMES, {"ctx_init": words, "class_position": position})
    half = coop.n_ctx // 2
    texts = {
        "end": [f"a photo of a {n}." for n in NAMES],
        "front": [f"{n} a photo of a." for n in NAMES],
        "middle": [f"a photo {n} of a." for n in NAMES],
    }[position]
    assert half == 2
    with torch.no_grad():
        ref = F.normalize(any_backbone.model.encode_text(any_backbone.tokenize(texts)), dim=-1)
        assert (coop.class_features() - ref).abs().max() < 1e-5


def test_coop_logits_and_gradients(tiny_vit):
    coop = build_method("coop", tiny_vit, NAMES, {"n_ctx": 4, "init_seed": 0})
    feats = _features(6, 32)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    logits = coop({"features": feats})
    expected = tiny_vit.logit_scale * feats @ coop.class_features().t()
    assert torch.allclose(logits, expected, atol=1e-5)
    loss, stats = coop.loss(logits, {"labels": labels})
    loss.backward()
    assert coop.ctx.grad is not None and coop.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_vit.parameters())
    assert list(coop.trainable_state()) == ["ctx"] and coop.ctx.shape == (4, 32)
    assert 0 <= stats["acc"] <= 100


def test_coop_random_init_is_seeded_and_scaled(tiny_vit):
    a = build_method("coop", tiny_vit, NAMES, {"n_ctx": 16, "init_seed": 3})
    b = build_method("coop", tiny_vit, NAMES, {"n_ctx": 16, "init_seed": 3})
    assert torch.equal(a.ctx, b.ctx)
    assert 0.015 < a.ctx.std().item() < 0.025


def test_class_specific_context_refuses_new_classes(tiny_vit):
    coop = build_method("coop", tiny_vit, NAMES, {"n_ctx": 2, "class_specific": True})
    assert coop.ctx.shape == (4, 2, 32)
    assert coop.class_features().shape == (4, 32)
    with pytest.raises(VLPromptError, match="class-specific"):
        coop.set_classnames(["a", "b"])
    unified = build_method("coop", tiny_vit, NAMES, {"n_ctx": 2})
    unified.set_classnames(["apple", "pear"])
    assert unified.class_features().shape == (2, 32)


def test_coop_class_specific_init_as_released(tiny_vit, caplog):
    """Random class-specific context: every class drawn independently, the same N(0, 0.02) draw as one
    [C, n, W] tensor; with init words: one shared context (released), or per-class copies (option)."""
    csc = build_method("coop", tiny_vit, NAMES, {"n_ctx": 4, "class_specific": True, "init_seed": 5})
    expected = torch.randn(4, 4, 32, generator=torch.Generator().manual_seed(5)) * 0.02
    assert torch.equal(csc.ctx.detach(), expected)
    assert all(not torch.equal(csc.ctx[0], csc.ctx[i]) for i in range(1, 4))  # classes start apart
    words = tiny_vit.embed_tokens(tiny_vit.tokenize(["a photo of a"])[:, 1:5])[0].detach()
    with caplog.at_level("INFO", logger="vlprompt.methods.coop"):
        shared = build_method("coop", tiny_vit, NAMES, {"ctx_init": "a photo of a", "class_specific": True})
    assert shared.ctx.shape == (4, 32) and shared.class_agnostic and torch.allclose(shared.ctx, words)
    assert "keeps one shared context" in caplog.text
    shared.set_classnames(["a", "b"])  # unified: new classes are fine
    copies = build_method("coop", tiny_vit, NAMES, {"ctx_init": "a photo of a", "class_specific": True,
                                                   "csc_word_init": "copies"})
    assert copies.ctx.shape == (4, 4, 32) and not copies.class_agnostic
    assert all(torch.allclose(copies.ctx[i], words) for i in range(4))
    with pytest.raises(VLPromptError, match="csc_word_init 'each' is not one of"):
        build_method("coop", tiny_vit, NAMES, {"csc_word_init": "each"})


def test_cocoop_batched_equals_per_image_loop(tiny_vit):
    torch.manual_seed(0)
    cocoop = build_method("cocoop", tiny_vit, NAMES, {})
    assert cocoop.meta_net[0].out_features == 32 // 16 and cocoop.meta_net[2].out_features == 32
    feats = _features(3, 32, seed=1)
    logits = cocoop({"features": feats})
    for i in range(3):  # the way the original trainer runs: one image at a time
        ctx = cocoop.ctx + cocoop.meta_net(feats[i])
        text = F.normalize(cocoop.prompts.encode(ctx=ctx), dim=-1)
        assert torch.allclose(logits[i], tiny_vit.logit_scale * text @ feats[i], atol=1e-4)
    chunked = build_method("cocoop", tiny_vit, NAMES, {"text_chunk": 1})
    chunked.load_state_dict(cocoop.state_dict())
    assert torch.allclose(chunked({"features": feats}), logits, atol=1e-5)
    assert cocoop.class_features() is None


def test_zero_shot_method_matches_encode_text(tiny_vit):
    zs = build_method("zero-shot", tiny_vit, NAMES, {"templates": ["a photo of a {}."]})
    ref = F.normalize(tiny_vit.model.encode_text(tiny_vit.tokenize([f"a photo of a {n}." for n in NAMES])), dim=-1)
    assert (zs.class_features() - ref).abs().max() < 1e-5
    assert zs.trainable_state() == {}


def test_linear_probe_fits_separable_features(tiny_vit):
    centers = _features(4, 32, seed=5)
    labels = torch.arange(4).repeat(10)
    feats = F.normalize(centers[labels] + 0.05 * torch.randn(40, 32), dim=-1)
    probe = build_method("linear-probe", tiny_vit, NAMES, {})
    info = probe.fit_features(feats, labels, feats, labels)
    assert info["val_acc"] == 100.0
    assert (probe({"features": feats}).argmax(-1) == labels).all()
    with pytest.raises(VLPromptError):
        probe.set_classnames(["x"])
