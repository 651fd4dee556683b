"""Tasks as data: what an experiment of each task reads, how it splits it and how it scores a method.

A `Task` names its config sections (dataset, protocol, eval) and a planner. The planner turns a
loaded config into a `TaskPlan`: the label space the method trains on, training / validation items,
the label spaces it will be evaluated on, and an ``evaluate(method, cache)`` that returns the metrics.
The runner (`vlprompt.runner.run_experiment`) is the same for every task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.engine.run_folder import claim
from vlprompt.methods.label_space import LabelSpace
from vlprompt.registry import Registry


def run_folder(config: Any, dataset_name: str, run_name: str) -> Path:
    """``output_dir`` when given, else ``runs/<method>/<dataset>/<run_name>``; claimed by the run in
    progress (locked, and checked for an earlier run: `vlprompt.engine.run_folder`)."""
    return claim(config.output_dir or f"runs/{config.method_name}/{dataset_name}/{run_name}")


@dataclass
class BackboneSection:
    name: str = "vlprompt-tiny"
    pretrained: str | None = "world"
    device: str = "auto"


@dataclass
class TaskPlan:
    """One experiment's data, resolved: what to train on and how to evaluate."""

    dataset_name: str
    out_dir: Path  # the run's one output folder
    labels: LabelSpace
    train: Sequence[Any]
    val: Sequence[Any]
    evaluations: dict[str, LabelSpace]
    evaluate: Callable[..., dict[str, Any]]  # (method, cache) -> metrics
    summary: dict[str, Any] = field(default_factory=dict)  # extra result fields
    split_file: Path | None = None  # the few-shot split file the run trains on, if any
    # the task's training-image transform for a backbone (backbone -> transform; None: the backbone's own);
    # a factory because a task plans before the backbone is loaded
    train_transform: Callable | None = None
    train_overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields the task sets
    selector: Any = None  # an EpochSelector (keep the best validation epoch) or None (the last epoch)


@dataclass(frozen=True)
class Task:
    """A task: its config sections, its default method, its planner and its headline numbers."""

    name: str
    dataset_section: type
    protocol_section: type
    eval_section: type
    default_method: str
    plan: Callable[..., TaskPlan]  # config -> TaskPlan; reads the data, needs no backbone (a missing dataset fails first)
    check: Callable[[Any], None]  # config -> None; value checks run when the config is loaded
    headline: Callable[[dict[str, Any]], dict[str, float]]


TASKS: Registry[Task] = Registry("task")
