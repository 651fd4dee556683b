"""`vlprompt sweep --config FILE`: methods x datasets x shots x seeds, resumable, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlprompt.commands import COMMANDS, add_threads_arg
from vlprompt.errors import VLPromptError


def sweep_runner(config: dict[str, Any]):
    """(grid, run_one) from a sweep YAML: ``grid`` names methods (keys of ``methods``), the rest is
    an experiment config every run starts from."""
    from vlprompt import api
    from vlprompt.config import ExperimentConfig, check_keys
    from vlprompt.engine.sweep import SweepGrid

    config = dict(config)
    grid_cfg = dict(config.pop("grid", None) or {})
    methods: dict[str, dict] = grid_cfg.pop("methods", None) or {}
    out_dir = Path(config.pop("out_dir", "runs/sweep"))
    check_keys(grid_cfg, ["datasets", "shots", "seeds", "protocol"], "sweep grid")
    if not methods:
        raise VLPromptError("sweep config: grid.methods must map run names to method configs")
    grid = SweepGrid(methods=list(methods), **grid_cfg)
    backbone_cache: dict[str, Any] = {}

    def run_one(spec) -> dict:
        method = dict(methods[spec.method])
        train = {**config.get("train", {}), **method.pop("train", {})}  # a method may adjust the schedule
        experiment = ExperimentConfig.from_dict(
            {
                **config,
                "train": train,
                "method": method,
                "dataset": {**config.get("dataset", {}), "name": spec.dataset},
                "protocol": {"name": spec.protocol, "shots": spec.shots, "seed": spec.seed},
                "output_dir": str(out_dir / "runs" / spec.method / spec.dataset / f"shots{spec.shots}" / f"seed{spec.seed}"),
            }
        )
        key = f"{experiment.backbone.name}|{experiment.backbone.pretrained}"
        if key not in backbone_cache:
            backbone_cache[key] = api.load_backbone(
                experiment.backbone.name, experiment.backbone.pretrained, experiment.backbone.device
            )
        result = api.run_experiment(experiment, backbone=backbone_cache[key], overwrite=True)  # the sweep owns its runs
        return {"metrics": api.headline(result["metrics"]), "result": result}

    return grid, run_one, out_dir


@COMMANDS.register("sweep")
def _sweep_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="a grid of experiments, resumable; writes summary.md/.json and plots")
    parser.add_argument("--config", required=True, help="sweep YAML (path or relative to configs/)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. grid.seeds=[1]")
    add_threads_arg(parser)

    def run(args: argparse.Namespace) -> None:
        from vlprompt.config import apply_overrides, load_yaml
        from vlprompt.engine.sweep import run_sweep

        grid, run_one, out_dir = sweep_runner(apply_overrides(load_yaml(args.config), args.overrides))
        result = run_sweep(grid, run_one, out_dir)
        print((out_dir / "summary.md").read_text() if (out_dir / "summary.md").is_file() else result.summary)
        print(f"results in {out_dir} (summary.md, summary.json, plots; one folder per run under {out_dir / 'runs'})")

    parser.set_defaults(run=run)
