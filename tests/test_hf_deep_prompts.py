"""Deep text prompts and visual prompts on transformers CLIP (and deep text prompts on SigLIP): without prompts
the encoder loop is the model's own ``get_text_features`` / ``get_image_features``; replacing the prompt
positions with the states they would have anyway changes nothing; IVLP and MaPLe train on an HF tower."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from test_hf_backbone import _features, _tiny_clip, _tiny_siglip  # noqa: E402

from vlprompt.backbones import Capability, DeepPrompts, VisualPrompts, create_backbone  # noqa: E402
from vlprompt.methods import build_method  # noqa: E402

PROMPTS = ["a photo of a dog.", "x", "a much longer prompt, with punctuation"]
START, N = 1, 3


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_deep_clip")
    model = _tiny_clip(folder)
    return create_backbone(f"hf:{folder}"), model


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_deep_siglip")
    model = _tiny_siglip(folder)
    return create_backbone(f"hf:{folder}"), model


def _text(backbone):
    ids = backbone.tokenize(PROMPTS)
    return ids, backbone.embed_tokens(ids), backbone.eot_index(ids)


def _images(backbone, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, *backbone.image_size, generator=torch.Generator().manual_seed(1))


def _layer_inputs(layers, run):
    """The hidden states entering each encoder layer during ``run()``."""
    seen = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone())) for layer in layers]
    try:
        with torch.no_grad():
            out = run()
    finally:
        for h in hooks:
            h.remove()
    return out, seen


def test_capabilities_and_shapes(clip, siglip):
    backbone, model = clip
    assert {Capability.DEEP_TEXT_PROMPTS, Capability.VISUAL_PROMPTS} <= backbone.capabilities
    assert backbone.text_block_count() == 2 and backbone.image_prompt_shape() == (2, 32)
    assert siglip[0].supports(Capability.DEEP_TEXT_PROMPTS) and not siglip[0].supports(Capability.VISUAL_PROMPTS)


@pytest.mark.parametrize("truncate", [True, False])
def test_no_prompts_are_the_models_own_features(clip, siglip, truncate):
    for backbone, model in (clip, siglip):
        ids, embeds, eot = _text(backbone)
        with torch.no_grad():
            reference = _features(model.get_text_features(input_ids=ids))
            for deep in (None, DeepPrompts(())):
                out = backbone.encode_text_embeds(embeds, eot, truncate=truncate, deep=deep)
                torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    backbone, model = clip
    images = _images(backbone)
    with torch.no_grad():
        reference = _features(model.get_image_features(pixel_values=images))
        for visual in (None, VisualPrompts(torch.zeros(0, 32)), VisualPrompts(torch.zeros(0, 32), deep=(torch.zeros(0, 32),))):
            torch.testing.assert_close(backbone.encode_image(images, visual=visual), reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_writing_back_the_states_themselves_reproduces_the_output(clip, siglip, which):
    backbone, _ = clip if which == "clip" else siglip
    _, embeds, eot = _text(backbone)
    plain, seen = _layer_inputs(backbone.text_model.encoder.layers,
                                lambda: backbone.encode_text_embeds(embeds, eot, truncate=False))
    own = DeepPrompts(tuple(s[:, START:START + N] for s in seen[1:]), start=START)  # replace semantics
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_text_embeds(embeds, eot, truncate=False, deep=own), plain,
                                   rtol=0, atol=1e-6)
        zeros = DeepPrompts((torch.zeros(N, backbone.identity.width),), start=START)
        moved = backbone.encode_text_embeds(embeds, eot, truncate=False, deep=zeros)
        added = backbone.encode_text_embeds(embeds, eot, truncate=False,
                                            deep=DeepPrompts(zeros.layers, start=START, additive=True))
    assert (moved - plain).abs().max() > 1e-3  # zeros replace the states: the output moves
    torch.testing.assert_close(added, plain, rtol=0, atol=1e-6)  # zero offsets leave them


def test_deep_text_gradients_reach_the_prompt_layers(clip):
    backbone, _ = clip
    _, embeds, eot = _text(backbone)
    layer = torch.nn.Parameter(torch.randn(N, backbone.identity.width) * 0.1)
    out = backbone.encode_text_embeds(embeds, eot, deep=DeepPrompts((layer,), start=START))
    out.square().sum().backward()
    assert layer.grad is not None and layer.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_visual_prompts_change_the_output_and_get_gradients(clip):
    backbone, _ = clip
    images = _images(backbone)
    layers = backbone.model.vision_model.encoder.layers
    shallow = torch.nn.Parameter(torch.randn(2, 32, generator=torch.Generator().manual_seed(2)))
    deep = torch.nn.Parameter(torch.randn(2, 32, generator=torch.Generator().manual_seed(3)))
    plain = backbone.encode_image(images).detach()
    shallow_only, seen = _layer_inputs(layers, lambda: backbone.encode_image(images, visual=VisualPrompts(shallow.detach())))
    assert seen[0].shape[1] == 1 + 2 + 16  # class + 2 prompts + 4x4 patches
    assert (shallow_only - plain).abs().max() > 1e-3
    own = VisualPrompts(shallow.detach(), deep=(seen[1][:, 1:3],))  # the states the shallow prompts reach anyway
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_image(images, visual=own), shallow_only, rtol=0, atol=1e-6)
    out = backbone.encode_image(images, visual=VisualPrompts(shallow, deep=(deep,)))
    assert out.shape == plain.shape and (out - shallow_only).abs().max() > 1e-3
    out.square().sum().backward()
    assert shallow.grad.abs().sum() > 0 and deep.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


@pytest.mark.parametrize("name,config", [
    ("ivlp", {"depth_text": 2, "depth_vision": 2, "ctx_init": ""}),
    ("maple", {"depth": 2, "ctx_init": ""}),  # the byte-level test vocabulary has no 2-token "a photo"
])
def test_ivlp_and_maple_train_on_an_hf_tower(clip, name, config):
    backbone, _ = clip
    torch.manual_seed(0)
    method = build_method(name, backbone, ["red circle", "blue square", "green star"], config)
    batch = {"images": _images(backbone, 4), "labels": torch.tensor([0, 1, 2, 0])}
    before = {k: v.clone() for k, v in method.trainable_state().items()}
    optimizer = torch.optim.SGD(method.param_groups(0.1), lr=0.1)
    method.train()
    optimizer.zero_grad()
    loss, stats = method.train_step(batch, method, lambda loss: loss.backward())
    assert torch.isfinite(loss) and "loss" in stats
    optimizer.step()
    after = method.trainable_state()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == set(before)  # every prompt (text, deep text, visual / couplings) gets a gradient
    assert all(p.grad is None for p in backbone.parameters())
    method.eval()
    with torch.no_grad():
        logits = method(batch)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    assert F.cross_entropy(logits, batch["labels"]).item() < loss.item()  # the step lowered the batch's loss
