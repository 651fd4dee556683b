"""Backbones from an in-memory state dict, and what an identity says about where its weights came from."""

from __future__ import annotations

import pytest
import torch

from vlprompt.backbones import create_backbone, load_backbone
from vlprompt.backbones.base import describe_identity
from vlprompt.errors import VLPromptError


def _openai_layout_clip():
    """A tiny CLIP in OpenAI's layout (64-wide heads, QuickGELU), as OpenAI's builder infers it."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    return CLIP(16, CLIPVisionCfg(layers=1, width=64, head_width=64, patch_size=8, image_size=32),
                CLIPTextCfg(context_length=16, vocab_size=49408, width=64, heads=1, layers=1), quick_gelu=True).eval()


def test_open_clip_and_openai_state_dict_objects(tiny_vit, tmp_path):
    state = tiny_vit.model.state_dict()
    same = load_backbone("vlprompt-test-vit", state, device="cpu")  # open_clip layout, architecture named
    x = torch.rand(2, 3, *tiny_vit.image_size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same.encode_image(x), tiny_vit.encode_image(x))
    assert same.identity.pretrained.startswith("state_dict:") and same.identity.weights_hash
    assert same.identity.describe() == f"vlprompt-test-vit (in-memory state dict, weights {same.identity.weights_hash})"
    ref = _openai_layout_clip()
    openai = load_backbone("openai:my-clip", ref.state_dict(), device="cpu")  # architecture from the shapes
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(openai.model.encode_image(image), ref.encode_image(image), rtol=0, atol=1e-5)
    assert openai.identity.source == "openai" and "in-memory state dict" in openai.identity.describe()
    # the same numbers from a file: the identity names the file and says what it is, not "random weights"
    path = tmp_path / "clip.pt"
    torch.save(ref.state_dict(), path)
    from_file = create_backbone(f"openai:{path}")
    assert from_file.identity.pretrained is None
    assert from_file.identity.describe() == f"{path} (OpenAI-layout checkpoint file, weights {from_file.identity.weights_hash})"
    assert describe_identity({"name": "ViT-B-16", "pretrained": None, "source": "open_clip"}) == "ViT-B-16 (random weights)"
    with pytest.raises(VLPromptError, match="a state dict object loads with the sources"):
        create_backbone("hf:openai/clip-vit-base-patch16", state)
