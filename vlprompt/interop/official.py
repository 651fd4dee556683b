"""Prompts released by the official CoOp / CoCoOp / KgCoOp repositories, imported as vlprompt prompts.

Their checkpoints are Dassl's ``prompt_learner/model.pth.tar-<epoch>``: a pickle holding
``{"state_dict": {...}, "epoch", "optimizer", "scheduler", "val_result"}``. Only tensors are read:
first with ``torch.load(weights_only=True)``; Dassl's files also pickle scheduler objects (the warm-up
scheduler keeps its successor), which that refuses, so they are read again with an unpickler that
rebuilds tensors and plain containers and replaces every other object or callable by an inert
placeholder. Nothing named in the file is imported or called: a crafted file cannot run code.

Keys map as the released code names them: ``ctx`` (CoOp ``[n, W]`` or class-specific ``[C, n, W]``,
CoCoOp, KgCoOp) and CoCoOp's ``meta_net.linear1`` / ``meta_net.linear2`` (vlprompt's ``meta_net.0`` /
``meta_net.2``); ``token_prefix`` / ``token_suffix`` are frozen word embeddings of the class prompts,
rebuilt here, and are ignored. fp16 tensors (CoOp trains in fp16) become fp32.
"""

from __future__ import annotations

import collections
import os
import pickle
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import PromptMethod, build_method

KEY_MAPS: dict[str, dict[str, str]] = {
    "coop": {"ctx": "ctx"},
    "kgcoop": {"ctx": "ctx"},
    "cocoop": {
        "ctx": "ctx",
        "meta_net.linear1.weight": "meta_net.0.weight",
        "meta_net.linear1.bias": "meta_net.0.bias",
        "meta_net.linear2.weight": "meta_net.2.weight",
        "meta_net.linear2.bias": "meta_net.2.bias",
    },
}
_PREFIXES = ("module.", "prompt_learner.")  # full-model or DataParallel checkpoints


class _Dropped:
    """What any object or callable other than a tensor or container becomes: inert, whatever its args."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Dropped:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _Dropped


_tensors_only_pickle = types.SimpleNamespace(
    Unpickler=_TensorsOnlyUnpickler, load=lambda f, **kw: _TensorsOnlyUnpickler(f, **kw).load(), __name__="tensors_only"
)


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a released checkpoint's ``state_dict`` (prefixes stripped), never running its objects."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VLPromptError(f"official checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception:  # noqa: BLE001  (a pickled object weights_only refuses: read tensors only)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tensors_only_pickle)
        except Exception as error:  # noqa: BLE001
            raise VLPromptError(f"{path} is not a PyTorch checkpoint that holds tensors: {error}") from None
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise VLPromptError(f"{path}: expected a dict (Dassl's {{'state_dict': ...}}), found {type(payload).__name__}")
    tensors = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            for prefix in _PREFIXES:
                key = key.removeprefix(prefix)
            tensors[key] = value
    return tensors


def import_official(
    path: str | os.PathLike,
    method: str,
    backbone: Backbone,
    classnames: Sequence[str],
    config: dict[str, Any] | None = None,
) -> PromptMethod:
    """A vlprompt method holding the released prompt's tensors. `config` adds settings the file does not
    record (CoOp's ``class_position``); ``n_ctx`` and ``class_specific`` come from the tensors' shapes."""
    if method not in KEY_MAPS:
        raise VLPromptError(f"official import: method {method!r} is not one of {sorted(KEY_MAPS)}")
    tensors = read_tensors(path)
    mapping = KEY_MAPS[method]
    missing = [key for key in mapping if key not in tensors]
    if missing:
        raise VLPromptError(f"{path}: no {', '.join(missing)} for {method} (found {', '.join(sorted(tensors)) or 'no tensors'})")
    ctx = tensors["ctx"].float()
    width = backbone.identity.width
    if ctx.shape[-1] != width:
        raise VLPromptError(
            f"{path}: context vectors are {ctx.shape[-1]} wide, backbone {backbone.identity.name} embeds tokens in {width}"
        )
    values: dict[str, Any] = {"n_ctx": int(ctx.shape[-2]), "ctx_init": ""}
    if method == "coop":
        values["class_specific"] = ctx.ndim == 3
        if ctx.ndim == 3 and ctx.shape[0] != len(classnames):
            raise VLPromptError(f"{path}: class-specific context for {ctx.shape[0]} classes, {len(classnames)} class names given")
    values.update(config or {})
    built = build_method(method, backbone, list(classnames), values)
    state = {ours: tensors[theirs].float() for theirs, ours in mapping.items()}
    own = dict(built.named_parameters())
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise VLPromptError(f"{path}: {name} has shape {list(tensor.shape)}, {method} here needs {list(own[name].shape)}")
    built.load_trainable_state(state)
    return built.eval()
