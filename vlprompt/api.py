"""The public Python API: load a backbone, get a dataset, train and evaluate a method, save a prompt.

The CLI is a thin layer over these functions.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from vlprompt.backbones import Backbone, create_backbone
from vlprompt.config import ExperimentConfig
from vlprompt.data import ClassificationDataset, Item, load_dataset
from vlprompt.data.registry import DATA_ENV
from vlprompt.data.webdataset_reader import WdsDataset, WdsSplit
from vlprompt.engine.logging import write_json
from vlprompt.errors import VLPromptError
from vlprompt.paths import cache_dir

WORLD_PREFIX = "world_"
EvalItems = list[Item] | WdsSplit  # a test split: items, or a webdataset split streamed by the evaluation


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_backbone(name: str = "vlprompt-tiny", pretrained: str | None = "world", device: str = "auto") -> Backbone:
    """A frozen backbone; ``pretrained`` None/'none' means random weights."""
    if pretrained in (None, "", "none", "None"):
        pretrained = None
    return create_backbone(name, pretrained, device=resolve_device(device))


def world_data_root(root: str | Path | None = None) -> Path:
    """The embedded world's datasets, written on first use (idempotent)."""
    from vlprompt.embedded.export import write_world_datasets

    root = Path(root) if root else cache_dir("world-data")
    write_world_datasets(root)
    return root


def get_dataset(name: str, root: str | Path | None = None) -> ClassificationDataset | WdsDataset:
    """A dataset by name (``folder:``, ``csv:``, ``wds:`` prefixes included); embedded world datasets are
    generated when no root is given. ``wds:<folder>`` gives a `WdsDataset`, whose splits are streamed."""
    if root is None and not os.environ.get(DATA_ENV) and name.startswith(WORLD_PREFIX):
        root = world_data_root()
    return load_dataset(name, root)


def evaluate(
    datasets: list[str],
    root: str | None = None,
    backbone: str = "vlprompt-tiny",
    pretrained: str | None = "world",
    device: str = "auto",
    split: str = "test",
    templates: str = "dataset",
    prompt: str | None = None,
    batch_size: int = 128,
    num_workers: int = 0,
) -> list[dict[str, Any]]:
    """Zero-shot (or trained-prompt) results, one JSON-able dict per dataset."""
    from vlprompt.engine.zero_shot import evaluate_zero_shot

    model = load_backbone(backbone, pretrained, device)
    results = []
    for name in datasets:
        dataset = get_dataset(name, root)
        if prompt is None:
            results.append(
                evaluate_zero_shot(
                    model, dataset, split=split, templates=templates, batch_size=batch_size, num_workers=num_workers
                )
            )
        else:
            results.append(evaluate_prompt(prompt, model, dataset, split=split, batch_size=batch_size))
    return results


