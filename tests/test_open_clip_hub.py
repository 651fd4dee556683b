"""open_clip models named by location: ``local-dir:`` folders and ``hf-hub:`` repos (read from a Hugging Face
cache the test writes, offline), in open_clip's hub layout; missing pieces are one clear error."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from vlprompt.backbones import create_backbone
from vlprompt.backbones.custom_text import CustomTextClipBackbone
from vlprompt.backbones.open_clip_backbone import OpenClipBackbone
from vlprompt.backbones.weights import file_sha256, short_hash
from vlprompt.errors import VLPromptError

TEXTS = ["a photo of a dog.", "x"]


def _save_hub_layout(folder, arch: str, custom_text: bool = False):
    """`arch`'s config and random weights as open_clip's push_to_hf_hub writes them; returns the model."""
    from vlprompt.backbones.model_configs import register_model_configs

    register_model_configs()
    cfg = dict(open_clip.get_model_config(arch))
    if custom_text:
        cfg["custom_text"] = True
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(3)
    model = open_clip.create_model(f"local-dir:{folder}").eval()  # no weights yet: random, as saved next
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return model


@pytest.mark.parametrize("custom_text", [False, True])
def test_local_dir_loads_config_and_weights(tmp_path, custom_text):
    model = _save_hub_layout(tmp_path / "m", "vlprompt-test-vit", custom_text)
    backbone = create_backbone(f"local-dir:{tmp_path / 'm'}", "world")  # the CLI's default tag is ignored
    assert isinstance(backbone, CustomTextClipBackbone if custom_text else OpenClipBackbone)
    assert backbone.identity.weights_hash == short_hash(file_sha256(tmp_path / "m" / "open_clip_model.safetensors"))
    ids = backbone.tokenize(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_text(TEXTS), model.encode_text(ids), rtol=0, atol=1e-5)
        ours = backbone.encode_text_embeds(backbone.embed_tokens(ids), backbone.eot_index(ids), True)
        torch.testing.assert_close(ours, model.encode_text(ids), rtol=0, atol=1e-5)


def test_hf_hub_reads_the_offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--vlprompt-test--tiny-vit" / "snapshots" / ("a" * 40)
    model = _save_hub_layout(snapshot, "vlprompt-test-vit")
    (tmp_path / "hub" / "models--vlprompt-test--tiny-vit" / "refs").mkdir()
    (tmp_path / "hub" / "models--vlprompt-test--tiny-vit" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backbone = create_backbone("hf-hub:vlprompt-test/tiny-vit")
    assert backbone.identity.name == "hf-hub:vlprompt-test/tiny-vit"
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_text(TEXTS), model.encode_text(backbone.tokenize(TEXTS)), rtol=0, atol=1e-5)
    with pytest.raises(VLPromptError, match=r"hf-hub:vlprompt-test/absent: .*huggingface-cli download vlprompt-test/absent"):
        create_backbone("hf-hub:vlprompt-test/absent")


def test_missing_pieces_and_tags_are_one_clear_error(tmp_path):
    _save_hub_layout(tmp_path / "m", "vlprompt-test-vit")
    with pytest.raises(VLPromptError, match="brings its own weights; --pretrained 'openai' is not used"):
        create_backbone(f"local-dir:{tmp_path / 'm'}", "openai")
    (tmp_path / "m" / "open_clip_model.safetensors").unlink()  # open_clip alone would go on with random weights
    with pytest.raises(VLPromptError, match="weights file not found.*open_clip_model.safetensors"):
        create_backbone(f"local-dir:{tmp_path / 'm'}")
    with pytest.raises(VLPromptError, match="no open_clip_config.json in"):
        create_backbone(f"local-dir:{tmp_path / 'nothing'}")
    with pytest.raises(VLPromptError, match="unknown backbone source 'hf-hubb'"):
        create_backbone("hf-hubb:org/repo")
