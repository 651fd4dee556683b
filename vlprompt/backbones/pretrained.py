"""What a `pretrained` value means, decided in one place for every source.

- `normalize_pretrained`: None, "", "none", "None" all mean random weights (None).
- `is_checkpoint_path`: a local weights file rather than a tag (it has a path separator or a weights suffix).
- `ignored_by_own_weights`: sources whose weights come with the model (``hf-hub:``, ``local-dir:``, ``hf:``)
  accept no tag but the CLI's default ``world``, which they ignore.
- `build_open_clip`: the file-or-tag dispatch of the open_clip sources (plain CLIP and CustomTextCLIP).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import open_clip
import torch
from torch import nn

from vlprompt.backbones.base import STATE_DICT_TAG
from vlprompt.backbones.registry import PRETRAINED_RESOLVERS
from vlprompt.backbones.weights import file_sha256, load_into, read_state_dict, short_hash, state_dict_hash
from vlprompt.errors import VLPromptError
from vlprompt.registry import unknown_name_message

RANDOM_TAGS = ("", "none", "None")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
DEFAULT_TAG = "world"  # the CLI's and the config's default: the embedded world CLIP's weights


def normalize_pretrained(pretrained: str | Mapping | None) -> str | Mapping | None:
    """None for random weights (None, "", "none", "None"); any other value (a state dict too) unchanged."""
    if isinstance(pretrained, Mapping):
        return pretrained
    if pretrained is None or str(pretrained).strip() in RANDOM_TAGS:
        return None
    return str(pretrained)


def is_checkpoint_path(pretrained: str) -> bool:
    """A weights file rather than a tag: it has a path separator or a weights-file suffix."""
    return os.sep in pretrained or "/" in pretrained or Path(pretrained).suffix in WEIGHT_SUFFIXES


def ignored_by_own_weights(pretrained: str | None) -> bool:
    """For sources that bring their own weights: no tag, or the CLI's default one."""
    return normalize_pretrained(pretrained) in (None, DEFAULT_TAG)


def build_open_clip(
    name: str, pretrained: str | Mapping[str, torch.Tensor] | None, create: Callable[[str | None], nn.Module]
) -> tuple[nn.Module, str | None, str | None]:
    """(model, `pretrained` as recorded in the identity, weights hash) for an open_clip architecture.

    `create(tag)` builds the architecture, with open_clip's own weights for a tag or fresh ones for None.
    `pretrained`: None (random), a vlprompt resolver tag (``world``), a local checkpoint file, an open_clip
    tag, or an in-memory state dict of the architecture (recorded as ``state_dict:<hash>``).
    """
    if isinstance(pretrained, Mapping):
        state = dict(pretrained)
        weights_hash = state_dict_hash(state)
        model = create(None)
        load_into(model, state, "in-memory state dict", name)
        return model, f"{STATE_DICT_TAG}{weights_hash}", weights_hash
    pretrained = normalize_pretrained(pretrained)
    if pretrained is None:
        return create(None), None, None
    if (name, pretrained) in PRETRAINED_RESOLVERS:
        model = create(None)
        state, weights_hash = PRETRAINED_RESOLVERS.get((name, pretrained))()
        load_into(model, state, f"weights {name}/{pretrained}", name)
        return model, pretrained, weights_hash
    if is_checkpoint_path(pretrained):
        path = Path(pretrained).expanduser()
        state = read_state_dict(path)
        model = create(None)
        load_into(model, state, f"checkpoint {path}", name)
        return model, str(path), short_hash(file_sha256(path))
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        valid = tags + [tag for (arch, tag) in PRETRAINED_RESOLVERS.keys() if arch == name]
        raise VLPromptError(unknown_name_message(f"pretrained tag for {name}", pretrained, valid or ["(none: pass a file)"]))
    return create(pretrained), pretrained, None


__all__ = ["build_open_clip", "ignored_by_own_weights", "is_checkpoint_path", "normalize_pretrained"]
