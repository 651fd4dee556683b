"""Study: Tailor's composition of attribute prompts on world_colored_shapes (seed_systems_b.md, section 4).

Colour and shape prompts are trained on single-attribute labels derived from world_colored_shapes' train
images (16 per class; the colour x shape label is never used), then composed to classify the 100
combinations with no training on them: Tailor (mask + re-indexed positions), its ablations, plain
concatenation, and the product of the two attribute classifiers (not Tailor: a reference that needs no
composition). Then a 2-token connector trained on 10 combinations (16 shots each), against CoOp trained
on the same 10, CoOp on all 100 (16 shots) and zero-shot. Seeds 1-3 (shots and inits).

Run: PYTHONPATH=. python docs/results/seed_systems_b/study_tailor.py  (about 10 min on one core)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from vlprompt import api
from vlprompt.engine.features import features_and_labels
from vlprompt.methods import build_method
from vlprompt.prompts.handcrafted import text_classifier

EPOCHS = 20
SHOTS = 16
SEEDS = [1, 2, 3]


def shots(labels: torch.Tensor, classes: list[int], k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    picked = [torch.nonzero(labels == c).flatten() for c in classes]
    return torch.cat([p[torch.randperm(len(p), generator=g)[:k]] for p in picked])


def fit(method, feats: torch.Tensor, labels: torch.Tensor, seed: int, epochs: int = EPOCHS) -> float:
    torch.manual_seed(seed)
    groups = method.param_groups(0.01)
    optimizer = torch.optim.AdamW(groups, lr=0.01, weight_decay=0.0)
    steps = epochs * ((len(feats) + 31) // 32)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    start = time.perf_counter()
    method.train()
    for _ in range(epochs):
        order = torch.randperm(len(feats))
        for i in range(0, len(feats), 32):
            idx = order[i : i + 32]
            optimizer.zero_grad()
            method.train_step({"features": feats[idx], "labels": labels[idx]}, method, lambda loss: loss.backward())
            optimizer.step()
            schedule.step()
    method.eval()
    return time.perf_counter() - start


def acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return round(float((logits.argmax(-1) == labels).float().mean()) * 100, 2)


def main() -> None:
    torch.set_num_threads(1)
    backbone = api.load_backbone("vlprompt-tiny", "world", "cpu")
    dataset = api.get_dataset("world_colored_shapes")
    classes = list(dataset.classnames)
    train_f, train_l = features_and_labels(backbone, dataset.split("train"), progress=False)
    test_f, test_l = features_and_labels(backbone, dataset.split("test"), progress=False)
    zero = acc(test_f @ text_classifier(backbone, classes, [dataset.template]).t(), test_l)
    rows = []
    for seed in SEEDS:
        row = {"seed": seed, "zero_shot": zero}
        idx = shots(train_l, list(range(len(classes))), SHOTS, seed)
        feats, labels = train_f[idx], train_l[idx]
        tailor = build_method("tailor", backbone, classes, {"ctx_init": "a photo of a", "init_seed": seed})
        row["attribute_seconds"] = round(fit(tailor, feats, labels, seed), 1)
        with torch.no_grad():
            fa, fb = tailor.attribute_features()
            la, lb = test_f @ fa.t(), test_f @ fb.t()
            row["colour_acc"] = acc(la, tailor.label_a[test_l])
            row["shape_acc"] = acc(lb, tailor.label_b[test_l])
            scale = backbone.logit_scale
            product = (scale * la).log_softmax(-1)[:, tailor.label_a] + (scale * lb).log_softmax(-1)[:, tailor.label_b]
            row["product_of_attribute_classifiers"] = acc(product, test_l)
            state = {k: v.clone() for k, v in tailor.trainable_state().items()}
            for name, mask, reindex in [("tailor", True, True), ("mask_only", True, False), ("reindex_only", False, True),
                                        ("concatenation", False, False)]:
                config = {"ctx_init": "a photo of a", "mask": mask, "reindex": reindex}
                variant = build_method("tailor", backbone, classes, config)
                variant.load_trainable_state(state)
                row[f"composed_{name}"] = acc(test_f @ variant.class_features().t(), test_l)
        few = [c * 10 + (c + seed) % 10 for c in range(10)]  # 10 combinations: every colour and shape once
        idx_few = shots(train_l, few, SHOTS, seed)
        remap = {c: i for i, c in enumerate(few)}
        few_labels = torch.tensor([remap[int(y)] for y in train_l[idx_few]])
        connector = build_method("tailor", backbone, [classes[c] for c in few],
                                 {"ctx_init": "a photo of a", "n_connector": 2, "stage": "connector", "init_seed": seed})
        connector.load_trainable_state({**state, "connector": connector.connector.detach().clone()})
        row["connector_seconds"] = round(fit(connector, train_f[idx_few], few_labels, seed), 1)
        connector.set_label_space(classes)
        with torch.no_grad():
            row["composed_tailor_connector"] = acc(test_f @ connector.class_features().t(), test_l)
        coop_few = build_method("coop", backbone, [classes[c] for c in few], {"n_ctx": 4, "ctx_init": "a photo of a"})
        row["coop_10_combos_seconds"] = round(fit(coop_few, train_f[idx_few], few_labels, seed), 1)
        coop_few.set_label_space(classes)
        with torch.no_grad():
            row["coop_10_combos"] = acc(test_f @ coop_few.class_features().t(), test_l)
        coop = build_method("coop", backbone, classes, {"n_ctx": 4, "ctx_init": "a photo of a"})
        row["coop_100_combos_seconds"] = round(fit(coop, feats, labels, seed), 1)
        with torch.no_grad():
            row["coop_100_combos"] = acc(test_f @ coop.class_features().t(), test_l)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    Path(__file__).with_name("tailor.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
