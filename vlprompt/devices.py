"""Device names, checked: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``. A typo, or a GPU asked for
on a machine without one, is one clear line instead of torch's RuntimeError.

`check_device_name` needs no torch (configs are checked when loaded); `check_device_available`
asks torch whether the device is there."""

from __future__ import annotations

import re

from vlprompt.errors import VLPromptError

_DEVICE = re.compile(r"\A(auto|cpu|mps|cuda(:\d+)?)\Z")
VALID = "auto, cpu, cuda, cuda:N or mps"


def check_device_name(device: str, where: str = "device") -> str:
    """`device` if it names a device this package can use, else one error line listing the valid ones."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise VLPromptError(f"{where}: device {device!r} is not one of {VALID}")
    return device


def check_device_available(device: str, where: str = "device") -> str:
    """`device` if it exists on this machine (``auto`` is resolved later and always does)."""
    import torch

    check_device_name(device, where)
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise VLPromptError(f"{where}: device {device!r} asked for, but no CUDA GPU is visible "
                                "(torch.cuda.is_available() is False); use cpu or auto")
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise VLPromptError(f"{where}: device {device!r} asked for, but only {count} CUDA GPU(s) are visible")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VLPromptError(f"{where}: device 'mps' asked for, but MPS is not available; use cpu or auto")
    return device
