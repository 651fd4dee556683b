"""Shared-prefix text encoding: features and gradients equal the plain path; fallbacks take the plain path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import Transformer

from vlprompt.backbones import create_backbone
from vlprompt.backbones.shared_prefix import unsupported_reason
from vlprompt.errors import VLPromptError
from vlprompt.prompts.assembler import PromptAssembler

NAMES = ["dog", "golden retriever", "x-ray machine", "sea lion", "a very long class name with words"]
ATTRS = ["red", "old", "sliced", "wet", "red", "old"]
OBJS = ["apple", "car", "apple", "dog", "tomato", "pair of shoes"]
ATOL = 1e-5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _leaf(*shape: int, seed: int, std: float = 0.5) -> torch.Tensor:
    return (torch.randn(*shape, generator=_gen(seed)) * std).requires_grad_(True)


def _loss_and_logits(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CoOp's objective on random image features: 100 * cosine logits, cross-entropy."""
    D = feats.shape[-1]
    text = F.normalize(feats[:, 0] if feats.dim() == 3 and feats.shape[1] == 1 else feats, dim=-1)
    if text.dim() == 2:  # [P, D]: 4 images against all prompts
        images = F.normalize(torch.randn(4, D, generator=_gen(98)).to(text.dtype), dim=-1)
        logits = 100.0 * images @ text.T
    else:  # [B, P, D]: each image against its own prompts
        images = F.normalize(torch.randn(text.shape[0], D, generator=_gen(98)).to(text.dtype), dim=-1)
        logits = 100.0 * torch.einsum("bd,bpd->bp", images, text)
    labels = torch.arange(logits.shape[0]) % logits.shape[1]
    return F.cross_entropy(logits, labels), logits


MAX_SEEN: dict[str, float] = {}


def _record(kind: str, diff: float) -> None:
    MAX_SEEN[kind] = max(MAX_SEEN.get(kind, 0.0), diff)


def _both_paths(asm: PromptAssembler, make_vectors, params: list[torch.Tensor], expect: str):
    """Encode with the shared path allowed and with it off; compare features, logits and gradients."""
    results = []
    for use in (True, False):
        asm.use_shared_prefix = use
        for p in params:
            p.grad = None
        before = dict(asm.path_counts)
        feats = asm.encode(**make_vectors())
        taken = "shared" if asm.path_counts["shared"] > before["shared"] else "plain"
        assert taken == (expect if use else "plain")
        loss, logits = _loss_and_logits(feats)
        loss.backward()
        results.append((feats.detach(), logits.detach(), [p.grad.clone() for p in params]))
    asm.use_shared_prefix = True
    (f_shared, l_shared, g_shared), (f_plain, l_plain, g_plain) = results
    assert f_shared.shape == f_plain.shape
    # Logits carry CLIP's scale of 100: compared as cosines (fp32 rounding of a 20-logit is ~2e-6).
    for kind, a, b in [("features", f_shared, f_plain), ("cosines", l_shared / 100, l_plain / 100)]:
        _record(kind, (a - b).abs().max().item())
        assert (a - b).abs().max().item() < ATOL
    for a, b in zip(g_shared, g_plain):
        assert b.abs().sum() > 0
        _record("gradients", (a - b).abs().max().item())
        _record("gradient scale", b.abs().max().item())
        assert (a - b).abs().max().item() < ATOL * max(1.0, b.abs().max().item())
    return f_shared


def test_coop_end_unified_context(any_backbone):
    W = any_backbone.identity.width
    asm = PromptAssembler(any_backbone, "{ctx} {class}.", {"class": NAMES}, {"ctx": 6})
    ctx = _leaf(6, W, seed=0)
    assert asm.shared_prefix_plan(ctx=ctx) == 7  # [SOS] + 6 context tokens
    _both_paths(asm, lambda: {"ctx": ctx}, [ctx], "shared")


def test_coop_middle_context_shares_the_first_half(any_backbone):
    W = any_backbone.identity.width
    asm = PromptAssembler(any_backbone, "{ctx_a} {class} {ctx_b}.", {"class": NAMES}, {"ctx_a": 3, "ctx_b": 2})
    ctx = _leaf(5, W, seed=1)
    assert asm.shared_prefix_plan(ctx_a=ctx[:3], ctx_b=ctx[3:]) == 4
    _both_paths(asm, lambda: {"ctx_a": ctx[:3], "ctx_b": ctx[3:]}, [ctx], "shared")


