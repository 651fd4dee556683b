"""Tailor's composition: the layout (mask, re-indexed positions) by hand, attribute B's positions get
exactly zero attention to attribute A's in every block, the composed prompts' attribute states equal each
prompt's own states, the attribute stage trains each prompt on its own labels, and towers without the
layout hook refuse in one line."""

from __future__ import annotations

import pytest
import torch

from vlprompt.backbones.capabilities import Capability
from vlprompt.errors import VLPromptError
from vlprompt.methods import build_method
from vlprompt.methods.tailor import composition_layout

CLASSES = ["red circle", "blue square", "red square", "green star"]


def _method(backbone, **config):
    torch.manual_seed(0)
    method = build_method("tailor", backbone, CLASSES, {"n_ctx": 3, "init_std": 0.5, **config})
    return method.eval()


def _composed_states(method, ctx_a=None, ctx_b=None):
    vectors = {"ctx_a": method.ctx_a if ctx_a is None else ctx_a, "ctx_b": method.ctx_b if ctx_b is None else ctx_b}
    if method.config.n_connector:
        vectors["conn"] = method.connector
    embeds = method.composed.assemble(**vectors)
    with torch.no_grad():
        return method.backbone.text_states_with_layout(embeds, method.composed.eot_index, method.layout)


def test_layout_by_hand():
    layout = composition_layout(10, torch.tensor([1, 2]), torch.tensor([3, 4]), mask=True, reindex=True)
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[3:5, 1:3] = True
    expected[1:3, 3:5] = True
    assert torch.equal(layout.blocked, expected)
    assert layout.position_ids.tolist() == [0, 1, 2, 1, 2, 3, 4, 5, 6, 7]
    plain = composition_layout(10, torch.tensor([1, 2]), torch.tensor([3, 4]), mask=False, reindex=False)
    assert plain.blocked is None and plain.position_ids is None


def test_attribute_b_gets_exactly_zero_attention_to_attribute_a(tiny_vit):
    method = _method(tiny_vit, n_connector=2)
    pos_a, pos_b = method.composed.positions("ctx_a")[0], method.composed.positions("ctx_b")[0]
    weights = []

    def record(module, args, kwargs, output):
        q, k, v = args[:3]
        _, w = module.forward(q, k, v, attn_mask=kwargs["attn_mask"], need_weights=True, average_attn_weights=False)
        weights.append(w)

    blocks = tiny_vit.model.transformer.resblocks
    handles = [block.attn.register_forward_hook(record, with_kwargs=True) for block in blocks]
    try:
        _composed_states(method)
    finally:
        for handle in handles:
            handle.remove()
    assert len(weights) == len(blocks)
    for w in weights:  # [N, heads, L, L]
        from_b_to_a = w[:, :, pos_b][:, :, :, pos_a]
        assert torch.count_nonzero(from_b_to_a) == 0
        assert (w[:, :, pos_b][:, :, :, pos_b] > 0).any()  # B still attends to itself
        eot = method.composed.eot_index
        assert (w[torch.arange(len(eot)), :, eot][:, :, pos_a] > 0).all()  # the pooled token reads prompt A


def test_each_prompt_is_untouched_by_the_other(tiny_vit):
    method = _method(tiny_vit, n_connector=1)
    pos_a, pos_b = method.composed.positions("ctx_a")[0], method.composed.positions("ctx_b")[0]
    base = _composed_states(method)
    moved_a = _composed_states(method, ctx_a=method.ctx_a + torch.randn_like(method.ctx_a))
    moved_b = _composed_states(method, ctx_b=method.ctx_b + torch.randn_like(method.ctx_b))
    assert torch.equal(moved_a[:, pos_b], base[:, pos_b])  # bitwise: zero weight on A
    assert torch.equal(moved_b[:, pos_a], base[:, pos_a])  # causal: A precedes B
    assert not torch.allclose(moved_a[:, -1], base[:, -1])  # the class tokens do read A
    unmasked = _method(tiny_vit, n_connector=1, mask=False)
    plain = _composed_states(unmasked)
    moved = _composed_states(unmasked, ctx_a=unmasked.ctx_a + torch.randn_like(unmasked.ctx_a))
    assert not torch.allclose(moved[:, pos_b], plain[:, pos_b])


def test_composed_attribute_states_equal_each_prompts_own(tiny_vit):
    method = _method(tiny_vit)
    pos_a, pos_b = method.composed.positions("ctx_a")[0], method.composed.positions("ctx_b")[0]
    composed = _composed_states(method)
    own_a = tiny_vit.text_token_states(method.prompt_a.assemble(ctx=method.ctx_a), method.prompt_a.eot_index)
    own_b = tiny_vit.text_token_states(method.prompt_b.assemble(ctx=method.ctx_b), method.prompt_b.eot_index)
    slot_a, slot_b = method.prompt_a.positions("ctx")[0], method.prompt_b.positions("ctx")[0]
    with torch.no_grad():
        torch.testing.assert_close(composed[:, pos_a], own_a[:1, slot_a].expand(len(CLASSES), -1, -1), rtol=0, atol=1e-5)
        torch.testing.assert_close(composed[:, pos_b], own_b[:1, slot_b].expand(len(CLASSES), -1, -1), rtol=0, atol=1e-5)
        # without re-indexing, B sits at other positions than in its own training: its states differ
        shifted = _composed_states(_method(tiny_vit, reindex=False))
        assert not torch.allclose(shifted[:, pos_b], composed[:, pos_b], atol=1e-3)


def test_attribute_stage_trains_each_prompt_on_its_own_labels(tiny_vit):
    method = _method(tiny_vit, n_connector=2)
    assert method.attrs_a == ["red", "blue", "green"] and method.attrs_b == ["circle", "square", "star"]
    assert method.label_a.tolist() == [0, 1, 0, 2] and method.label_b.tolist() == [0, 1, 1, 2]
    assert not method.connector.requires_grad and method.ctx_a.requires_grad
    features = torch.nn.functional.normalize(torch.randn(4, tiny_vit.identity.embed_dim), dim=-1)
    method.train()
    loss, stats = method.train_step({"features": features, "labels": torch.arange(4)}, method, lambda x: x.backward())
    assert stats["loss"] == pytest.approx(stats["loss_a"] + stats["loss_b"], rel=1e-5)
    assert method.ctx_a.grad.abs().sum() > 0 and method.ctx_b.grad.abs().sum() > 0 and method.connector.grad is None
    assert set(method.trainable_state()) == {"ctx_a", "ctx_b", "connector"}  # every prompt tensor is saved
    with pytest.raises(VLPromptError, match="n_connector must be at least 1"):
        build_method("tailor", tiny_vit, CLASSES, {"stage": "connector"})
    with pytest.raises(VLPromptError, match="not a combination"):
        build_method("tailor", tiny_vit, ["red"], {})


def test_towers_without_the_layout_hook_refuse(tiny_vit, monkeypatch):
    monkeypatch.setattr(tiny_vit, "capabilities", tiny_vit.capabilities - {Capability.TEXT_LAYOUT})
    with pytest.raises(VLPromptError) as error:
        build_method("tailor", tiny_vit, CLASSES, {})
    assert "custom text attention masks and positions" in str(error.value) and "\n" not in str(error.value)
    build_method("tailor", tiny_vit, CLASSES, {"mask": False, "reindex": False})  # plain concatenation runs
