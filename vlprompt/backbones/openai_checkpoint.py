"""OpenAI-format CLIP checkpoint files: ``create_backbone("openai:/path/to/ViT-B-16.pt")``.

The architecture is read from the tensor shapes (as OpenAI's ``clip.load`` and open_clip's
``build_model_from_openai_state_dict`` do), so any OpenAI-layout file loads without naming it. Accepted:

- a state dict saved with ``torch.save`` (read with ``weights_only=True``) or a ``.safetensors`` file;
- a TorchScript archive (OpenAI's release format), which can run code when loaded, so only when the file's
  sha256 is one of OpenAI's published releases, or behind an explicit flag: ``pretrained="torchscript"``,
  ``allow_torchscript=True`` or ``VLPROMPT_ALLOW_TORCHSCRIPT=1``.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch

from vlprompt.backbones.base import STATE_DICT_TAG, BackboneIdentity
from vlprompt.backbones.open_clip_backbone import OpenClipBackbone
from vlprompt.backbones.pretrained import is_checkpoint_path
from vlprompt.backbones.registry import BACKBONE_SOURCES
from vlprompt.backbones.weights import file_sha256, load_into, read_state_dict, short_hash, state_dict_hash
from vlprompt.errors import VLPromptError

ALLOW_ENV = "VLPROMPT_ALLOW_TORCHSCRIPT"
TORCHSCRIPT_FLAG = "torchscript"
# ints stored in OpenAI's archives, and the causal mask buffer a traced open_clip model carries
EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


@lru_cache(maxsize=1)
def known_openai_files() -> dict[str, str]:
    """sha256 -> file name of OpenAI's released archives (the hash is part of each download URL)."""
    import open_clip

    known: dict[str, str] = {}
    for arch, tag in open_clip.list_pretrained():
        if tag != "openai":
            continue
        url = open_clip.get_pretrained_cfg(arch, tag).get("url", "")
        if "openaipublic" in url:
            parts = url.rstrip("/").split("/")
            known[parts[-2].lower()] = parts[-1]
    return known


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript zips hold ``<name>/code/`` and ``constants.pkl``; ``torch.save`` zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("/constants.pkl") for name in archive.namelist())


def _flag_set(allow_torchscript: bool) -> bool:
    return allow_torchscript or os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def read_openai_state_dict(path: str | Path, allow_torchscript: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """(float32 state dict, full sha256) of an OpenAI-layout checkpoint, read without unpickling objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VLPromptError(
            f"OpenAI checkpoint not found: {path}. The release files (e.g. ViT-B-16.pt) are linked from "
            "https://github.com/openai/CLIP (clip/clip.py, _MODELS); "
            "or use open_clip's tag: --backbone ViT-B-16 --pretrained openai"
        )
    digest = file_sha256(path)
    if is_torchscript_archive(path):
        known = known_openai_files()
        if digest not in known and not _flag_set(allow_torchscript):
            raise VLPromptError(
                f"{path} is a TorchScript archive, which can run code when loaded, and its sha256 {digest[:16]}... is "
                f"not one of OpenAI's releases ({', '.join(sorted(known.values()))}). If you trust it, pass "
                f"pretrained='{TORCHSCRIPT_FLAG}' (CLI: --pretrained {TORCHSCRIPT_FLAG}) or set {ALLOW_ENV}=1; "
                "better, convert it once to a state dict or safetensors file"
            )
        try:
            archive = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # corrupt or not a module archive
            raise VLPromptError(f"cannot read TorchScript archive {path}: {type(error).__name__}: {error}") from None
        state = dict(archive.state_dict())
    else:
        state = read_state_dict(path)
    return clean_openai_state(state, str(path)), digest


def build_openai_model(state: dict[str, torch.Tensor], where: str):
    """open_clip's `CLIP` with the architecture inferred from the shapes, weights loaded exactly in fp32."""
    from open_clip.model import build_model_from_openai_state_dict

    for key in ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight"):
        if key not in state:
            raise VLPromptError(
                f"{where} is not an OpenAI-layout CLIP checkpoint: key {key!r} is missing "
                "(an open_clip checkpoint loads with --backbone ARCH --pretrained FILE)"
            )
    try:
        model = build_model_from_openai_state_dict(dict(state), cast_dtype=None, quick_gelu=True)
    except (RuntimeError, KeyError, AssertionError, ZeroDivisionError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VLPromptError(f"{where} does not fit an OpenAI CLIP architecture: {first}") from None
    model.float()
    load_into(model, state, where, "OpenAI CLIP (inferred from the shapes)")  # fp32 again: the builder loads fp16
    return model.eval()


def clean_openai_state(state: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Tensors only (OpenAI's stored ints dropped), floating ones in fp32."""
    state = {k: v for k, v in state.items() if k not in EXTRA_KEYS}
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise VLPromptError(f"{where}: entry {bad[0]!r} is not a tensor; not an OpenAI CLIP state dict")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


@BACKBONE_SOURCES.register("openai")
def create_openai_backbone(
    name: str, pretrained: str | Mapping[str, torch.Tensor] | None = None, device: str = "cpu",
    allow_torchscript: bool = False,
) -> OpenClipBackbone:
    """``openai:<file>`` (or ``openai:<label>`` with the file as `pretrained`); `pretrained` may also be
    ``torchscript`` to allow an archive that is not a known OpenAI release, or an OpenAI-layout state dict
    in memory (``load_backbone("openai:my-clip", state_dict)``: the label names it, the architecture is
    inferred from the shapes, and the identity records ``state_dict:<content hash>``)."""
    if isinstance(pretrained, Mapping):
        state = clean_openai_state(pretrained, "in-memory state dict")
        model = build_openai_model(state, "in-memory state dict")
        digest = state_dict_hash(state)
        return OpenClipBackbone(model.to(device), _identity(model, name or "state-dict", f"{STATE_DICT_TAG}{digest}", digest))
    if pretrained == TORCHSCRIPT_FLAG:
        allow_torchscript, pretrained = True, None
    file = pretrained if pretrained and (is_checkpoint_path(pretrained) or Path(pretrained).is_file()) else name
    state, digest = read_openai_state_dict(file, allow_torchscript)
    model = build_openai_model(state, str(file))
    identity = _identity(model, str(file), TORCHSCRIPT_FLAG if allow_torchscript else None, short_hash(digest))
    return OpenClipBackbone(model.to(device), identity)


def _identity(model, name: str, pretrained: str | None, weights_hash: str) -> BackboneIdentity:
    return BackboneIdentity(source="openai", name=name, pretrained=pretrained,
                            embed_dim=int(model.text_projection.shape[-1]), width=model.transformer.width,
                            context_length=model.context_length, weights_hash=weights_hash)
