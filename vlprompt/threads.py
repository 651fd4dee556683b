"""How many intra-op threads torch uses, chosen from the size of the work.

A small model's matrix products are too short to share: with two threads on a 2-core laptop where
something else keeps one core busy, each op waits for the slower thread, and CoOp on the world model
ran 4.5x slower than with one thread (8x on a loaded box; `bench/bench_threads.py`). So:

- ``--threads N`` on the command line, or ``VLPROMPT_THREADS=N``: exactly N;
- otherwise a backbone under `SMALL_MODEL_PARAMS` parameters (the embedded world CLIP, the test models)
  runs on one thread, and a larger one keeps torch's default (``OMP_NUM_THREADS``, else the cores).

One thread also makes a small model's results independent of the machine: a different thread count
changes the order of float sums, which moves a 100-class accuracy by a few hundredths.
The count used is recorded in every result (``threads``).
"""

from __future__ import annotations

import os

from vlprompt.errors import VLPromptError

THREADS_ENV = "VLPROMPT_THREADS"
SMALL_MODEL_PARAMS = 30_000_000  # the world CLIP has 7.7 M parameters; RN50 102 M, ViT-B/32 151 M


def requested_threads() -> int | None:
    """``VLPROMPT_THREADS`` as a positive int, None when unset or ``auto``."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value in ("", "auto"):
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise VLPromptError(f"{THREADS_ENV}={value!r}: give a positive number of threads, or 'auto'")
    return threads


def choose_threads(num_params: int | None) -> int | None:
    """The thread count for a model of `num_params` parameters, or None to keep torch's default."""
    requested = requested_threads()
    if requested is not None:
        return requested
    if num_params is not None and num_params < SMALL_MODEL_PARAMS:
        return 1
    return None


def apply_threads(model: object) -> int:
    """Set torch's intra-op threads for `model` (an ``nn.Module``); returns the count in use."""
    import torch

    params = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else None
    threads = choose_threads(params)
    if threads is not None and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def threads_arg(value: str) -> str:
    """argparse type of ``--threads``: a positive int or ``auto``."""
    if value != "auto" and not (value.isdigit() and int(value) > 0):
        import argparse

        raise argparse.ArgumentTypeError(f"{value!r}: a positive number of threads, or 'auto'")
    return value


def set_requested(value: str | None) -> None:
    """Make ``--threads`` what every later backbone load sees (``VLPROMPT_THREADS``)."""
    if value is not None:
        os.environ[THREADS_ENV] = value


__all__ = ["THREADS_ENV", "apply_threads", "choose_threads", "requested_threads", "set_requested", "threads_arg"]