def test_cocoop_per_image_context(any_backbone):
    W = any_backbone.identity.width
    asm = PromptAssembler(any_backbone, "{ctx} {class}.", {"class": NAMES}, {"ctx": 4})
    ctx = _leaf(4, W, seed=2)
    shift = _leaf(3, W, seed=3, std=0.1)  # stands in for the meta-net output of 3 images

    def vectors():
        per_image = ctx.unsqueeze(0) + shift.unsqueeze(1)  # [B, k, W]
        return {"ctx": per_image.unsqueeze(1).expand(3, len(NAMES), 4, W)}  # [B, P, k, W]

    assert asm._plan(vectors()) == (5, True)  # one prefix per image
    feats = _both_paths(asm, vectors, [ctx, shift], "shared")
    assert feats.shape[:2] == (3, len(NAMES))


def test_csp_learned_attribute_and_object_after_a_text_prefix(any_backbone):
    W = any_backbone.identity.width
    attr_names, obj_names = sorted(set(ATTRS)), sorted(set(OBJS))
    attr_table, obj_table = _leaf(len(attr_names), 1, W, seed=4), _leaf(len(obj_names), 1, W, seed=5)
    attr_idx = torch.tensor([attr_names.index(a) for a in ATTRS])
    obj_idx = torch.tensor([obj_names.index(o) for o in OBJS])
    # An unused text slot sets the number of prompts (one per pair); both words are learned per prompt.
    asm = PromptAssembler(any_backbone, "a photo of {attr} {obj}", {"pair": OBJS}, {"attr": 1, "obj": 1})

    def vectors():
        return {"attr": attr_table[attr_idx], "obj": obj_table[obj_idx]}  # [P, 1, W] each

    assert asm.shared_prefix_plan(**vectors()) == 4  # [SOS] a photo of
    _both_paths(asm, vectors, [attr_table, obj_table], "shared")


def test_dfsp_shared_context_then_per_prompt_slots(any_backbone):
    W = any_backbone.identity.width
    ctx = _leaf(5, W, seed=6)
    attr_table, obj_table = _leaf(6, 1, W, seed=7), _leaf(6, 2, W, seed=8)
    order = torch.tensor([0, 1, 2, 3, 4, 5])
    asm = PromptAssembler(any_backbone, "{ctx} {attr} {obj}", {"pair": OBJS}, {"ctx": 5, "attr": 1, "obj": 2})

    def vectors():
        return {"ctx": ctx, "attr": attr_table[order], "obj": obj_table[order.flip(0)]}

    assert asm.shared_prefix_plan(**vectors()) == 6
    _both_paths(asm, vectors, [ctx, attr_table, obj_table], "shared")


@pytest.mark.parametrize("prefix", ["a photo of", None])
def test_pairs_through_the_batch_axis_share_one_prefix(any_backbone, prefix):
    """vlprompt.czsl's layout: one tokenized prompt (P = 1), pairs as the batch of [n, 1, 1, W] slot
    values. The shared part is encoded once for all pairs, not once per pair."""
    W = any_backbone.identity.width
    n = len(ATTRS)
    table = _leaf(12, W, seed=17)
    ctx = _leaf(3, W, seed=18)
    attr_idx, obj_idx = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([6, 7, 6, 9, 10, 11])
    if prefix is None:
        asm = PromptAssembler(any_backbone, "{ctx} {attr} {obj}", {}, {"ctx": 3, "attr": 1, "obj": 1})
        expected, params = 4, [table, ctx]
    else:
        asm = PromptAssembler(any_backbone, prefix + " {attr} {obj}", {}, {"attr": 1, "obj": 1})
        expected, params = 4, [table]

    def vectors():
        out = {"attr": table[attr_idx][:, None, None, :], "obj": table[obj_idx][:, None, None, :]}
        if prefix is None:
            out["ctx"] = ctx
        return out

    assert asm._plan(vectors()) == (expected, False)  # one prefix for all n pairs
    feats = _both_paths(asm, vectors, params, "shared")
    assert feats.shape[:2] == (n, 1)


