"""A real backbone with no network: one `error:` line saying what to download and where, with no
download attempt (no retries), and the dataset checked before any backbone is loaded."""

from __future__ import annotations

import socket

import huggingface_hub.constants
import pytest

from vlprompt import network
from vlprompt.backbones import create_backbone
from vlprompt.backbones.pretrained import create_with_tag_weights, tag_weights_source
from vlprompt.cli import main
from vlprompt.errors import VLPromptError

HUB_REPO = "timm/vit_base_patch32_clip_224.openai"  # where open_clip 3.x fetches ViT-B-32/openai


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, no offline variables, no remembered probes."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    for env in (*network.OFFLINE_ENVS, "HF_ENDPOINT", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(network, "_probes", {})
    return cache


def _no_network_calls(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network call while offline: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_offline_mode_is_one_error_without_any_network_call(empty_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _no_network_calls(monkeypatch)
    with pytest.raises(VLPromptError) as error:
        create_backbone("ViT-B-32", "openai")
    text = str(error.value)
    assert "HF_HUB_OFFLINE=1" in text and f"hf download {HUB_REPO} open_clip_pytorch_model.bin" in text
    assert str(empty_hub) in text and "--pretrained /path/to/open_clip_pytorch_model.bin" in text


def test_unreachable_proxy_is_detected_at_once(empty_hub, monkeypatch):
    """No offline variable, but the proxy the environment names refuses connections (port 1)."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    with pytest.raises(VLPromptError, match=r"no network: cannot reach proxy 127\.0\.0\.1:1"):
        create_backbone("ViT-B-32", "openai")
    assert list(network._probes) == [("127.0.0.1", 1)]
    _no_network_calls(monkeypatch)  # remembered: asking again probes nothing
    with pytest.raises(VLPromptError, match=r"no network: cannot reach proxy 127\.0\.0\.1:1"):
        create_backbone("ViT-B-32", "openai")


def test_cached_weights_load_with_the_hub_offline(empty_hub, monkeypatch):
    """A cached copy is found without network, and open_clip then runs with huggingface_hub offline."""
    snapshot = empty_hub / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"x")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    what, cached, _ = tag_weights_source("ViT-B-32", "openai")
    assert cached == str(snapshot / "open_clip_model.safetensors") and what == f"{HUB_REPO} open_clip_model.safetensors"

    _no_network_calls(monkeypatch)
    seen = []
    create_with_tag_weights("ViT-B-32", "openai", lambda tag: seen.append((tag, huggingface_hub.constants.HF_HUB_OFFLINE)))
    assert seen == [("openai", True)] and huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_a_failed_download_is_one_error(empty_hub, monkeypatch):
    monkeypatch.setattr(network, "unreachable_reason", lambda url: None)  # "the network is there"

    def create(tag):
        raise RuntimeError("Failed to download weights for tag 'openai': 404 Not Found\n(more lines)")

    with pytest.raises(VLPromptError, match=r"cannot be downloaded \(Failed to download weights for tag 'openai': 404"):
        create_with_tag_weights("ViT-B-32", "openai", create)
    with pytest.raises(RuntimeError, match="a bug"):  # anything else is not a download problem
        create_with_tag_weights("ViT-B-32", "openai", lambda tag: (_ for _ in ()).throw(RuntimeError("a bug")))


def test_hf_source_offline_is_one_error(empty_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _no_network_calls(monkeypatch)
    with pytest.raises(VLPromptError, match=r"'openai/clip-vit-base-patch16' is not in the local cache and HF_HUB_OFFLINE=1"):
        create_backbone("hf:openai/clip-vit-base-patch16")


@pytest.mark.parametrize("command", [
    ["eval", "--dataset", "oxford_pets"],
    ["train", "dataset.name=oxford_pets"],
])
def test_dataset_is_checked_before_the_backbone(command, tmp_path, monkeypatch, capsys):
    def no_backbone(*args, **kwargs):
        raise AssertionError("backbone loaded before the dataset was checked")

    monkeypatch.setattr("vlprompt.api.load_backbone", no_backbone)
    monkeypatch.setattr("vlprompt.runner.load_backbone", no_backbone)
    monkeypatch.setenv("VLPROMPT_DATA", str(tmp_path))
    argv = [*command, "--backbone", "ViT-B-32", "--pretrained", "openai"] if command[0] == "eval" else [
        *command, "backbone.name=ViT-B-32", "backbone.pretrained=openai", f"output_dir={tmp_path / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: dataset 'oxford_pets' not found"), err
