"""Declared capabilities: what each backbone offers beyond the core, refusals in one line, and the image
tower's block LayerNorms answered by the backbone (what LASP's image_ln tunes)."""

from __future__ import annotations

import json
import re

import open_clip
import pytest
import torch

from vlprompt.backbones import Capability, create_backbone
from vlprompt.errors import VLPromptError

ALL = set(Capability)
TIMM = "vlprompt-test-caps-timm"  # CustomTextCLIP with a timm ViT image tower


@pytest.fixture(scope="module", autouse=True)
def timm_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("caps_configs")
    cfg = {"embed_dim": 32, "custom_text": True,
           "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "avg",
                          "timm_proj": "linear", "image_size": 32},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                        "no_causal_mask": True, "pool_type": "last", "proj_type": "linear"}}
    (folder / f"{TIMM}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def test_open_clip_backbones_declare_what_their_towers_offer(tiny_vit, tiny_rn):
    assert tiny_vit.capabilities == ALL
    assert tiny_rn.capabilities == {Capability.TEXT_TOKEN_STATES, Capability.SHARED_PREFIX, Capability.DEEP_TEXT_PROMPTS,
                                    Capability.TEXT_LAYOUT}
    assert tiny_vit.supports(Capability.IMAGE_NORMS) and not tiny_rn.supports(Capability.IMAGE_NORMS)


def test_require_is_one_line_naming_method_capability_and_backbone(tiny_vit, tiny_rn):
    tiny_vit.require(Capability.IMAGE_TOKEN_STATES, "dfsp")
    with pytest.raises(VLPromptError) as error:
        tiny_rn.require(Capability.IMAGE_TOKEN_STATES, "dfsp")
    assert str(error.value) == (
        "dfsp needs image token states, which OpenClipBackbone (vlprompt-test-rn) does not provide"
    )
    # optional methods on a backbone without them fail the same way, before touching the tower
    images = torch.zeros(1, 3, *tiny_rn.image_size)
    for call in (lambda: tiny_rn.image_token_states(images), lambda: tiny_rn.image_tokens(images),
                 lambda: tiny_rn.image_norm_parameters()):
        with pytest.raises(VLPromptError, match="which OpenClipBackbone \\(vlprompt-test-rn\\) does not provide"):
            call()


def test_shared_prefix_reason_follows_the_capability(tiny_vit):
    assert tiny_vit.shared_prefix_unsupported() is None
    torch.manual_seed(0)
    custom = create_backbone(TIMM)
    assert not custom.supports(Capability.SHARED_PREFIX) and custom.shared_prefix_unsupported()


def test_open_clip_vit_block_norms_are_ln_1_and_ln_2(tiny_vit):
    names = list(tiny_vit.image_norm_parameters())
    blocks = len(tiny_vit.model.visual.transformer.resblocks)
    assert len(names) == blocks * 4
    own = dict(tiny_vit.named_parameters())
    assert all(own[n] is p for n, p in tiny_vit.image_norm_parameters().items())
    # the same set the retired regex selected: every block's ln_1 / ln_2, never ln_pre / ln_post / text norms
    retired = re.compile(r"visual\.transformer\.resblocks\.\d+\.ln_[12]\.(weight|bias)$")
    assert set(names) == {n for n in own if retired.search(n)}


def test_timm_trunk_block_norms_are_norm1_and_norm2():
    torch.manual_seed(0)
    backbone = create_backbone(TIMM)
    assert backbone.supports(Capability.IMAGE_NORMS) and not backbone.supports(Capability.VISUAL_PROMPTS)
    names = list(backbone.image_norm_parameters())
    assert names and all(re.search(r"^model\.visual\.trunk\.blocks\.\d+\.norm[12]\.(weight|bias)$", n) for n in names)


def test_transformers_vision_block_norms_are_layer_norm1_and_2(tmp_path):
    pytest.importorskip("transformers")
    from test_hf_backbone import _tiny_clip

    _tiny_clip(tmp_path / "clip")
    backbone = create_backbone(f"hf:{tmp_path / 'clip'}")
    assert backbone.capabilities == {Capability.IMAGE_TOKENS, Capability.IMAGE_NORMS,
                                     Capability.DEEP_TEXT_PROMPTS, Capability.VISUAL_PROMPTS}
    names = list(backbone.image_norm_parameters())
    assert len(names) == 2 * 2 * 2  # 2 layers x (layer_norm1, layer_norm2) x (weight, bias)
    assert all(re.search(r"^model\.vision_model\.encoder\.layers\.\d+\.layer_norm[12]\.(weight|bias)$", n) for n in names)
    with pytest.raises(VLPromptError, match="dfsp needs text token states, which HFClipBackbone"):
        backbone.require(Capability.TEXT_TOKEN_STATES, "dfsp")


def test_custom_text_transformer_offers_token_states_and_deep_prompts():
    from vlprompt.backbones import DeepPrompts

    torch.manual_seed(0)
    backbone = create_backbone(TIMM)  # bidirectional TextTransformer, last-token pooling
    assert {Capability.TEXT_TOKEN_STATES, Capability.DEEP_TEXT_PROMPTS} <= backbone.capabilities
    ids = backbone.tokenize(["a photo of a dog.", "x"])
    embeds, eot = backbone.embed_tokens(ids), backbone.eot_index(ids)
    with torch.no_grad():
        plain = backbone.encode_text_embeds(embeds, eot)
        states = backbone.text_token_states(embeds, eot)
        assert torch.equal(backbone.pool_text_states(states, eot), plain)
        layer = torch.randn(2, backbone.identity.width)
        assert not torch.allclose(backbone.encode_text_embeds(embeds, eot, deep=DeepPrompts([layer])), plain)
