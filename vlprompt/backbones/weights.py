"""Reading weight files safely: safetensors or `torch.load(weights_only=True)`, never arbitrary pickles."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from vlprompt.errors import VLPromptError
from vlprompt.hashing import file_sha256  # noqa: F401  (the backbone modules import it from here)

WEIGHTS_HASH_LENGTH = 16  # hex digits of a weights hash in `BackboneIdentity` (checkpoints and cache keys)


def short_hash(digest: str) -> str:
    """The prefix of a digest that `BackboneIdentity.weights_hash` records."""
    return digest[:WEIGHTS_HASH_LENGTH]


def state_dict_hash(state: dict[str, torch.Tensor], prefix: int = WEIGHTS_HASH_LENGTH) -> str:
    """Content hash of a state dict: same numbers -> same hash, wherever they were loaded from."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:prefix]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from a checkpoint file, unwrapping ``{"state_dict": ...}`` and ``module.``."""
    path = Path(path)
    if not path.is_file():
        raise VLPromptError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        raise VLPromptError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise VLPromptError(f"checkpoint {path} holds no state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, arch: str) -> None:
    """Strict load with one readable line on mismatch (typically: a checkpoint of another architecture)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        details = []
        if wrong:
            details.append(f"{len(wrong)} shape mismatches (e.g. {wrong[0]})")
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise VLPromptError(
            f"{what} does not fit architecture {arch!r}: {'; '.join(details)}. "
            "Is it a checkpoint of another backbone?"
        )
    model.load_state_dict(state, strict=True)
