"""CoCoOp's text_chunk: chunks are gradient-checkpointed in training, with the same numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt.methods import build_method

NAMES = ["dog", "cat", "red car", "sea lion", "hot air balloon"]


def _features(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _logits_and_grads(method, feats, labels):
    method.zero_grad(set_to_none=True)
    logits = method({"features": feats})
    F.cross_entropy(logits, labels).backward()
    grads = {name: p.grad.detach().clone() for name, p in method.named_parameters() if p.requires_grad}
    return logits.detach(), grads


@pytest.mark.parametrize("shared_prefix", [True, False])
@pytest.mark.parametrize("chunk", [1, 2])
def test_chunked_equals_unchunked_logits_and_gradients(any_backbone, shared_prefix, chunk):
    previous = any_backbone.shared_prefix
    any_backbone.shared_prefix = shared_prefix
    try:
        torch.manual_seed(0)
        whole = build_method("cocoop", any_backbone, NAMES, {"init_seed": 0})
        chunked = build_method("cocoop", any_backbone, NAMES, {"init_seed": 0, "text_chunk": chunk})
        chunked.load_state_dict(whole.state_dict())
        dim = any_backbone.identity.embed_dim
        feats, labels = _features(5, dim, seed=3), torch.tensor([0, 1, 2, 3, 4])
        ref_logits, ref_grads = _logits_and_grads(whole, feats, labels)
        logits, grads = _logits_and_grads(chunked, feats, labels)
        assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=0)
        assert ref_grads.keys() == grads.keys() and "ctx" in grads
        for name in ref_grads:
            assert torch.allclose(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4), name
    finally:
        any_backbone.shared_prefix = previous


def test_checkpointed_chunks_are_bit_identical_to_plain_chunks(tiny_vit):
    """The recomputation in backward repeats the same operations as the non-checkpointed loop."""
    torch.manual_seed(0)
    method = build_method("cocoop", tiny_vit, NAMES, {"init_seed": 0, "text_chunk": 2})
    feats, labels = _features(5, tiny_vit.identity.embed_dim, seed=4), torch.tensor([4, 3, 2, 1, 0])
    logits, grads = _logits_and_grads(method, feats, labels)

    # the same chunks, encoded without checkpointing
    method.zero_grad(set_to_none=True)
    shift = method.meta_net(feats)
    ctx = method.ctx.unsqueeze(0) + shift.unsqueeze(1)
    text = F.normalize(torch.cat([method._encode_chunk(ctx[s : s + 2], len(NAMES)) for s in range(0, 5, 2)]), dim=-1)
    plain = tiny_vit.logit_scale * torch.einsum("bd,bcd->bc", feats, text)
    F.cross_entropy(plain, labels).backward()
    assert torch.equal(logits, plain.detach())
    for name, p in method.named_parameters():
        if p.requires_grad:
            assert torch.equal(grads[name], p.grad), name


def test_checkpoint_only_under_autograd(tiny_vit, monkeypatch):
    import vlprompt.methods.cocoop as cocoop_module

    calls = []
    real = cocoop_module.checkpoint
    monkeypatch.setattr(cocoop_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    method = build_method("cocoop", tiny_vit, NAMES, {"text_chunk": 2})
    feats = _features(4, tiny_vit.identity.embed_dim)
    with torch.no_grad():
        method({"features": feats})
    assert calls == []
    method({"features": feats}).sum().backward()
    assert len(calls) == 2
    whole = build_method("cocoop", tiny_vit, NAMES, {"text_chunk": 4})
    whole({"features": feats}).sum().backward()
    assert len(calls) == 2  # one chunk covers the batch: nothing to checkpoint
