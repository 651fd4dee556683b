"""Python API comfort: a loaded prompt is callable on an image tensor; peft-style save/from_pretrained."""

from __future__ import annotations

import pytest
import torch

from vlprompt.errors import VLPromptError
from vlprompt.methods import build_method
from vlprompt.methods.base import PromptMethod
from vlprompt.methods.coop import CoOp
from vlprompt.methods.kgcoop import KgCoOp


def test_save_and_from_pretrained_round_trip_and_call_on_images(tiny_vit, tmp_path):
    torch.manual_seed(0)
    method = build_method("coop", tiny_vit, ["cat", "dog", "fish"], {"n_ctx": 2}).eval()
    written = method.save_pretrained(tmp_path / "my-prompt")
    assert written.name == "vlprompt_model.safetensors"
    assert sorted(p.name for p in (tmp_path / "my-prompt").iterdir()) == [
        "README.md", "vlprompt_config.json", "vlprompt_model.safetensors"
    ]  # fmt: skip
    loaded = CoOp.from_pretrained(tmp_path / "my-prompt", tiny_vit)
    assert torch.equal(loaded.ctx, method.ctx)
    size = tiny_vit.image_size
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        logits = loaded(images)  # a tensor, not a batch dict
        assert torch.equal(logits, loaded({"images": images})) and logits.shape == (2, 3)
        torch.testing.assert_close(logits, method(images))
    assert isinstance(PromptMethod.from_pretrained(tmp_path / "my-prompt", tiny_vit), CoOp)
    with pytest.raises(VLPromptError, match="holds a coop prompt, not KgCoOp"):
        KgCoOp.from_pretrained(tmp_path / "my-prompt", tiny_vit)
    with pytest.raises(VLPromptError, match=r"images \[B, 3, H, W\], got a tensor of shape \(3, 8\)"):
        loaded(torch.randn(3, 8))
