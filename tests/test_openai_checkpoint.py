"""OpenAI-format checkpoints: state dicts, safetensors and TorchScript archives (only known or flagged)."""

from __future__ import annotations

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

from vlprompt.backbones import create_backbone, openai_checkpoint
from vlprompt.errors import VLPromptError

PROMPTS = ["a photo of a dog.", "x", "a much longer prompt, with punctuation and many many words in it", ""]


@pytest.fixture(scope="module")
def openai_model():
    torch.manual_seed(0)
    model = CLIP(
        32,
        vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
        quick_gelu=True,
    )
    with torch.no_grad():  # a non-trivial projection and temperature, as trained weights have
        model.text_projection.normal_(std=0.2)
    return model.eval()


def _reference(model, backbone):
    ids = backbone.tokenize(PROMPTS)
    with torch.no_grad():
        return model.encode_text(ids), backbone.encode_text(ids)


@pytest.mark.parametrize("kind", ["pt", "safetensors"])
def test_state_dict_loads_and_matches(tmp_path, openai_model, kind):
    state = {k: v.clone() for k, v in openai_model.state_dict().items()}
    path = tmp_path / f"ViT-tiny.{kind}"
    if kind == "pt":
        state["input_resolution"] = torch.tensor(32)  # OpenAI files carry these ints; they are dropped
        torch.save(state, path)
    else:
        save_file(state, str(path))
    backbone = create_backbone(f"openai:{path}")
    assert backbone.identity.source == "openai" and backbone.identity.weights_hash
    assert backbone.causal and backbone.image_size == (32, 32)
    reference, ours = _reference(openai_model, backbone)
    assert (reference - ours).abs().max().item() < 1e-5
    # reload as a zoo checkpoint does: source:name + pretrained
    again = create_backbone(f"openai:{backbone.identity.name}", backbone.identity.pretrained)
    assert again.identity.same_model(backbone.identity)


def test_fp16_state_dict_is_read_in_fp32(tmp_path, openai_model):
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in openai_model.state_dict().items()}, path)
    backbone = create_backbone(f"openai:{path}")
    assert backbone.dtype == torch.float32


@pytest.mark.filterwarnings("ignore")
def test_torchscript_archive_needs_known_hash_or_flag(tmp_path, openai_model, monkeypatch):
    path = tmp_path / "ViT-B-16.pt"  # a known OpenAI *name* is not enough: the sha256 must be known
    images, text = torch.ones(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long)
    traced = torch.jit.trace_module(openai_model, {"encode_text": (text,), "encode_image": (images,)})
    torch.jit.save(traced, str(path))
    assert openai_checkpoint.is_torchscript_archive(path)
    monkeypatch.delenv(openai_checkpoint.ALLOW_ENV, raising=False)
    with pytest.raises(VLPromptError, match="TorchScript archive.*--pretrained torchscript"):
        create_backbone(f"openai:{path}")
    backbone = create_backbone(f"openai:{path}", "torchscript")
    reference, ours = _reference(openai_model, backbone)
    assert (reference - ours).abs().max().item() < 1e-5
    monkeypatch.setenv(openai_checkpoint.ALLOW_ENV, "1")
    assert create_backbone(f"openai:{path}").identity.weights_hash == backbone.identity.weights_hash
    # a file whose sha256 is a published release loads without the flag
    monkeypatch.delenv(openai_checkpoint.ALLOW_ENV)
    digest = openai_checkpoint.file_sha256(path)
    monkeypatch.setattr(openai_checkpoint, "known_openai_files", lambda: {digest: "ViT-B-16.pt"})
    create_backbone(f"openai:{path}")


def test_known_openai_hashes_come_from_open_clip():
    known = openai_checkpoint.known_openai_files()
    assert "ViT-B-16.pt" in known.values() and all(len(h) == 64 for h in known)


def test_torch_save_zip_is_not_mistaken_for_torchscript(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, path)
    assert not openai_checkpoint.is_torchscript_archive(path)


def test_clear_errors(tmp_path):
    with pytest.raises(VLPromptError, match="OpenAI checkpoint not found.*openai/CLIP"):
        create_backbone(f"openai:{tmp_path / 'missing.pt'}")
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(VLPromptError, match="not an OpenAI-layout CLIP checkpoint"):
        create_backbone(f"openai:{path}")
    pickled = tmp_path / "pickle.pt"
    torch.save({"obj": object}, pickled)  # a pickle with a global: refused by weights_only
    with pytest.raises(VLPromptError, match="cannot read checkpoint"):
        create_backbone(f"openai:{pickled}")
