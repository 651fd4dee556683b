"""Precision is a property of the engine, not of a method (see reference §4.5 (d)/(e)).

On CUDA: bf16 or fp16 autocast around forward + loss; learned parameters and optimizer state
stay fp32 (master weights), fp16 adds a GradScaler. On the CPU everything runs in fp32.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from vlprompt.errors import VLPromptError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    name: str  # resolved: fp32 | bf16 | fp16
    device_type: str

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.name == "fp32":
            yield
            return
        with torch.autocast(self.device_type, dtype=_DTYPES[self.name]):
            yield

    def scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """auto -> bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on the CPU."""
    if requested not in PRECISIONS:
        raise VLPromptError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if requested in _DTYPES:
            warnings.warn(f"precision {requested} needs CUDA; training in fp32 on {device}", stacklevel=2)
        return Precision("fp32", device.type)
    if requested == "auto":
        requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Precision(requested, device.type)
