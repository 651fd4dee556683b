"""open_clip models named by where they live: ``hf-hub:org/repo`` (a Hugging Face repo in open_clip's
layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``) and ``local-dir:/path`` (the same
files in a folder, e.g. a downloaded snapshot).

The weights come with the model, so vlprompt's tags (``--pretrained world``, the CLI default) are
ignored. open_clip itself carries on with random weights when the weights file is missing; here that
is an error, as is a repo that is not cached on an offline machine (saying what to download, where).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import open_clip

from vlprompt import network
from vlprompt.backbones.base import Backbone
from vlprompt.backbones.custom_text import wrap_custom_text
from vlprompt.backbones.open_clip_backbone import OpenClipBackbone, _identity
from vlprompt.backbones.pretrained import ignored_by_own_weights
from vlprompt.backbones.registry import BACKBONE_SOURCES
from vlprompt.backbones.weights import file_sha256, short_hash
from vlprompt.errors import VLPromptError

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _local_weights(location: str) -> Path | None:
    folder = Path(location).expanduser()
    return next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)


def _hub_weights(location: str) -> Path | None:
    from open_clip.pretrained import download_pretrained_from_hf

    # no network: the cached copy only, at once (huggingface_hub would retry each file for minutes)
    offline = network.unreachable_reason(network.hf_endpoint()) is not None
    try:
        with network.hub_offline() if offline else contextlib.nullcontext():
            return Path(download_pretrained_from_hf(location))
    except Exception:  # noqa: BLE001 - not in the repo, not cached, no network: reported by the caller
        return None


WEIGHTS_FINDERS = {"local-dir": _local_weights, "hf-hub": _hub_weights}


def _missing(schema: str, location: str, reason: str) -> str:
    if schema == "local-dir":
        return (f"local-dir:{location}: {reason}. The folder needs {CONFIG_FILE} and one of {', '.join(WEIGHT_FILES)} "
                "(open_clip's hub layout)")
    from huggingface_hub import constants

    return (f"hf-hub:{location}: {reason}. Not downloaded yet or no network: on a machine with network run "
            f"`huggingface-cli download {location}`, then copy the cache folder {constants.HF_HUB_CACHE} "
            "to this machine (HF_HOME points at it); or download the repo and use local-dir:<folder>")


def create_located_backbone(schema: str, location: str, pretrained: str | None, device: str) -> Backbone:
    """Config and weights from a hub repo or a folder; a plain `CLIP` or a `CustomTextCLIP`. The identity
    records `schema` as its source and ``schema:location`` as its name (what open_clip and its tokenizer read)."""
    if not ignored_by_own_weights(pretrained):
        raise VLPromptError(f"{schema}:{location} brings its own weights; --pretrained {pretrained!r} is not used (leave it out)")
    name = f"{schema}:{location}"
    if schema == "local-dir" and not (Path(location).expanduser() / CONFIG_FILE).is_file():
        raise VLPromptError(_missing(schema, location, f"no {CONFIG_FILE} in {Path(location).expanduser()}"))
    weights = WEIGHTS_FINDERS[schema](location)
    if weights is None:
        raise VLPromptError(_missing(schema, location, "weights file not found"))
    offline = schema == "hf-hub" and network.unreachable_reason(network.hf_endpoint()) is not None
    try:
        with network.hub_offline() if offline else contextlib.nullcontext():
            model = open_clip.create_model(name, device=device)
    except Exception as error:  # noqa: BLE001 - hub, JSON and file errors, one line each
        raise VLPromptError(_missing(schema, location, _first_line(error))) from None
    weights_hash = short_hash(file_sha256(weights))
    if isinstance(model, open_clip.CLIP):
        return OpenClipBackbone(model.to(device), _identity(model, name, None, weights_hash, source=schema))
    return wrap_custom_text(model, name, None, weights_hash, device, source=schema)


@BACKBONE_SOURCES.register("hf-hub")
def create_hf_hub_backbone(name: str, pretrained: str | None = None, device: str = "cpu") -> Backbone:
    """``hf-hub:org/repo``: an open_clip model published on the Hugging Face hub."""
    return create_located_backbone("hf-hub", name, pretrained, device)


@BACKBONE_SOURCES.register("local-dir")
def create_local_dir_backbone(name: str, pretrained: str | None = None, device: str = "cpu") -> Backbone:
    """``local-dir:/path``: an open_clip model saved in its hub layout in a folder."""
    return create_located_backbone("local-dir", name, pretrained, device)


__all__ = ["create_hf_hub_backbone", "create_local_dir_backbone"]
