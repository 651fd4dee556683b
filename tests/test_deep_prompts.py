"""The deep-prompt hooks: text tokens replacing the prompt positions' states between blocks (MaPLe / IVLP /
PromptSRC) and visual prompts after the class token; without prompts they are the plain forward."""

from __future__ import annotations

import pytest
import torch

from vlprompt.backbones import Capability, DeepPrompts, VisualPrompts
from vlprompt.errors import VLPromptError

PROMPTS = ["a photo of a dog.", "x", "a much longer prompt, with punctuation"]
START, N = 1, 3  # prompt positions 1..3, right after [SOS]


def _text(backbone):
    ids = backbone.tokenize(PROMPTS)
    return backbone.embed_tokens(ids), backbone.eot_index(ids)


def _block_inputs(backbone, embeds, eot):
    """The hidden states entering each text block in a plain forward."""
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
             for b in backbone.model.transformer.resblocks]
    try:
        with torch.no_grad():
            plain = backbone.encode_text_embeds(embeds, eot)
    finally:
        for h in hooks:
            h.remove()
    return plain, seen


@pytest.mark.parametrize("truncate", [True, False])
def test_depth_one_is_the_plain_forward(any_backbone, truncate):
    embeds, eot = _text(any_backbone)
    with torch.no_grad():
        plain = any_backbone.encode_text_embeds(embeds, eot, truncate)
        assert torch.equal(any_backbone.encode_text_embeds(embeds, eot, truncate, deep=None), plain)
        assert torch.equal(any_backbone.encode_text_embeds(embeds, eot, truncate, deep=DeepPrompts(())), plain)


def test_writing_back_the_states_themselves_reproduces_the_output(tiny_vit):
    embeds, eot = _text(tiny_vit)
    plain, inputs = _block_inputs(tiny_vit, embeds, eot)
    layers = tuple(x[:, START:START + N] for x in inputs[1:])  # per prompt: [N_prompts, n, W]
    deep = DeepPrompts(layers, start=START)
    assert deep.depth == len(inputs) and deep.n_tokens == N
    with torch.no_grad():
        assert torch.equal(tiny_vit.encode_text_embeds(embeds, eot, deep=deep), plain)
        states = tiny_vit.text_token_states(embeds, eot, deep=deep)
        assert torch.equal(tiny_vit.pool_text_states(states, eot), plain)


def test_gradients_reach_every_deep_layer_and_only_it(tiny_vit):
    embeds, eot = _text(tiny_vit)
    blocks = len(tiny_vit.model.transformer.resblocks)
    torch.manual_seed(0)
    layers = [torch.randn(N, tiny_vit.identity.width, requires_grad=True) for _ in range(blocks - 1)]  # shared [n, W]
    out = tiny_vit.encode_text_embeds(embeds, eot, deep=DeepPrompts(layers, start=START))
    with torch.no_grad():
        assert not torch.allclose(out, tiny_vit.encode_text_embeds(embeds, eot))
    out.square().sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in layers)
    assert all(p.grad is None for p in tiny_vit.parameters())


def test_bad_deep_prompts_are_one_clear_error(tiny_vit):
    embeds, eot = _text(tiny_vit)
    W, blocks = tiny_vit.identity.width, len(tiny_vit.model.transformer.resblocks)
    too_deep = DeepPrompts([torch.zeros(N, W)] * blocks)
    with pytest.raises(VLPromptError, match=f"depth {blocks + 1} need {blocks + 1} text blocks; the tower has {blocks}"):
        tiny_vit.encode_text_embeds(embeds, eot, deep=too_deep)
    with pytest.raises(VLPromptError, match="different token counts"):
        DeepPrompts([torch.zeros(2, W), torch.zeros(3, W)])
    with pytest.raises(VLPromptError, match="outside the sequence"):
        tiny_vit.encode_text_embeds(embeds, eot, deep=DeepPrompts([torch.zeros(N, W)], start=30))
    prefix, suffix = embeds[0, :2], embeds[:, 2:]
    with pytest.raises(VLPromptError, match=r"takes deep prompts only as shared \[n, W\] tokens inside the shared prefix"):
        tiny_vit.encode_text_embeds_shared(prefix, suffix, eot, deep=DeepPrompts([torch.zeros(N, W)]))


