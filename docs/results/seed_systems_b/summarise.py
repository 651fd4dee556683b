"""Markdown tables of the three studies' JSON files (compress.json, tailor.json, persoma.json)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent


def ms(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def compress() -> None:
    rows = json.loads((HERE / "compress.json").read_text())
    print("| dataset | one template | imagenet80 ensemble | imagenet80 -> 4 tokens | world_captions ensemble | "
          "world_captions -> 4 tokens |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['one_template']:.2f} | {r['imagenet80_ensemble']:.2f} | {ms(r['imagenet80_compressed'])} "
              f"| {r['world_captions_ensemble']:.2f} | {ms(r['world_captions_compressed'])} |")
    print("\nTransfer: compressed on the first half of the class names, top-1 on the other half's test images\n")
    print("| dataset | one template | imagenet80 ensemble | imagenet80 -> 4 tokens (base names) | world_captions ensemble "
          "| world_captions -> 4 tokens (base names) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dataset']} | {r['one_template_new']:.2f} | {r['imagenet80_ensemble_new']:.2f} | "
              f"{ms(r['imagenet80_compressed_new'])} | {r['world_captions_ensemble_new']:.2f} | "
              f"{ms(r['world_captions_compressed_new'])} |")
    print("\nText-encoding cost of the classifier (passes x positions run through the text tower)\n")
    print("| dataset | one template | imagenet80 ensemble | world_captions ensemble | compressed (4 tokens) | "
          "compression time, s (imagenet80 / captions) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        c = lambda k, r=r: f"{r[k]['passes']} / {r[k]['positions']}"  # noqa: E731
        print(f"| {r['dataset']} | {c('one_template_cost')} | {c('imagenet80_cost')} | {c('world_captions_cost')} | "
              f"{c('compressed_cost')} | {statistics.mean(r['imagenet80_seconds']):.1f} / "
              f"{statistics.mean(r['world_captions_seconds']):.1f} |")


def tailor() -> None:
    path = HERE / "tailor.json"
    if not path.exists():
        return
    rows = json.loads(path.read_text())
    keys = [("zero_shot", "zero-shot (one template)"), ("colour_acc", "colour prompt alone, 10 colours"),
            ("shape_acc", "shape prompt alone, 10 shapes"),
            ("composed_concatenation", "composed: plain concatenation"), ("composed_mask_only", "composed: mask only"),
            ("composed_reindex_only", "composed: re-indexed positions only"),
            ("composed_tailor", "composed: Tailor (mask + re-indexed positions)"),
            ("composed_tailor_connector", "Tailor + 2-token connector trained on 10 combinations"),
            ("coop_10_combos", "CoOp trained on the same 10 combinations"),
            ("product_of_attribute_classifiers", "reference: p(colour) x p(shape), the two prompts apart"),
            ("coop_100_combos", "CoOp trained on all 100 combinations (16 shots)")]
    print(f"\n| world_colored_shapes, 100 classes ({len(rows)} seeds) | top-1 |\n|---|---|")
    for key, label in keys:
        print(f"| {label} | {ms([r[key] for r in rows])} |")


def persoma(name: str = "persoma.json") -> None:
    path = HERE / name
    if not path.exists():
        return
    runs = json.loads(path.read_text())
    print(f"\n{name}:")
    styles = list(runs[0]["styles"])
    print(f"\n| style ({len(runs)} seeds x 4 users) | zero-shot | shared context (no examples) | adapter (5 examples, "
          "no gradient) | CoOp per user (2 shots x 10) | s / user: adapter | s / user: CoOp |")
    print("|---|---|---|---|---|---|---|")
    for s in styles:
        v = lambda k, s=s: [r["styles"][s][k] for r in runs]  # noqa: E731
        print(f"| {s} | {ms(v('zero_shot'))} | {ms(v('shared_context'))} | {ms(v('adapter'))} | {ms(v('coop_per_user'))} "
              f"| {statistics.mean(v('adapter_seconds')):.3f} | {statistics.mean(v('coop_seconds')):.2f} |")
    print(f"\nadapter training: {statistics.mean(r['adapter_train_seconds'] for r in runs):.0f} s per seed")


if __name__ == "__main__":
    compress()
    tailor()
    persoma()
    persoma("persoma_random32.json")
