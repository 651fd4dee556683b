"""Training checkpoints: trainable state only, written atomically, readable with weights_only.

A checkpoint holds what resuming needs and nothing frozen: the method's trainable tensors,
optimizer / grad-scaler / RNG state, the epoch, the run config, the class names and the backbone
identity, so resuming against another backbone or other classes fails with a clear line.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlprompt.backbones.base import BackboneIdentity
from vlprompt.errors import VLPromptError
from vlprompt.paths import atomic_path

FORMAT = "vlprompt-train-checkpoint"
VERSION = 1


def rng_state() -> dict[str, Any]:
    """torch (CPU + CUDA), numpy and python RNG states as tensors / lists / ints only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """torch.save `payload` (+ format tag) to `path` atomically: a kill never truncates it."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    buffer = io.BytesIO()  # serialised in memory: a full disk is then an OSError of a plain write, which
    torch.save(payload, buffer)  # atomic_path reports (torch's own writer raises a bare RuntimeError)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint with ``weights_only=True`` (no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise VLPromptError(f"no checkpoint to resume from: {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VLPromptError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise VLPromptError(f"{path} is not a vlprompt training checkpoint")
    return payload


def check_compatible(payload: dict[str, Any], path: str | Path, identity: dict, classnames: list[str], method: str) -> None:
    """Refuse to resume a run of another backbone, other classes or another method, naming both."""
    saved_identity = BackboneIdentity(**payload["backbone"])
    here = BackboneIdentity(**identity)
    if not here.same_model(saved_identity):
        raise VLPromptError(
            f"checkpoint {path} was trained on backbone {saved_identity.describe()} "
            f"[{saved_identity.source}], this run uses {here.describe()} [{here.source}]"
        )
    if payload.get("method") != method:
        raise VLPromptError(f"checkpoint {path} was trained with method {payload.get('method')!r}, this run uses {method!r}")
    saved = list(payload["classnames"])
    if saved != list(classnames):
        diff = next((i for i, (a, b) in enumerate(zip(saved, classnames)) if a != b), min(len(saved), len(classnames)))
        raise VLPromptError(
            f"checkpoint {path} was trained on {len(saved)} classes, this run has {len(classnames)}; "
            f"first difference at index {diff}: {saved[diff] if diff < len(saved) else '(none)'!r} in the "
            f"checkpoint vs {classnames[diff] if diff < len(classnames) else '(none)'!r} here"
        )