def test_text_only_prompts_and_a_shared_context_given_per_prompt(any_backbone):
    W = any_backbone.identity.width
    text_only = PromptAssembler(any_backbone, "a photo of a {class}.", {"class": NAMES}, {})
    with torch.no_grad():
        text_only.use_shared_prefix = False
        plain = text_only.encode()
        text_only.use_shared_prefix = True
        shared = text_only.encode()
    assert text_only.path_counts == {"shared": 1, "plain": 1}
    assert (shared - plain).abs().max().item() < ATOL
    # [P, k, W] expanded from one context (LASP/KgCoOp-style callers) is still one shared prefix.
    asm = PromptAssembler(any_backbone, "{ctx} {class}.", {"class": NAMES}, {"ctx": 3})
    ctx = _leaf(3, W, seed=9)
    _both_paths(asm, lambda: {"ctx": ctx.unsqueeze(0).expand(len(NAMES), 3, W)}, [ctx], "shared")


def test_exact_in_float64():
    """In fp64 the two paths agree to rounding of fp64: the split is the same computation."""
    torch.manual_seed(3)
    backbone = create_backbone("vlprompt-test-vit").double()
    W = backbone.identity.width
    ctx = _leaf(4, W, seed=15).double().detach().requires_grad_(True)
    shift = _leaf(2, W, seed=16, std=0.1).double().detach().requires_grad_(True)
    cases = [
        (PromptAssembler(backbone, "{ctx} {class}.", {"class": NAMES}, {"ctx": 4}), lambda: {"ctx": ctx}),
        (
            PromptAssembler(backbone, "{ctx} {class}.", {"class": NAMES}, {"ctx": 4}),
            lambda: {"ctx": (ctx + shift.unsqueeze(1)).unsqueeze(1).expand(2, len(NAMES), 4, W)},
        ),
    ]
    for asm, vectors in cases:
        outs = []
        for use in (True, False):
            asm.use_shared_prefix = use
            ctx.grad = shift.grad = None
            feats = asm.encode(**vectors())
            _loss_and_logits(feats)[0].backward()
            outs.append((feats.detach(), ctx.grad.clone()))
        assert asm.path_counts == {"shared": 1, "plain": 1}
        assert (outs[0][0] - outs[1][0]).abs().max().item() < 1e-12
        assert (outs[0][1] - outs[1][1]).abs().max().item() < 1e-12


@pytest.mark.parametrize("case", ["front", "class_specific", "equal_but_separate"])
def test_fallbacks_take_the_plain_path(tiny_vit, case):
    W = tiny_vit.identity.width
    P = len(NAMES)
    if case == "front":
        asm = PromptAssembler(tiny_vit, "{class} {ctx}.", {"class": NAMES}, {"ctx": 4})
        ctx = _leaf(4, W, seed=10)
    else:
        asm = PromptAssembler(tiny_vit, "{ctx} {class}.", {"class": NAMES}, {"ctx": 4})
        base = torch.randn(4, W, generator=_gen(11))
        values = base.repeat(P, 1, 1) if case == "equal_but_separate" else torch.randn(P, 4, W, generator=_gen(12))
        ctx = values.requires_grad_(True)  # per-prompt leaf: each prompt must get its own gradient
    assert asm.shared_prefix_plan(ctx=ctx) is None
    asm.encode(ctx=ctx).sum().backward()
    assert asm.path_counts == {"shared": 0, "plain": 1}


