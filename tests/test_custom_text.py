"""open_clip CustomTextCLIP (separate text tower, timm image tower): soft prompts equal encode_text."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch

from vlprompt.backbones import create_backbone
from vlprompt.errors import VLPromptError

PROMPTS = ["a photo of a dog.", "x", "a much longer prompt, with punctuation and many many words in it", ""]

CONFIGS = {
    # SigLIP-like: bidirectional text, last-token pooling, timm image tower
    "vlprompt-test-custom-lasttoken": {
        "embed_dim": 32,
        "custom_text": True,
        "init_logit_bias": -10,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": "linear", "image_size": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2,
                     "no_causal_mask": True, "pool_type": "last", "proj_type": "linear"},
    },
    # causal text tower with EOT pooling behind CustomTextCLIP
    "vlprompt-test-custom-causal": {
        "embed_dim": 32,
        "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
}


@pytest.fixture(scope="module", autouse=True)
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("custom_configs")
    for name, cfg in CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("truncate", [True, False])
def test_embedding_path_equals_encode_text(name, truncate):
    torch.manual_seed(0)
    backbone = create_backbone(f"open_clip_custom:{name}")
    assert backbone.causal == (name == "vlprompt-test-custom-causal")
    ids = backbone.tokenize(PROMPTS)
    with torch.no_grad():
        reference = backbone.model.encode_text(ids)
        ours = backbone.encode_text_embeds(backbone.embed_tokens(ids), backbone.eot_index(ids), truncate)
    assert ours.shape == reference.shape == (len(PROMPTS), 32)
    assert (ours - reference).abs().max().item() < 1e-5


def test_timm_image_tower_and_checkpoint_round_trip(tmp_path):
    from PIL import Image
    from safetensors.torch import save_file

    torch.manual_seed(1)
    backbone = create_backbone("open_clip_custom:vlprompt-test-custom-lasttoken")
    image = backbone.eval_transform(Image.new("RGB", (40, 50)))
    assert tuple(image.shape) == (3, 32, 32) and backbone.encode_image(image[None]).shape == (1, 32)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.model.state_dict().items()}, str(path))
    loaded = create_backbone("open_clip_custom:vlprompt-test-custom-lasttoken", str(path))
    ids = loaded.tokenize(PROMPTS)
    assert torch.equal(loaded.encode_text(ids), backbone.encode_text(ids)) and loaded.identity.weights_hash


def test_plain_clip_is_pointed_to_the_open_clip_source():
    with pytest.raises(VLPromptError, match="open_clip source"):
        create_backbone("open_clip_custom:vlprompt-test-vit")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_plain_name_goes_to_the_custom_text_source(name):
    from vlprompt.backbones.custom_text import CustomTextClipBackbone

    torch.manual_seed(2)
    plain = create_backbone(name)
    torch.manual_seed(2)
    prefixed = create_backbone(f"open_clip_custom:{name}")
    assert isinstance(plain, CustomTextClipBackbone) and plain.identity == prefixed.identity
    assert plain.identity.source == "open_clip_custom"
    ids = plain.tokenize(PROMPTS)
    assert torch.equal(plain.encode_text(ids), prefixed.encode_text(ids))
