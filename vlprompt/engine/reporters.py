"""Where per-epoch records go besides ``metrics.jsonl``: a plain ``out.log`` (always, when there is an
output folder) and the trackers named in ``train.report_to`` (``tensorboard``, ``wandb``; optional
packages, checked when the config is loaded). Every reporter is fed the very record that
``metrics.jsonl`` gets, so the three never disagree.

Scalars are the record's numbers flattened with ``/``: ``train/loss``, ``train/lr``, ``val/top1``...,
at step = epoch.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from vlprompt.errors import VLPromptError
from vlprompt.registry import Registry

LOG_FILE = "out.log"


class Reporter(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


REPORTERS: Registry[Callable[[Path, dict[str, Any]], Reporter]] = Registry("report_to tracker")
_PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"), "wandb": ("wandb", "pip install wandb")}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """Finite numbers of an epoch record: ``train/<key>`` for the epoch's own, ``val/<key>`` for evaluation."""
    flat: dict[str, float] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}/{key}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[prefix] = float(value)

    for key, value in record.items():
        if key != "epoch":
            walk(key if isinstance(value, dict) else f"train/{key}", value)
    return flat


def check_report_to(names: Sequence[str], where: str = "train") -> None:
    """Known tracker names, with their packages installed: one clear error otherwise (at config load)."""
    for name in names:
        if name not in _PACKAGES:
            raise VLPromptError(f"{where}: report_to {name!r} is not one of {sorted(_PACKAGES)}")
        package, install = _PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise VLPromptError(
                f"{where}: report_to {name} needs the {package} package, which is not installed ({install}, "
                f"or pip install 'vlprompt[{name}]')"
            )


class PlainLog:
    """``out.log``: one human-readable line per epoch (appended; a resumed run continues it)."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        self.path = folder / LOG_FILE
        folder.mkdir(parents=True, exist_ok=True)
        self._write(f"start {meta.get('method', '?')} epochs={meta.get('epochs', '?')} output={folder}")

    def _write(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    def log(self, record: dict[str, Any]) -> None:
        parts = [f"epoch {record.get('epoch')}"]
        parts += [f"{key.removeprefix('train/')} {value:.6g}" for key, value in scalars(record).items()]
        self._write("  ".join(parts))

    def close(self) -> None:
        self._write("end")


@REPORTERS.register("tensorboard")
class TensorBoard:
    """Event files under ``<output>/tensorboard`` (``tensorboard --logdir <output>``)."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.writer.add_scalar(key, value, global_step=int(record["epoch"]))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@REPORTERS.register("wandb")
class WandB:
    """A Weights & Biases run (project from ``$WANDB_PROJECT``, default "vlprompt"; offline with
    ``WANDB_MODE=offline``), files under ``<output>/wandb``."""

    def __init__(self, folder: Path, meta: dict[str, Any]) -> None:
        import wandb  # optional

        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "vlprompt"), dir=str(folder), config=meta, name=folder.name, reinit=True
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=int(record["epoch"]))

    def close(self) -> None:
        self.run.finish()


class Reporters:
    """``out.log`` plus the configured trackers; all get each epoch record."""

    def __init__(self, folder: Path | None, report_to: Sequence[str], meta: dict[str, Any]) -> None:
        self.reporters: list[Reporter] = []
        if folder is None:
            if report_to:
                raise VLPromptError(f"train.report_to {list(report_to)} needs an output_dir to write to")
            return
        check_report_to(report_to)
        self.reporters.append(PlainLog(folder, meta))
        self.reporters += [REPORTERS.get(name)(folder, meta) for name in report_to]

    def log(self, record: dict[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.log(record)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()
        self.reporters = []
