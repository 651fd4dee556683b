"""Study: soft prompt compression on the embedded world (docs/results/seed_systems_b.md, section 3).

For each world set: zero-shot top-1 of one template, of a template ensemble (CLIP's 80 ImageNet templates;
the world's 8 caption phrasings) and of the ensemble compressed into 4 soft tokens (no images), with the
text-encoding cost of each; then transfer: compressed on the first half of the class names, evaluated on
the other half (against the ensemble and the one template on that half). Seeds 1-3 (compression init).

Run: PYTHONPATH=. python docs/results/seed_systems_b/study_compress.py  (about 4 min on one core)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

from vlprompt import api
from vlprompt.engine.features import features_and_labels
from vlprompt.methods.compression import CompressConfig, compress, compression_target, ensemble_cost, prompt_cost
from vlprompt.prompts.handcrafted import text_classifier
from vlprompt.prompts.templates import get_templates

SETS = ["world_shapes", "world_textures", "world_colored_shapes"]
BANKS = ["imagenet80", "world_captions"]
SEEDS = [1, 2, 3]


def top1(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> float:
    return round(float(((features @ weights.t()).argmax(-1) == labels).float().mean()) * 100, 2)


def main() -> None:
    torch.set_num_threads(1)
    backbone = api.load_backbone("vlprompt-tiny", "world", "cpu")
    rows = []
    for name in SETS:
        dataset = api.get_dataset(name)
        classes = list(dataset.classnames)
        feats, labels = features_and_labels(backbone, dataset.split("test"), progress=False)
        half = len(classes) // 2
        new = labels >= half
        new_feats, new_labels = feats[new], labels[new] - half
        single = [dataset.template]
        row = {"dataset": name, "one_template": top1(feats, labels, text_classifier(backbone, classes, single)),
               "one_template_cost": ensemble_cost(backbone, classes, single),
               "one_template_new": top1(new_feats, new_labels, text_classifier(backbone, classes[half:], single))}
        for bank in BANKS:
            templates = get_templates(bank, dataset)
            target = compression_target(backbone, classes, templates=templates)
            row[f"{bank}_ensemble"] = top1(feats, labels, target)
            row[f"{bank}_cost"] = ensemble_cost(backbone, classes, templates)
            row[f"{bank}_ensemble_new"] = top1(new_feats, new_labels, target[half:])
            accs, new_accs, cosines, seconds = [], [], [], []
            for seed in SEEDS:
                config = CompressConfig(n_ctx=4, seed=seed)
                method, stats = compress(backbone, classes, target, config)
                with torch.no_grad():
                    accs.append(top1(feats, labels, method.class_features().float()))
                cosines.append(stats["cosine"])
                seconds.append(stats["seconds"])
                row["compressed_cost"] = prompt_cost(method)
                base_method, _ = compress(backbone, classes[:half], target[:half], config)
                base_method.set_classnames(classes[half:])
                with torch.no_grad():
                    new_accs.append(top1(new_feats, new_labels, base_method.class_features().float()))
            row[f"{bank}_compressed"] = accs
            row[f"{bank}_compressed_new"] = new_accs
            row[f"{bank}_cosine"] = [round(c, 4) for c in cosines]
            row[f"{bank}_seconds"] = seconds
            print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    out = Path(__file__).with_name("compress.json")
    out.write_text(json.dumps(rows, indent=2))
    for row in rows:
        for bank in BANKS:
            c, n = row[f"{bank}_compressed"], row[f"{bank}_compressed_new"]
            print(f"{row['dataset']} {bank}: one {row['one_template']} ens {row[f'{bank}_ensemble']} "
                  f"comp {statistics.mean(c):.2f}±{statistics.pstdev(c):.2f} | new: one {row['one_template_new']} "
                  f"ens {row[f'{bank}_ensemble_new']} comp {statistics.mean(n):.2f}±{statistics.pstdev(n):.2f}")


if __name__ == "__main__":
    main()
