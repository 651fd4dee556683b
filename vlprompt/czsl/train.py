"""CZSL experiments: dataset + backbone + pair method, trained with the generic `Trainer`, then
evaluated with the reference protocol (closed and/or open world).

Experiment YAML (``configs/czsl/*.yaml``)::

    base: datasets/mit-states.yaml        # dataset section (+ published settings)
    backbone: {name: ViT-L-14, pretrained: openai}
    method: {name: csp, attr_dropout: 0.3}
    train: {optimizer: adam, lr: 5.0e-5, weight_decay: 1.0e-5, epochs: 20, batch_size: 128, ...}
    eval: {phases: [val, test], worlds: [closed, open], feasibility: glove, glove_file: ..., threshold: null}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlprompt.czsl.data import CZSLDataset
from vlprompt.czsl.evaluate import EvalOptions, evaluate_phase
from vlprompt.czsl.methods import build_czsl_method
from vlprompt.engine.optim import OPTIMIZERS, SCHEDULES
from vlprompt.errors import VLPromptError

# CSP/DFSP train with Adam (L2 weight decay, not AdamW) and DFSP halves the lr every 3 epochs.
if "adam" not in OPTIMIZERS:

    @OPTIMIZERS.register("adam")
    def _adam(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)

if "step3" not in SCHEDULES:

    @SCHEDULES.register("step3")
    def _step3(base_lr: float, t: float, length: int) -> float:
        """StepLR(step_size=3, gamma=0.5), DFSP's schedule."""
        return base_lr * 0.5 ** math.floor(t / 3)


@dataclass
class CZSLDatasetSection:
    name: str = "czsl"
    root: str | None = None  # folder with images/, the split dir and the metadata file
    split_dir: str = "compositional-split-natural"
    image_dir: str = "images"
    metadata: str | None = None
    prepare: str = ""  # how to get it (documentation only)
    note: str = ""


@dataclass
class CZSLEvalSection:
    phases: list[str] = field(default_factory=lambda: ["test"])
    worlds: list[str] = field(default_factory=lambda: ["closed"])  # closed | open
    feasibility: str = "backbone"  # open world: glove | backbone | none
    glove_file: str | None = None
    threshold: float | None = None  # None: searched on val (best AUC)
    legacy_feasibility: bool = False
    batch_size: int = 128
    pair_chunk: int = 16384
    threshold_trials: int = 50


def _section(cls, values: dict | None, where: str):
    from vlprompt.config import dataclass_from_dict

    return dataclass_from_dict(cls, values or {}, where)


def load_czsl_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    from vlprompt.config import apply_overrides, load_yaml

    data = load_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    unknown = set(data) - {"dataset", "backbone", "method", "train", "eval", "published", "task"}
    if unknown:
        raise VLPromptError(f"czsl config: unknown section(s) {sorted(unknown)} "
                            "(valid: dataset, backbone, method, train, eval, published)")
    return data


def load_dataset(section: CZSLDatasetSection, open_world: bool = False, root: str | None = None) -> CZSLDataset:
    where = root or section.root
    if not where:
        raise VLPromptError(f"dataset {section.name}: no root given (dataset.root=PATH)")
    return CZSLDataset.load(where, section.split_dir, open_world, section.image_dir, section.metadata, section.name)


def feasibility_for(dataset: CZSLDataset, section: CZSLEvalSection, backbone) -> torch.Tensor | None:
    from vlprompt.czsl.feasibility import backbone_vectors, feasibility_scores, glove_vectors

    if section.feasibility == "none":
        return None
    if section.feasibility == "glove":
        if not section.glove_file:
            raise VLPromptError("eval.feasibility=glove needs eval.glove_file=PATH (glove.6B.300d.txt)")
        attr_v, obj_v = glove_vectors(section.glove_file, dataset.attrs), glove_vectors(section.glove_file, dataset.objs)
    elif section.feasibility == "backbone":
        attr_v, obj_v = backbone_vectors(backbone, dataset.attrs), backbone_vectors(backbone, dataset.objs)
    else:
        raise VLPromptError(f"eval.feasibility {section.feasibility!r} is not one of ['glove', 'backbone', 'none']")
    return feasibility_scores(attr_v, obj_v, dataset.train_pair_index, dataset.all_pair_index)


