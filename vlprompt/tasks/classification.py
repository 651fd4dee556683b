"""Classification: the protocols (all, few-shot, base-to-new) as a registry of split rules, and top-1 /
top-5 / per-class recall on each evaluation label space."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprompt.data.classification import ClassificationDataset, Item
from vlprompt.data.fewshot import SAMPLERS, few_shot_split, split_file_path
from vlprompt.data.protocols import base_new_classes, base_new_split, harmonic_mean
from vlprompt.data.webdataset_fewshot import wds_few_shot_split
from vlprompt.data.webdataset_reader import WdsDataset, WdsSplit
from vlprompt.data.world import get_dataset
from vlprompt.engine.evaluate import evaluate_method
from vlprompt.errors import VLPromptError
from vlprompt.methods.label_space import ClassLabels
from vlprompt.registry import Registry
from vlprompt.tasks.base import TASKS, Task, TaskPlan, run_folder

EvalItems = list[Item] | WdsSplit  # a test split: items, or a webdataset split streamed by the evaluation


@dataclass
class DatasetSection:
    name: str = "world_shapes"
    root: str | None = None  # None: the embedded world's data directory (or $VLPROMPT_DATA)


@dataclass
class ProtocolSection:
    name: str = "few-shot"  # few-shot | base-to-new | all
    shots: int = 16
    seed: int = 1
    sampler: str = "vlprompt"  # vlprompt | dassl (the CoOp-family repositories' draw: same seed, same images)


@dataclass
class EvalSection:
    split: str = "test"
    templates: str = "dataset"
    batch_size: int = 128


@dataclass
class Splits:
    """A protocol's result: training classes and items, validation items, named test sets."""

    classnames: list[str]
    train: list[Item]
    val: list[Item]
    evaluations: dict[str, tuple[list[str], EvalItems]]


Protocol = Callable[[ProtocolSection, ClassificationDataset | WdsDataset, EvalItems, Path], Splits]
PROTOCOLS: Registry[Protocol] = Registry("protocol")


def _few_shot_items(protocol: ProtocolSection, dataset: ClassificationDataset | WdsDataset, out_dir: Path):
    if isinstance(dataset, WdsDataset):  # extracts the K sampled images per class, streams the rest
        if protocol.sampler != "vlprompt":
            raise VLPromptError(f"protocol.sampler {protocol.sampler!r} is for split-file datasets; webdatasets use 'vlprompt'")
        return wds_few_shot_split(dataset, protocol.shots, protocol.seed, out_dir / "splits", out_dir / "wds-images")
    return few_shot_split(dataset, protocol.shots, protocol.seed, out_dir / "splits", sampler=protocol.sampler)


@PROTOCOLS.register("all")
def _all(protocol: ProtocolSection, dataset, test: EvalItems, out_dir: Path) -> Splits:
    if isinstance(dataset, WdsDataset):
        raise VLPromptError(
            f"protocol 'all' on webdataset {dataset.source} would extract every training image; "
            "use protocol few-shot (protocol.shots=K), or `vlprompt eval` for zero-shot"
        )
    return Splits(dataset.classnames, dataset.split("train"), dataset.splits.get("val", []),
                  {"all": (dataset.classnames, test)})


@PROTOCOLS.register("few-shot")
def _few_shot(protocol: ProtocolSection, dataset, test: EvalItems, out_dir: Path) -> Splits:
    train, val = _few_shot_items(protocol, dataset, out_dir)
    return Splits(dataset.classnames, train, val, {"all": (dataset.classnames, test)})


@PROTOCOLS.register("base-to-new")
def _base_to_new(protocol: ProtocolSection, dataset, test: EvalItems, out_dir: Path) -> Splits:
    """CoCoOp's protocol: K shots of the base half to train; base and new halves tested apart."""
    train, val = _few_shot_items(protocol, dataset, out_dir)
    base_train, _ = base_new_split(dataset.classnames, train)
    base_val, _ = base_new_split(dataset.classnames, val)
    if isinstance(test, WdsSplit):  # the halves as filtered streams, relabelled like base_new_split does
        base, new = base_new_classes(len(dataset.classnames))
        names = dataset.classnames
        evals = {"base": ([names[i] for i in base], test.subset(base)), "new": ([names[i] for i in new], test.subset(new))}
    else:
        base_test, new_test = base_new_split(dataset.classnames, test)
        evals = {"base": (base_test.classnames, base_test.items), "new": (new_test.classnames, new_test.items)}
    return Splits(base_train.classnames, base_train.items, base_val.items, evals)


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers a table shows: top-1, or base / new / HM for base-to-new."""
    if "hm" in metrics:
        return {"base": metrics["base"]["top1"], "new": metrics["new"]["top1"], "hm": metrics["hm"]}
    return {"top1": metrics["all"]["top1"]}


def check(config: Any) -> None:
    PROTOCOLS.get(config.protocol.name)
    if config.eval.templates != EvalSection.templates:
        where = "method.templates" if hasattr(config.method, "templates") else "`vlprompt eval --templates`"
        raise VLPromptError(
            f"eval.templates={config.eval.templates!r} is not used by an experiment run (the method's own config "
            f"decides its text: use {where}); remove it"
        )
    if config.protocol.shots < 1:
        raise VLPromptError(f"protocol.shots must be >= 1, got {config.protocol.shots}")
    if config.protocol.sampler not in SAMPLERS:
        raise VLPromptError(f"protocol.sampler {config.protocol.sampler!r} is not one of {list(SAMPLERS)}")


def plan(config: Any) -> TaskPlan:
    protocol: ProtocolSection = config.protocol
    rule = PROTOCOLS.get(protocol.name)
    dataset = get_dataset(config.dataset.name, config.dataset.root)
    # the dataset's own name: for folder:/csv:/wds: locations that is the folder or file name, not a path
    out_dir = run_folder(config, dataset.name, f"{protocol.name}-{protocol.shots}shot-seed{protocol.seed}")
    splits = rule(protocol, dataset, dataset.split(config.eval.split), out_dir)
    evaluations = {name: ClassLabels(tuple(names)) for name, (names, _) in splits.evaluations.items()}

    def evaluate(method, cache) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        for name, (_, items) in splits.evaluations.items():
            method.set_label_space(evaluations[name])
            metrics[name] = evaluate_method(method, method.backbone, items, cache=cache, batch_size=config.eval.batch_size)
        if "base" in metrics and "new" in metrics:
            metrics["hm"] = harmonic_mean(metrics["base"]["top1"], metrics["new"]["top1"])
        return metrics

    split_file = split_file_path(out_dir / "splits", dataset.name, protocol.shots, protocol.seed, "train", protocol.sampler)
    return TaskPlan(
        dataset_name=dataset.name, out_dir=out_dir, labels=ClassLabels(tuple(splits.classnames)),
        train=splits.train, val=splits.val, evaluations=evaluations, evaluate=evaluate,
        summary={"split": config.eval.split, "protocol": {"name": protocol.name, "shots": protocol.shots,
                                                           "seed": protocol.seed}},
        split_file=split_file if split_file.is_file() else None,
    )


TASKS.register("classification")(Task(
    name="classification", dataset_section=DatasetSection, protocol_section=ProtocolSection,
    eval_section=EvalSection, default_method="coop", plan=plan, check=check, headline=headline,
))
