"""The one experiment runner, for every task: plan the data, build (or load) the method, fit it,
evaluate it, save its prompt and a result JSON into the run's folder.

It sits above `vlprompt.config` (it runs a loaded `ExperimentConfig`), which itself reads the task
registry in `vlprompt.tasks`; so the runner is a top-level module, not part of the tasks package.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

from vlprompt.backbones import Backbone, load_backbone
from vlprompt.config import ExperimentConfig
from vlprompt.devices import check_device_available
from vlprompt.engine.cache import FeatureCache
from vlprompt.engine.fit import fit_method
from vlprompt.engine.logging import write_json
from vlprompt.engine.run_folder import owning
from vlprompt.engine.trainer import seed_everything
from vlprompt.methods.base import MethodContext, PromptMethod, build_method
from vlprompt.tasks.base import TASKS, TaskPlan
from vlprompt.threads import apply_threads
from vlprompt.zoo.checkpoint import load_prompt, save_prompt


def _method_for(config: ExperimentConfig, plan: TaskPlan, backbone: Backbone, prompt: str | Path | None) -> PromptMethod:
    if prompt is not None:  # a trained prompt: evaluated as it is, on this run's labels
        method = load_prompt(prompt, backbone)
        method.set_label_space(plan.labels)
        return method
    method_config = copy.deepcopy(config.method)
    method_config.resolve(MethodContext(plan.labels, plan.evaluations))
    seed_everything(config.train.seed)
    return build_method(config.method_name, backbone, plan.labels, method_config)


def run_experiment(
    config: ExperimentConfig,
    resume: bool = False,
    backbone: Backbone | None = None,
    *,
    train: bool = True,
    prompt: str | Path | None = None,
    cache: FeatureCache | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (or fit) one method under one task and protocol, evaluate it, save the prompt and
    ``experiment.json`` in the run's folder (``output_dir``, or ``runs/<method>/<dataset>/<run>``).

    `train=False` evaluates the method as built (zero-shot); `prompt` evaluates a saved prompt. The
    run locks its folder; a folder holding an earlier run is refused unless `resume` (continue it) or
    `overwrite` (replace it).
    """
    with owning(resume=resume, overwrite=overwrite):
        return _run(config, resume, backbone, train, prompt, cache)


def _run(config: ExperimentConfig, resume: bool, backbone: Backbone | None, train: bool, prompt: str | Path | None,
         cache: FeatureCache | None) -> dict[str, Any]:
    started = time.perf_counter()
    for device, where in ((config.train.device, "train.device"), (config.backbone.device, "backbone.device")):
        if device != "auto":  # a missing GPU is one line before any folder or model is made
            check_device_available(device, where)
    task = TASKS.get(config.task)
    plan = task.plan(config)  # the data first: a missing dataset fails before a backbone download
    backbone = backbone or load_backbone(config.backbone.name, config.backbone.pretrained, config.backbone.device)
    threads = apply_threads(backbone)
    method = _method_for(config, plan, backbone, prompt)
    train_config = dataclasses.replace(config.train, output_dir=str(plan.out_dir), **plan.train_overrides)
    cache = cache or FeatureCache(num_workers=train_config.num_workers, progress=train_config.progress)
    training: dict[str, Any] = {}
    if train and prompt is None:
        training = fit_method(method, plan.train, plan.val, train_config, cache, resume=resume,
                              train_transform=plan.train_transform(backbone) if plan.train_transform else None,
                              selector=plan.selector)
    method.to(backbone.device)
    metrics = plan.evaluate(method, cache)
    method.set_label_space(plan.labels)  # the prompt records the labels it was trained on

    loss_info = method.result_metadata()
    result = {
        "task": config.task,
        "dataset": plan.dataset_name,
        "method": method.name,
        "backbone": backbone.identity.to_dict(),
        **plan.summary,
        "metrics": metrics,
        "train_classnames": list(method.classnames),
        **loss_info,
        "num_train_items": len(plan.train),
        "training": {k: v for k, v in training.items() if k not in ("config", "backbone")},
        "config": config.to_dict(),
        "seconds": round(time.perf_counter() - started, 3),
        "threads": threads,
        "output_dir": str(plan.out_dir),
    }
    if method.trainable_state() and prompt is None:
        protocol = dataclasses.asdict(config.protocol)
        training_summary = {
            "dataset": plan.dataset_name,
            "protocol": protocol.pop("name"),
            **protocol,
            "num_train_items": len(plan.train),
            "loss_classnames": loss_info.get("loss_classnames", list(method.classnames)),
            "split_file_sha256": hashlib.sha256(plan.split_file.read_bytes()).hexdigest() if plan.split_file else None,
        }
        result["prompt"] = str(save_prompt(plan.out_dir / "prompt", method, training=training_summary, metrics=metrics))
    write_json(plan.out_dir / "experiment.json", result)
    return result


def headline(metrics: dict[str, Any], task: str = "classification") -> dict[str, float]:
    """The numbers a table shows (top-1, base / new / HM, or CZSL AUC / HM)."""
    return TASKS.get(task).headline(metrics)


def format_experiment(result: dict[str, Any]) -> str:
    numbers = "  ".join(f"{k} {v:.2f}" for k, v in headline(result["metrics"], result.get("task", "classification")).items())
    protocol = (result.get("protocol") or {}).get("name", result.get("task"))
    return f"{result['method']} on {result['dataset']} ({protocol}): {numbers}  [{result['seconds']:.1f}s]"