def test_towers_without_the_hook_refuse_deep_prompts(tmp_path):
    pytest.importorskip("transformers")
    from test_hf_backbone import _tiny_clip, _tiny_siglip

    from vlprompt.backbones import create_backbone

    _tiny_clip(tmp_path / "clip")
    backbone = create_backbone(f"hf:{tmp_path / 'clip'}")
    backbone.capabilities = backbone.capabilities - {Capability.DEEP_TEXT_PROMPTS}  # a tower without the hook
    embeds, eot = _text(backbone)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_text_embeds(embeds, eot, deep=DeepPrompts(())),
                                   backbone.encode_text_embeds(embeds, eot), rtol=0, atol=0)
    with pytest.raises(VLPromptError, match=r"needs deep text prompts, which HFClipBackbone \(.*\) does not provide"):
        backbone.encode_text_embeds(embeds, eot, deep=DeepPrompts([torch.zeros(2, backbone.identity.width)]))
    _tiny_siglip(tmp_path / "siglip")  # no class token: SigLIP's vision tower takes no visual prompts
    siglip = create_backbone(f"hf:{tmp_path / 'siglip'}")
    with pytest.raises(VLPromptError, match="needs visual prompts"):
        siglip.encode_image(torch.zeros(1, 3, 32, 32), visual=VisualPrompts(torch.zeros(0, 32)))


# -- visual prompts -----------------------------------------------------------------------------


def _images(backbone, batch=2):
    torch.manual_seed(1)
    return torch.randn(batch, 3, *backbone.image_size)


def _image_width(backbone) -> int:
    return int(backbone.model.visual.transformer.width)


def test_zero_length_visual_prompts_are_the_plain_forward(tiny_vit):
    images, W = _images(tiny_vit), _image_width(tiny_vit)
    blocks = len(tiny_vit.model.visual.transformer.resblocks)
    with torch.no_grad():
        plain = tiny_vit.encode_image(images)
        empty = VisualPrompts(torch.zeros(0, W), deep=[torch.zeros(0, W)] * (blocks - 1))
        assert torch.equal(tiny_vit.encode_image(images, visual=empty), plain)
        assert torch.equal(tiny_vit.encode_image(images, visual=VisualPrompts(torch.zeros(0, W))), plain)
        assert torch.equal(tiny_vit.image_token_states(images), tiny_vit.image_token_states(images, visual=empty))


def test_visual_prompts_shallow_deep_and_per_image(tiny_vit):
    images, W = _images(tiny_vit), _image_width(tiny_vit)
    blocks = len(tiny_vit.model.visual.transformer.resblocks)
    torch.manual_seed(2)
    shallow = torch.randn(4, W, requires_grad=True)
    deep = [torch.randn(4, W, requires_grad=True) for _ in range(blocks - 1)]
    prompts = VisualPrompts(shallow, deep)
    states = tiny_vit.image_token_states(images, visual=prompts)
    with torch.no_grad():
        assert states.shape == tiny_vit.image_token_states(images).shape  # prompts dropped before pooling
    out = tiny_vit.encode_image(images, visual=prompts)
    assert out.shape == (2, tiny_vit.identity.embed_dim)
    with torch.no_grad():
        assert not torch.allclose(out, tiny_vit.encode_image(images))
    out.square().sum().backward()
    assert shallow.grad.abs().sum() > 0 and all(t.grad.abs().sum() > 0 for t in deep)
    assert all(p.grad is None for p in tiny_vit.parameters())
    # one row per image: each image with the shared prompts gives the same features
    with torch.no_grad():
        per_image = VisualPrompts(shallow.detach().expand(2, -1, -1), [t.detach().expand(2, -1, -1) for t in deep])
        torch.testing.assert_close(tiny_vit.encode_image(images, visual=per_image), out.detach())


def test_towers_without_visual_prompts_refuse_them(tiny_rn):
    assert not tiny_rn.supports(Capability.VISUAL_PROMPTS)
    with pytest.raises(VLPromptError, match=r"needs visual prompts, which OpenClipBackbone \(vlprompt-test-rn\)"):
        tiny_rn.encode_image(_images(tiny_rn), visual=VisualPrompts(torch.zeros(1, 8)))