def evaluate_prompt(
    prompt: str | Path,
    backbone: Backbone,
    dataset: ClassificationDataset | WdsDataset,
    split: str = "test",
    batch_size: int = 128,
) -> dict[str, Any]:
    """A saved prompt evaluated on a dataset's split (its class names replace the trained ones)."""
    import time

    from vlprompt.engine.evaluate import evaluate_method
    from vlprompt.zoo import load_prompt

    start = time.perf_counter()
    method = load_prompt(prompt, backbone, classnames=dataset.classnames)
    metrics = evaluate_method(method, backbone, dataset.split(split), batch_size=batch_size)
    return {
        "dataset": dataset.name,
        "split": split,
        "backbone": backbone.identity.to_dict(),
        "method": method.name,
        "prompt": str(prompt),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _protocol_items(
    config: ExperimentConfig, dataset: ClassificationDataset | WdsDataset, out_dir: Path
) -> tuple[list[str], list[Item], list[Item], dict[str, tuple[list[str], EvalItems]]]:
    """(train class names, train items, val items, {eval name: (class names, test items)}).

    On a ``wds:`` dataset the few-shot images are extracted under ``<out_dir>/wds-images`` and the
    test split stays a stream (`WdsSplit`), which the evaluation encodes as it reads it.
    """
    from vlprompt.data.fewshot import few_shot_split
    from vlprompt.data.protocols import base_new_classes, base_new_split
    from vlprompt.data.webdataset_fewshot import wds_few_shot_split

    protocol = config.protocol
    streamed = isinstance(dataset, WdsDataset)
    test = dataset.split(config.eval.split)
    if protocol.name == "all" and streamed:
        raise VLPromptError(
            f"protocol 'all' on webdataset {dataset.source} would extract every training image; "
            "use protocol few-shot (protocol.shots=K), or `vlprompt eval` for zero-shot"
        )
    if protocol.name == "all":
        train = dataset.split("train")
        val = dataset.splits.get("val", [])
    elif protocol.name in ("few-shot", "base-to-new") and streamed:
        train, val = wds_few_shot_split(dataset, protocol.shots, protocol.seed, out_dir / "splits", out_dir / "wds-images")
    elif protocol.name in ("few-shot", "base-to-new"):
        train, val = few_shot_split(dataset, protocol.shots, protocol.seed, out_dir / "splits")
    else:
        raise VLPromptError(f"unknown protocol {protocol.name!r}. Valid: all, few-shot, base-to-new")
    if protocol.name != "base-to-new":
        return dataset.classnames, train, val, {"all": (dataset.classnames, test)}
    base_train, _ = base_new_split(dataset.classnames, train)
    base_val, _ = base_new_split(dataset.classnames, val)
    if isinstance(test, WdsSplit):  # the halves as filtered streams, relabelled like base_new_split does
        base, new = base_new_classes(len(dataset.classnames))
        names = dataset.classnames
        evals = {"base": ([names[i] for i in base], test.subset(base)), "new": ([names[i] for i in new], test.subset(new))}
        return base_train.classnames, base_train.items, base_val.items, evals
    base_test, new_test = base_new_split(dataset.classnames, test)
    evals = {"base": (base_test.classnames, base_test.items), "new": (new_test.classnames, new_test.items)}
    return base_train.classnames, base_train.items, base_val.items, evals


def run_experiment(
    config: ExperimentConfig, resume: bool = False, backbone: Backbone | None = None
) -> dict[str, Any]:
    """Train (or fit) one method under one protocol, evaluate it, save the prompt and a result JSON."""
    from vlprompt.data.protocols import harmonic_mean
    from vlprompt.engine.cache import FeatureCache
    from vlprompt.engine.evaluate import evaluate_method
    from vlprompt.engine.trainer import TrainConfig, Trainer, seed_everything
    from vlprompt.methods import build_method
    from vlprompt.zoo import save_prompt

    started = time.perf_counter()
    method_cfg = dict(config.method)
    method_name = method_cfg.pop("name")
    backbone = backbone or load_backbone(config.backbone.name, config.backbone.pretrained, config.backbone.device)
    dataset = get_dataset(config.dataset.name, config.dataset.root)
    # the dataset's own name: for folder:/csv:/wds: locations that is the folder or file name, not a path
    out_dir = Path(config.output_dir or f"runs/{method_name}/{dataset.name}/{config.protocol.name}"
                   f"-{config.protocol.shots}shot-seed{config.protocol.seed}")
    classnames, train, val, evals = _protocol_items(config, dataset, out_dir)

    train_cfg = TrainConfig.from_dict({"seed": config.protocol.seed, "output_dir": str(out_dir), **config.train})
    if method_cfg.get("virtual_classes") == "new":  # LASP-V: the new half's names, no images, text loss only
        if "new" not in evals:
            raise VLPromptError("method.virtual_classes: new needs protocol base-to-new (it names the new classes)")
        method_cfg["virtual_classes"] = list(evals["new"][0])
    seed_everything(train_cfg.seed)
    method = build_method(method_name, backbone, classnames, method_cfg)
    cache = FeatureCache(num_workers=train_cfg.num_workers, progress=train_cfg.progress)
    training: dict[str, Any] = {}
    if method_name == "linear-probe":
        feats = cache.get(backbone, train, backbone.eval_transform)[0]
        val_feats = cache.get(backbone, val, backbone.eval_transform)[0] if val else None
        labels = torch.tensor([i.label for i in train])
        val_labels = torch.tensor([i.label for i in val]) if val else None
        training = method.fit(feats, labels, val_feats, val_labels)
    elif any(p.requires_grad for p in method.parameters()):
        training = Trainer(method, train_cfg, cache=cache).fit(train, val or None, resume=resume)

    metrics: dict[str, Any] = {}
    for name, (eval_classes, items) in evals.items():
        if eval_classes != method.classnames:
            method.set_classnames(eval_classes)
        metrics[name] = evaluate_method(method, backbone, items, cache=cache, batch_size=config.eval.batch_size)
    if "base" in metrics:
        metrics["hm"] = harmonic_mean(metrics["base"]["top1"], metrics["new"]["top1"])
    if method.classnames != classnames:
        method.set_classnames(classnames)

    result = {
        "dataset": dataset.name,
        "split": config.eval.split,
        "method": method_name,
        "backbone": backbone.identity.to_dict(),
        "protocol": asdict(config.protocol),
        "metrics": metrics,
        "train_classnames": classnames,
        # every class name the training loss saw (LASP's text loss may add virtual classes)
        "loss_classnames": list(getattr(method, "text_loss_classnames", classnames)),
        "virtual_classnames": list(getattr(method, "virtual_classnames", [])),
        "num_train_items": len(train),
        "training": {k: v for k, v in training.items() if k not in ("config", "backbone")},
        "config": config.to_dict(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if method.trainable_state():
        training_summary = {
            "dataset": dataset.name,
            "protocol": config.protocol.name,
            "shots": config.protocol.shots,
            "seed": config.protocol.seed,
            "num_train_items": len(train),
            "loss_classnames": result["loss_classnames"],
            "split_file_sha256": _split_file_hash(out_dir, dataset.name, config),
        }
        result["prompt"] = str(save_prompt(out_dir / "prompt", method, training=training_summary, metrics=metrics))
    write_json(out_dir / "experiment.json", result)
    return result


def _split_file_hash(out_dir: Path, dataset: str, config: ExperimentConfig) -> str | None:
    """sha256 of the few-shot split file the run trained on (None when it used the full split)."""
    import hashlib

    from vlprompt.data.fewshot import split_file_path

    path = split_file_path(out_dir / "splits", dataset, config.protocol.shots, config.protocol.seed, "train")
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers a table shows: top-1, or base / new / HM for base-to-new."""
    if "hm" in metrics:
        return {"base": metrics["base"]["top1"], "new": metrics["new"]["top1"], "hm": metrics["hm"]}
    return {"top1": metrics["all"]["top1"]}


def format_experiment(result: dict[str, Any]) -> str:
    numbers = "  ".join(f"{k} {v:.2f}" for k, v in headline(result["metrics"]).items())
    return f"{result['method']} on {result['dataset']} ({result['protocol']['name']}): {numbers}  [{result['seconds']:.1f}s]"
