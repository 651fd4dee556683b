"""Prompt assembly: token layout equals the tokenizer's, slots land where the template says."""

from __future__ import annotations

import pytest
import torch

from vlprompt.errors import VLPromptError
from vlprompt.prompts.assembler import PromptAssembler
from vlprompt.prompts.context import word_embeddings

NAMES = ["dog", "golden retriever", "x-ray machine", "sea lion"]


def test_text_only_template_matches_tokenizer(any_backbone):
    asm = PromptAssembler(any_backbone, "a photo of a {class}.", {"class": NAMES}, {})
    assert torch.equal(asm.token_ids, any_backbone.tokenize([f"a photo of a {n}." for n in NAMES]))
    assert asm.shared_prefix_length == 5  # [SOS] a photo of a


@pytest.mark.parametrize(
    "template,slots,text",
    [
        ("{ctx} {class}.", {"ctx": "a photo of a"}, "a photo of a {}."),
        ("{class} {ctx}.", {"ctx": "in the wild"}, "{} in the wild."),
        ("{a} {class} {b}.", {"a": "a photo", "b": "on grass"}, "a photo {} on grass."),
    ],
)
def test_learned_slots_filled_with_word_embeddings_equal_the_words(any_backbone, template, slots, text):
    vectors = {name: word_embeddings(any_backbone, words) for name, words in slots.items()}
    learned = {name: v.shape[0] for name, v in vectors.items()}
    asm = PromptAssembler(any_backbone, template, {"class": NAMES}, learned)
    with torch.no_grad():
        ours = asm.encode(**vectors)
        reference = any_backbone.model.encode_text(any_backbone.tokenize([text.format(n) for n in NAMES]))
    assert (ours - reference).abs().max().item() < 1e-5


def test_per_prompt_and_per_image_vectors(tiny_vit):
    asm = PromptAssembler(tiny_vit, "{ctx} {class}.", {"class": NAMES}, {"ctx": 3})
    per_prompt = torch.randn(len(NAMES), 3, 32)
    per_image = torch.randn(2, len(NAMES), 3, 32)
    out = asm.assemble(ctx=per_prompt)
    assert torch.equal(out[2, 1:4], per_prompt[2])
    out = asm.assemble(ctx=per_image)
    assert out.shape[:2] == (2, len(NAMES)) and torch.equal(out[1, 3, 1:4], per_image[1, 3])
    feats = asm.encode(ctx=per_image)
    single = asm.encode(ctx=per_image[1])
    assert (feats[1] - single).abs().max() < 1e-5


def test_gradients_reach_only_the_slot_vectors(tiny_vit):
    asm = PromptAssembler(tiny_vit, "{ctx} {class}.", {"class": NAMES}, {"ctx": 2})
    ctx = torch.randn(2, 32, requires_grad=True)
    asm.encode(ctx=ctx).sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_vit.parameters())


def test_errors(tiny_vit):
    with pytest.raises(VLPromptError, match="neither text nor a learned length"):
        PromptAssembler(tiny_vit, "{ctx} {class}.", {"class": NAMES}, {})
    asm = PromptAssembler(tiny_vit, "{ctx} {class}.", {"class": NAMES}, {"ctx": 2})
    with pytest.raises(VLPromptError, match=r"takes \[..., 2, 32\]"):
        asm.assemble(ctx=torch.zeros(3, 32))
    with pytest.raises(VLPromptError, match="tokens with its learned slots"):
        PromptAssembler(tiny_vit, "{ctx} {class}.", {"class": NAMES}, {"ctx": 80})
