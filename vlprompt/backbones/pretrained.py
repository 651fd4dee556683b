"""What a `pretrained` value means, decided in one place for every source.

- `normalize_pretrained`: None, "", "none", "None" all mean random weights (None).
- `is_checkpoint_path`: a local weights file rather than a tag (it has a path separator or a weights suffix).
- `ignored_by_own_weights`: sources whose weights come with the model (``hf-hub:``, ``local-dir:``, ``hf:``)
  accept no tag but the CLI's default ``world``, which they ignore.
- `build_open_clip`: the file-or-tag dispatch of the open_clip sources (plain CLIP and CustomTextCLIP).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import open_clip
import torch
from torch import nn

from vlprompt import network
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
    return create_with_tag_weights(name, pretrained, create), pretrained, None


def tag_weights_source(name: str, tag: str) -> tuple[str, str | None, str]:
    """(what to download, the cached copy or None, where it comes from) for open_clip's `name`/`tag`."""
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if cfg.get("file"):
        return cfg["file"], cfg["file"] if Path(cfg["file"]).is_file() else None, cfg["file"]
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])  # 'org/model/' names the default weights file
        filename = filename or HF_WEIGHTS_NAME
        for candidate in (*_get_safe_alternatives(filename), filename):
            found = try_to_load_from_cache(repo, candidate)
            if isinstance(found, str):
                return f"{repo} {candidate}", found, f"{network.hf_endpoint()}/{repo}"
        return f"{repo} {filename}", None, f"{network.hf_endpoint()}/{repo}"
    url = cfg.get("url", "")
    target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    return url, str(target) if target.is_file() else None, url


def _not_downloadable(name: str, tag: str, what: str, source: str, reason: str) -> str:
    if source.startswith(network.hf_endpoint()):
        from huggingface_hub import constants

        how = (f"on a machine with network run `hf download {what}` (or `huggingface-cli download {what}`), then copy "
               f"the Hugging Face cache {constants.HF_HUB_CACHE} to this machine (HF_HOME or HF_HUB_CACHE point at it)")
    else:
        how = f"download {what} on a machine with network into {Path('~/.cache/clip').expanduser()} on this one"
    return (f"weights {name}/{tag} are not in the local cache and cannot be downloaded ({reason}): {how}; "
            f"or pass the weights file: --pretrained /path/to/{what.split()[-1].rsplit('/', 1)[-1]}")


def create_with_tag_weights(name: str, tag: str, create: Callable[[str | None], nn.Module]) -> nn.Module:
    """`create(tag)`, asking first whether the weights are cached or can be downloaded: offline with the
    weights absent is one error saying what to download and where, at once (no retries); cached weights
    load with the hub in offline mode (no network calls)."""
    what, cached, source = tag_weights_source(name, tag)
    if cached is None:
        reason = network.unreachable_reason(source)
        if reason is not None:
            raise VLPromptError(_not_downloadable(name, tag, what, source, reason))
    try:
        with network.hub_offline() if cached is not None else contextlib.nullcontext(), _quiet_root_logger():
            return create(tag)
    except (RuntimeError, OSError) as error:
        text = str(error).strip()
        if "download" not in text.lower():
            raise
        detail = text.splitlines()[0][:200] if text else type(error).__name__
        raise VLPromptError(_not_downloadable(name, tag, what, source, detail)) from None


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip logs a failed download on the root logger before raising; the raised error says it once."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


__all__ = ["build_open_clip", "ignored_by_own_weights", "is_checkpoint_path", "normalize_pretrained"]
