"""The embedding path must equal open_clip's own encode_text, and loading must fail clearly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from vlprompt.backbones import create_backbone
from vlprompt.errors import VLPromptError

PROMPTS = ["a photo of a dog.", "x", "a much longer prompt, with punctuation and many many words in it", ""]


@pytest.mark.parametrize("truncate", [True, False])
def test_embedding_path_equals_open_clip_encode_text(any_backbone, truncate):
    ids = any_backbone.tokenize(PROMPTS)
    with torch.no_grad():
        reference = any_backbone.model.encode_text(ids)
        ours = any_backbone.encode_text_embeds(any_backbone.embed_tokens(ids), any_backbone.eot_index(ids), truncate)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() < 1e-5


def test_truncation_really_shortens_the_sequence(tiny_vit, monkeypatch):
    seen = []
    original = tiny_vit.model.transformer.forward

    def spy(x, attn_mask=None):
        seen.append(x.shape[1])
        return original(x, attn_mask=attn_mask)

    monkeypatch.setattr(tiny_vit.model.transformer, "forward", spy)
    ids = tiny_vit.tokenize(["a photo of a dog."])
    tiny_vit.encode_text(ids, truncate=True)
    tiny_vit.encode_text(ids, truncate=False)
    assert seen == [int(tiny_vit.eot_index(ids)[0]) + 1, tiny_vit.identity.context_length]


def test_identity_metadata(tiny_rn):
    ident = tiny_rn.identity
    assert (ident.name, ident.embed_dim, ident.width, ident.context_length) == ("vlprompt-test-rn", 48, 64, 40)
    assert tiny_rn.image_size == (32, 32)
    image = tiny_rn.eval_transform(__import__("PIL.Image").Image.new("RGB", (50, 40)))
    assert tuple(image.shape) == (3, 32, 32)
    assert tiny_rn.encode_image(image[None]).shape == (1, 48)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip_through_user_path(tmp_path, tiny_vit, suffix):
    path = tmp_path / f"weights{suffix}"
    state = {k: v.clone() for k, v in tiny_vit.model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = create_backbone("vlprompt-test-vit", pretrained=str(path))
    ids = loaded.tokenize(PROMPTS)
    assert torch.equal(loaded.encode_text(ids), tiny_vit.encode_text(ids))
    assert loaded.identity.weights_hash and loaded.identity.pretrained == str(path)


def test_checkpoint_of_another_architecture_is_refused(tmp_path, tiny_rn):
    path = tmp_path / "rn.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_rn.model.state_dict().items()}, str(path))
    with pytest.raises(VLPromptError, match="does not fit architecture 'vlprompt-test-vit'"):
        create_backbone("vlprompt-test-vit", pretrained=str(path))


def test_bad_names_and_files_fail_with_one_clear_line(tmp_path):
    with pytest.raises(VLPromptError, match="Did you mean 'ViT-B-16'"):
        create_backbone("ViT-B-61")
    with pytest.raises(VLPromptError, match="Did you mean 'openai'"):
        create_backbone("ViT-B-16", "opnai")
    with pytest.raises(VLPromptError, match="checkpoint file not found"):
        create_backbone("vlprompt-test-vit", str(tmp_path / "missing.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(VLPromptError, match="cannot read checkpoint"):
        create_backbone("vlprompt-test-vit", str(corrupt))
    with pytest.raises(VLPromptError) as info:
        create_backbone("nosuch:ViT-B-16")
    assert "\n" not in str(info.value)
