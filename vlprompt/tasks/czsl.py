"""Compositional zero-shot: train on the train pairs, score every candidate pair of val / test with the
reference protocol (closed and/or open world, with feasibility and a threshold searched on val).

Experiment YAML (``configs/czsl/*.yaml``; ``task: czsl`` comes from ``configs/czsl/datasets/``)::

    base: datasets/mit-states.yaml        # dataset section (+ published settings)
    backbone: {name: ViT-L-14, pretrained: openai}
    method: {name: csp, attr_dropout: 0.3}
    train: {optimizer: adam, lr: 5.0e-5, weight_decay: 1.0e-5, epochs: 20, batch_size: 128, ...}
    eval: {phases: [val, test], worlds: [closed, open], feasibility: glove, glove_file: ..., threshold: null}

Released rules by default: training images augmented as the released CSP/DFSP ``dataset.py``
(``protocol.augment``; methods on cached features train on ``protocol.augment_views`` augmented views),
the best closed-world validation epoch kept (``protocol.select: best_val`` by ``protocol.select_metric``;
``final`` keeps the last epoch), and the open world filtered by the released multiply rule
(``eval.feasibility_rule: multiply``; ``mask`` for -inf), recorded in every open-world result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.czsl.augment import czsl_train_transform
from vlprompt.czsl.data import CZSLDataset
from vlprompt.czsl.evaluate import EvalOptions, evaluate_phase, validation_loss
from vlprompt.czsl.feasibility import backbone_vectors, feasibility_scores, glove_vectors
from vlprompt.czsl.metrics import FEASIBILITY_RULES
from vlprompt.data.world import world_data_root
from vlprompt.engine.selection import EpochSelector
from vlprompt.errors import VLPromptError
from vlprompt.methods.label_space import PairLabels
from vlprompt.registry import Registry
from vlprompt.tasks.base import TASKS, Task, TaskPlan, run_folder

WORLD_CZSL = "world_czsl"  # the embedded world's CZSL set: found in the world data when no root is given
WORLDS = ("closed", "open")


@dataclass
class CZSLDatasetSection:
    name: str = "czsl"
    root: str | None = None  # folder with images/, the split dir and the metadata file
    split_dir: str = "compositional-split-natural"
    image_dir: str = "images"
    metadata: str | None = None
    prepare: str = ""  # how to get it (documentation only)
    note: str = ""


SELECT = ("best_val", "final")
SELECT_METRICS = ("AUC", "best_hm", "best_seen", "best_unseen", "attr_acc", "obj_acc", "loss")


@dataclass
class CZSLProtocolSection:
    name: str = "czsl"  # train on the train pairs, evaluate on val / test pairs
    seed: int = 1
    # training images augmented as the released dataset.py (flip, perspective, 5-degree rotation);
    # False: the evaluation view only
    augment: bool = True
    augment_views: int = 8  # cached augmented views for methods on cached features (when train.augment_views is 0)
    # best_val: keep the epoch with the best closed-world validation `select_metric` (the released DFSP);
    # final: the last epoch (the released CSP has no validation loop)
    select: str = "best_val"
    # AUC | best_hm | best_seen | best_unseen | attr_acc | obj_acc | loss (the validation loss, released
    # DFSP's best_loss on UT-Zappos and C-GQA; MIT-States uses best_unseen)
    select_metric: str = "AUC"


@dataclass
class CZSLEvalSection:
    phases: list[str] = field(default_factory=lambda: ["test"])
    worlds: list[str] = field(default_factory=lambda: ["closed"])  # closed | open
    feasibility: str = "backbone"  # open world: glove | backbone | none
    glove_file: str | None = None
    threshold: float | None = None  # None: searched on val (best AUC)
    # open world: multiply (the released Evaluator, score * (1[f >= th] + seen)) | mask (-inf)
    feasibility_rule: str = "multiply"
    batch_size: int = 128
    pair_chunk: int = 16384
    threshold_trials: int = 50


FEASIBILITY: Registry = Registry("feasibility source")


@FEASIBILITY.register("none")
def _no_feasibility(dataset: CZSLDataset, section: CZSLEvalSection, backbone: Backbone) -> None:
    return None


@FEASIBILITY.register("glove")
def _glove(dataset: CZSLDataset, section: CZSLEvalSection, backbone: Backbone) -> torch.Tensor:
    if not section.glove_file:
        raise VLPromptError("eval.feasibility=glove needs eval.glove_file=PATH (glove.6B.300d.txt)")
    attr_v, obj_v = glove_vectors(section.glove_file, dataset.attrs), glove_vectors(section.glove_file, dataset.objs)
    return feasibility_scores(attr_v, obj_v, dataset.train_pair_index, dataset.all_pair_index)


@FEASIBILITY.register("backbone")
def _backbone_feasibility(dataset: CZSLDataset, section: CZSLEvalSection, backbone: Backbone) -> torch.Tensor:
    attr_v, obj_v = backbone_vectors(backbone, dataset.attrs), backbone_vectors(backbone, dataset.objs)
    return feasibility_scores(attr_v, obj_v, dataset.train_pair_index, dataset.all_pair_index)


def dataset_root(section: CZSLDatasetSection) -> Path:
    """``dataset.root``; for the embedded world's set, the world data folder when none is given."""
    if section.root:
        return Path(section.root)
    if section.name == WORLD_CZSL:
        return world_data_root() / WORLD_CZSL
    raise VLPromptError(f"dataset {section.name}: no root given (dataset.root=PATH or --root PATH)")


