"""The main job: on the embedded world, zero-shot CLIP vs learned prompts, as a table.

Runs anywhere with no network: the tiny CLIP ships with the package (or is re-trained by its
recipe), the datasets are generated on first use, and image features are cached for later runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from vlprompt import api
from vlprompt.config import ExperimentConfig
from vlprompt.engine.logging import write_json
from vlprompt.engine.zero_shot import evaluate_zero_shot

WORLD_DATASETS = ("world_shapes", "world_textures", "world_colored_shapes")
DEMO_CONFIG = "experiments/world_coop.yaml"


def _table(rows: list[dict[str, Any]]) -> str:
    header = f"{'dataset':<22}{'classes':>8}{'zero-shot':>11}{'CoOp 16-shot':>14}{'gain':>8}{'seconds':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['dataset']:<22}{row['classes']:>8}{row['zero_shot']:>11.2f}{row['coop']:>14.2f}"
            f"{row['coop'] - row['zero_shot']:>+8.2f}{row['seconds']:>9.1f}"
        )
    return "\n".join(lines)


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| dataset | classes | zero-shot top-1 | CoOp 16-shot top-1 | gain |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['dataset']} | {row['classes']} | {row['zero_shot']:.2f} | {row['coop']:.2f} "
            f"| {row['coop'] - row['zero_shot']:+.2f} |"
        )
    return "\n".join(lines) + "\n"


def run_demo(data_root: str | None = None, out_dir: Path = Path("runs/demo"), quick: bool = False) -> list[dict]:
    """Generate the world datasets, evaluate zero-shot, train CoOp on each, print and save the table.

    Progress goes to stderr (a bar on a terminal, a plain line every ~10 s in a pipe or log); the
    table and where the results went go to stdout."""
    started = time.perf_counter()
    print("vlprompt demo: the embedded world (no network needed)", flush=True)
    backbone = api.load_backbone("vlprompt-tiny", "world", "auto")
    print(f"  backbone: {backbone.identity.describe()}  [{time.perf_counter() - started:.1f}s]", flush=True)
    root = api.world_data_root(data_root)
    print(f"  datasets: {root}  [{time.perf_counter() - started:.1f}s]", flush=True)

    rows = []
    for name in WORLD_DATASETS:
        t0 = time.perf_counter()
        dataset = api.load_dataset(name, root)
        zero = evaluate_zero_shot(backbone, dataset, split="test", templates="dataset", progress=False)
        run_dir = out_dir / name / "coop"
        overrides = [f"dataset.name={name}", f"dataset.root={root}", f"output_dir={run_dir}", "train.progress=true"]
        if quick:
            overrides += ["train.epochs=3", "protocol.shots=4"]
        config = ExperimentConfig.load(DEMO_CONFIG, overrides)
        print(f"  {name}: zero-shot {zero['metrics']['top1']:.2f}; training CoOp ({config.protocol.shots} shots, "
              f"{config.train.epochs} epochs) ...", flush=True)
        result = api.run_experiment(config, backbone=backbone, overwrite=True)
        rows.append(
            {
                "dataset": name,
                "classes": len(dataset.classnames),
                "zero_shot": zero["metrics"]["top1"],
                "coop": result["metrics"]["all"]["top1"],
                "seconds": time.perf_counter() - t0,
                "threads": result["threads"],
                "zero_shot_result": zero,
                "coop_result_file": str(run_dir / "experiment.json"),
            }
        )
        print(f"  {name}: CoOp {rows[-1]['coop']:.2f}  [{rows[-1]['seconds']:.1f}s; run in {run_dir}]", flush=True)

    print()
    print(_table(rows))
    total = time.perf_counter() - started
    write_json(out_dir / "results.json", {"rows": rows, "seconds": total, "quick": quick, "threads": torch.get_num_threads()})
    (out_dir / "results.md").write_text(_markdown(rows))
    print(f"\ntotal {total:.1f}s; results in {out_dir}/results.json and results.md (each run's prompt, metrics "
          f"and split under {out_dir}/<dataset>/coop)")
    return rows