def test_switches_and_unsupported_towers(tiny_vit):
    W = tiny_vit.identity.width
    asm = PromptAssembler(tiny_vit, "{ctx} {class}.", {"class": NAMES}, {"ctx": 4})
    ctx = torch.zeros(4, W)
    assert asm.shared_prefix_plan(ctx=ctx) == 5
    asm.use_shared_prefix = False
    assert asm.shared_prefix_plan(ctx=ctx) is None
    asm.use_shared_prefix = True
    tiny_vit.shared_prefix = False
    try:
        assert asm.shared_prefix_plan(ctx=ctx) is None
    finally:
        tiny_vit.shared_prefix = True
    asm.min_shared_prefix = 6
    assert asm.shared_prefix_plan(ctx=ctx) is None
    asm.min_shared_prefix = 2

    # Bidirectional towers and other block types are refused by the backbone layer.
    tower = Transformer(width=32, layers=1, heads=2, block_type="custom")
    causal = torch.full((8, 8), float("-inf")).triu(1)
    assert "not causal" in unsupported_reason(tower, None)
    assert "CustomResidualAttentionBlock" in unsupported_reason(tower, causal)
    assert unsupported_reason(Transformer(width=32, layers=1, heads=2), causal) is None
    assert "not the standard causal" in unsupported_reason(Transformer(width=32, layers=1, heads=2), causal.T)
    saved = tiny_vit._shared_prefix_static
    tiny_vit._shared_prefix_static = "text tower is not causal"
    try:
        assert asm.shared_prefix_plan(ctx=ctx) is None
        with pytest.raises(VLPromptError, match="not exact here"):
            tiny_vit.encode_text_embeds_shared(torch.zeros(2, W), torch.zeros(3, 4, W), torch.tensor([3, 3, 3]))
    finally:
        tiny_vit._shared_prefix_static = saved


@pytest.mark.parametrize("checkpointing", [False, True])
def test_backbone_groups_equal_whole_prompts(any_backbone, checkpointing):
    """encode_text_embeds_shared on [G, S, W] + [G, N, T, W] equals encode_text_embeds on the concatenation."""
    W = any_backbone.identity.width
    G, S, N, T = 2, 5, 3, 6
    prefix, suffix = _leaf(G, S, W, seed=13), _leaf(G, N, T, W, seed=14)
    eot = torch.tensor([S + 2, S + 5, S + 3])
    tower = any_backbone.model.transformer
    tower.grad_checkpointing = checkpointing
    try:
        shared = any_backbone.encode_text_embeds_shared(prefix, suffix, eot)
        whole = torch.cat([prefix.unsqueeze(1).expand(G, N, S, W), suffix], dim=2).reshape(G * N, S + T, W)
        plain = any_backbone.encode_text_embeds(whole, eot.repeat(G), truncate=False).reshape(G, N, -1)
        assert (shared - plain).abs().max().item() < ATOL
        grads = torch.autograd.grad((shared * plain.detach()).sum(), [prefix, suffix])
        expected = torch.autograd.grad((plain * plain.detach()).sum(), [prefix, suffix])
    finally:
        tower.grad_checkpointing = False
    for a, b in zip(grads, expected):
        assert (a - b).abs().max().item() < ATOL
    assert any_backbone.encode_text_embeds_shared(prefix[0], suffix[0], eot).shape == shared[0].shape
    with pytest.raises(VLPromptError, match="covers a pooled position"):
        any_backbone.encode_text_embeds_shared(prefix, suffix, torch.tensor([S - 1, S, S]))


def test_report_largest_differences():
    """Runs last in this file: prints the largest shared-vs-plain differences seen (pytest -s)."""
    print("\nshared-prefix vs plain, max |diff|:", {k: f"{v:.2e}" for k, v in MAX_SEEN.items()})


def test_the_path_taken_is_logged_once_with_its_reason(tiny_vit, caplog):
    W = tiny_vit.identity.width
    front = PromptAssembler(tiny_vit, "{class} {ctx}.", {"class": NAMES}, {"ctx": 4})
    end = PromptAssembler(tiny_vit, "{ctx} {class}.", {"class": NAMES}, {"ctx": 4})
    ctx = torch.zeros(4, W)
    with caplog.at_level("INFO", logger="vlprompt.prompts.assembler"):
        for _ in range(3):
            front.encode(ctx=ctx)
            end.encode(ctx=ctx)
        end.encode(ctx=torch.zeros(len(NAMES), 4, W))  # class-specific context: plain, a new reason
    lines = [r.getMessage() for r in caplog.records if r.name == "vlprompt.prompts.assembler"]
    assert len(lines) == 3, lines
    assert "'{class} {ctx}.': plain path (the positions all prompts share end before position 2" in lines[0]
    assert lines[1] == "prompt '{ctx} {class}.': shared-prefix path (5 leading positions encoded once)"
    assert "plain path" in lines[2] and "class-specific context" in lines[2]