def load_dataset(section: CZSLDatasetSection, open_world: bool = False) -> CZSLDataset:
    return CZSLDataset.load(dataset_root(section), section.split_dir, open_world, section.image_dir,
                            section.metadata, section.name)


def check(config: Any) -> None:
    check_eval(config.eval)
    protocol: CZSLProtocolSection = config.protocol
    if protocol.select not in SELECT:
        raise VLPromptError(f"protocol.select: {protocol.select!r} is not one of {list(SELECT)}")
    if protocol.select_metric not in SELECT_METRICS:
        raise VLPromptError(f"protocol.select_metric: {protocol.select_metric!r} is not one of {list(SELECT_METRICS)}")
    if protocol.augment_views < 1:
        raise VLPromptError(f"protocol.augment_views must be >= 1, got {protocol.augment_views}")


def check_eval(section: CZSLEvalSection) -> None:
    bad = [w for w in section.worlds if w not in WORLDS]
    if bad:
        raise VLPromptError(f"eval.worlds: {bad[0]!r} is not one of {list(WORLDS)}")
    FEASIBILITY.get(section.feasibility)
    if section.feasibility_rule not in FEASIBILITY_RULES:
        raise VLPromptError(f"eval.feasibility_rule: {section.feasibility_rule!r} is not one of {list(FEASIBILITY_RULES)}")


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """AUC and best HM of the closed-world test phase (or the first phase reported)."""
    key = "closed/test" if "closed/test" in metrics else next(iter(metrics))
    return {"auc": metrics[key]["AUC"], "hm": metrics[key]["best_hm"]}


def plan(config: Any) -> TaskPlan:
    ev: CZSLEvalSection = config.eval
    check_eval(ev)
    closed = load_dataset(config.dataset)
    out_dir = run_folder(config, closed.name, f"czsl-seed{config.train.seed}")
    labels = PairLabels.create(closed.attrs, closed.objs, closed.train_pair_index)
    options = EvalOptions(batch_size=ev.batch_size, pair_chunk=ev.pair_chunk, threshold_trials=ev.threshold_trials,
                          feasibility_rule=ev.feasibility_rule)
    protocol: CZSLProtocolSection = config.protocol

    def evaluate(method, cache) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for world in ev.worlds:
            ds = closed if world == "closed" else load_dataset(config.dataset, open_world=True)
            feas = FEASIBILITY.get(ev.feasibility)(ds, ev, method.backbone) if world == "open" else None
            threshold = ev.threshold
            if feas is not None and threshold is None:
                val = evaluate_phase(method, ds, "val", options, feas, cache=cache, search_threshold=True)
                threshold = val["threshold"]
                results[f"{world}/val"] = val
            for phase in ev.phases:
                if f"{world}/{phase}" not in results:
                    results[f"{world}/{phase}"] = evaluate_phase(method, ds, phase, options, feas, threshold, cache=cache)
        return results

    def select_score(method, cache) -> float:  # higher is better: the closed-world validation metric
        if not closed.items["val"]:
            raise VLPromptError(f"{closed.name}: protocol.select best_val needs val images; use protocol.select: final")
        if protocol.select_metric == "loss":
            return -validation_loss(method, closed, "val", labels, options, cache=cache)
        return evaluate_phase(method, closed, "val", options, cache=cache)[protocol.select_metric]

    selector = EpochSelector(protocol.select_metric, select_score) if protocol.select == "best_val" else None
    overrides = {"augment_views": protocol.augment_views} if protocol.augment and not config.train.augment_views else {}
    rules = {"augment": protocol.augment, "select": protocol.select,
             "select_metric": protocol.select_metric if selector else None, "feasibility_rule": ev.feasibility_rule}
    return TaskPlan(
        dataset_name=closed.name, out_dir=out_dir, labels=labels, train=closed.items["train"], val=[],
        evaluations={}, evaluate=evaluate,
        summary={"seed": config.train.seed, "dataset_summary": closed.summary(), "czsl_rules": rules},
        train_transform=czsl_train_transform if protocol.augment else (lambda backbone: backbone.eval_transform),
        train_overrides=overrides, selector=selector,
    )


TASKS.register("czsl")(Task(
    name="czsl", dataset_section=CZSLDatasetSection, protocol_section=CZSLProtocolSection,
    eval_section=CZSLEvalSection, default_method="zero-shot", plan=plan, check=check, headline=headline,
))
