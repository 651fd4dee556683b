"""Every backbone source rebuilds from its recorded identity (`backbone_from_identity`, what `load_prompt`
uses): same weights, same identity. Models are written to disk by the tests, read offline."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file
from test_open_clip_hub import _save_hub_layout

from vlprompt.backbones import backbone_from_identity, create_backbone, identity_spec, normalize_pretrained
from vlprompt.backbones.pretrained import is_checkpoint_path
from vlprompt.backbones.weights import file_sha256, short_hash, state_dict_hash
from vlprompt.errors import VLPromptError

CUSTOM = "vlprompt-test-identity-custom"  # an open_clip architecture built as CustomTextCLIP


@pytest.fixture(scope="module", autouse=True)
def custom_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("identity_configs")
    cfg = {"embed_dim": 32, "custom_text": True,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (folder / f"{CUSTOM}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def _weights(backbone) -> str:
    return state_dict_hash(backbone.state_dict())


def assert_round_trip(backbone, same_weights: bool = True):
    """Rebuilt from the identity's JSON form: the same identity, and the same numbers when weights were loaded."""
    recorded = json.loads(json.dumps(backbone.identity.to_dict()))  # as a checkpoint stores it
    rebuilt = backbone_from_identity(recorded)
    assert type(rebuilt) is type(backbone)
    assert rebuilt.identity == backbone.identity and rebuilt.identity.same_model(recorded)
    if same_weights:
        assert rebuilt.identity.weights_hash and _weights(rebuilt) == _weights(backbone)
    return rebuilt


def test_random_weights_none_and_its_spellings():
    for tag in (None, "", "none", "None"):
        assert normalize_pretrained(tag) is None
        backbone = create_backbone("vlprompt-test-vit", tag)
        assert backbone.identity.pretrained is None and backbone.identity.weights_hash is None
    assert_round_trip(backbone, same_weights=False)
    assert normalize_pretrained("world") == "world"


def test_file_or_tag_is_decided_in_one_place():
    assert is_checkpoint_path("/x/weights") and is_checkpoint_path("w.safetensors") and is_checkpoint_path("w.pt")
    assert not is_checkpoint_path("openai") and not is_checkpoint_path("laion2b_s34b_b79k")


def test_open_clip_checkpoint_file(tmp_path, tiny_vit):
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vit.model.state_dict().items()}, str(path))
    backbone = create_backbone("vlprompt-test-vit", str(path))
    assert backbone.identity.weights_hash == short_hash(file_sha256(path)) and len(file_sha256(path)) == 64
    assert _weights(assert_round_trip(backbone)) == _weights(tiny_vit)


def test_embedded_world():
    backbone = create_backbone("vlprompt-tiny", "world")
    assert (backbone.identity.source, backbone.identity.pretrained) == ("open_clip", "world")
    assert_round_trip(backbone)


def test_custom_text_by_name_and_file(tmp_path):
    torch.manual_seed(0)
    random = create_backbone(CUSTOM)
    assert random.identity.source == "open_clip_custom" and identity_spec(random.identity) == f"open_clip_custom:{CUSTOM}"
    path = tmp_path / "custom.safetensors"
    save_file({k: v.contiguous() for k, v in random.model.state_dict().items()}, str(path))
    backbone = create_backbone(CUSTOM, str(path))
    assert _weights(assert_round_trip(backbone)) == _weights(random)


@pytest.mark.parametrize("custom_text", [False, True])
def test_local_dir(tmp_path, custom_text):
    _save_hub_layout(tmp_path / "m", "vlprompt-test-vit", custom_text)
    backbone = create_backbone(f"local-dir:{tmp_path / 'm'}", "world")  # the CLI's default tag is ignored
    identity = backbone.identity
    assert (identity.source, identity.name) == ("local-dir", f"local-dir:{tmp_path / 'm'}")
    assert identity_spec(identity) == identity.name  # not local-dir:local-dir:...
    assert_round_trip(backbone)


@pytest.mark.parametrize("custom_text", [False, True])
def test_hf_hub(tmp_path, monkeypatch, custom_text):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--vlprompt-test--tiny"
    _save_hub_layout(repo / "snapshots" / ("a" * 40), "vlprompt-test-vit", custom_text)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backbone = create_backbone("hf-hub:vlprompt-test/tiny")
    assert (backbone.identity.source, backbone.identity.name) == ("hf-hub", "hf-hub:vlprompt-test/tiny")
    assert_round_trip(backbone)


def test_transformers_folder(tmp_path):
    pytest.importorskip("transformers")
    from test_hf_backbone import _tiny_clip

    _tiny_clip(tmp_path / "clip")
    backbone = create_backbone(f"hf:{tmp_path / 'clip'}")
    assert backbone.identity.source == "hf" and identity_spec(backbone.identity) == f"hf:{tmp_path / 'clip'}"
    assert_round_trip(backbone)
    # the folder given as `pretrained` overrides the name; the identity keeps both
    named = create_backbone("hf:org/tiny-clip", str(tmp_path / "clip"))
    assert named.identity.pretrained == str(tmp_path / "clip")
    assert _weights(assert_round_trip(named)) == _weights(backbone)


def test_openai_checkpoint_file(tmp_path):
    torch.manual_seed(0)
    model = CLIP(32, vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=8, image_size=32),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2), quick_gelu=True)
    path = tmp_path / "ViT-tiny.pt"
    torch.save(model.state_dict(), path)
    backbone = create_backbone(f"openai:{path}")
    assert backbone.identity.weights_hash == short_hash(file_sha256(path))
    assert_round_trip(backbone)


def test_old_records_still_rebuild(tmp_path):
    """Identities written before located models recorded their own source (open_clip + ``local-dir:...``)."""
    _save_hub_layout(tmp_path / "m", "vlprompt-test-vit")
    backbone = create_backbone(f"local-dir:{tmp_path / 'm'}")
    old = {**backbone.identity.to_dict(), "source": "open_clip"}
    assert backbone_from_identity(old).identity.same_model(backbone.identity)
    with pytest.raises(VLPromptError, match="has no 'name'"):
        backbone_from_identity({"source": "open_clip"})


def test_prompt_on_a_located_custom_text_model_loads_from_its_path(tmp_path):
    """The reported bug: a CustomTextCLIP from local-dir: was recorded so that load_prompt failed."""
    from vlprompt.methods import build_method
    from vlprompt.zoo import load_prompt, save_prompt

    _save_hub_layout(tmp_path / "m", "vlprompt-test-vit", custom_text=True)
    backbone = create_backbone(f"local-dir:{tmp_path / 'm'}")
    torch.manual_seed(0)
    method = build_method("coop", backbone, ["red circle", "blue square"], {"n_ctx": 2})
    path = save_prompt(tmp_path / "p", method)
    loaded = load_prompt(path)
    assert loaded.backbone.identity == backbone.identity and torch.equal(loaded.ctx, method.ctx)