def run_czsl(config: dict[str, Any], root: str | None = None, output_dir: str | None = None, train: bool = True,
             cache=None, backbone=None, prompt: str | None = None) -> dict[str, Any]:
    """Train (unless the method has nothing to train or `train` is False) and evaluate."""
    from vlprompt.backbones import create_backbone
    from vlprompt.engine.trainer import TrainConfig, Trainer, seed_everything

    ds_section = _section(CZSLDatasetSection, config.get("dataset"), "dataset")
    ev = _section(CZSLEvalSection, config.get("eval"), "eval")
    method_cfg = dict(config.get("method") or {"name": "zero-shot"})
    method_name = method_cfg.pop("name", "zero-shot")
    train_cfg = TrainConfig.from_dict(dict(config.get("train") or {}), where="train")
    if output_dir:
        train_cfg.output_dir = output_dir
    bb = config.get("backbone") or {}
    if backbone is None:
        pretrained = bb.get("pretrained")
        backbone = create_backbone(bb.get("name", "vlprompt-tiny"), None if pretrained in (None, "none") else pretrained,
                                   device=bb.get("device", "cpu"))
    closed = load_dataset(ds_section, open_world=False, root=root)
    seed_everything(train_cfg.seed)
    method = build_czsl_method(method_name, backbone, closed.attrs, closed.objs, closed.train_pair_index, method_cfg)
    out: dict[str, Any] = {"method": method_name, "dataset": ds_section.name, "seed": train_cfg.seed,
                           "dataset_summary": closed.summary()}
    trainable = [p for p in method.parameters() if p.requires_grad]
    if prompt:
        state = torch.load(prompt, map_location="cpu", weights_only=True)
        method.load_trainable_state(state.get("trainable", state))
    elif train and trainable:
        trainer = Trainer(method, train_cfg, cache=cache)
        fit = trainer.fit(closed.items["train"])
        out["train"] = fit["train"]
        out["train_seconds"] = fit["seconds"]
    options = EvalOptions(batch_size=ev.batch_size, pair_chunk=ev.pair_chunk, threshold_trials=ev.threshold_trials,
                          legacy_feasibility=ev.legacy_feasibility)
    method.to(backbone.device)
    results: dict[str, Any] = {}
    for world in ev.worlds:
        if world not in ("closed", "open"):
            raise VLPromptError(f"eval.worlds: {world!r} is not closed or open")
        ds = closed if world == "closed" else load_dataset(ds_section, open_world=True, root=root)
        feas = feasibility_for(ds, ev, backbone) if world == "open" else None
        threshold = ev.threshold
        if feas is not None and threshold is None:
            val = evaluate_phase(method, ds, "val", options, feas, cache=cache, search_threshold=True)
            threshold = val["threshold"]
            results[f"{world}/val"] = val
        for phase in ev.phases:
            if f"{world}/{phase}" in results:
                continue
            results[f"{world}/{phase}"] = evaluate_phase(method, ds, phase, options, feas, threshold, cache=cache)
    out["results"] = results
    if output_dir:
        from vlprompt.paths import atomic_path

        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(output_dir) / "czsl_results.json") as tmp:
            tmp.write_text(json.dumps(out, indent=2, default=float))
        torch.save({"method": method_name, "trainable": {k: v.cpu() for k, v in method.trainable_state().items()},
                    "config": config, "attrs": closed.attrs, "objs": closed.objs},
                   Path(output_dir) / "czsl_prompt.pt")
    return out


__all__ = ["run_czsl", "load_czsl_config", "CZSLDatasetSection", "CZSLEvalSection", "asdict"]
