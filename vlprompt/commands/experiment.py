"""`vlprompt eval | train | demo`: evaluate zero-shot or trained prompts, train a prompt, run the demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlprompt.commands import COMMANDS, add_threads_arg, counted_int


def _add_backbone_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="vlprompt-tiny", help="[source:]architecture, e.g. ViT-B-16")
    parser.add_argument("--pretrained", default="world", help="tag (openai, world...), checkpoint file, or 'none'")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    add_threads_arg(parser)


def _write_json(payload: object, path: str | None) -> None:
    if path:
        from vlprompt.engine.logging import write_json

        write_json(path, payload)
        print(f"wrote {path}")


@COMMANDS.register("eval")
def _eval_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="zero-shot or trained-prompt evaluation on a dataset")
    parser.add_argument("--dataset", required=True, nargs="+", help="registered name(s), folder:PATH, csv:FILE or wds:DIR")
    parser.add_argument("--root", default=None, help="data root (default: $VLPROMPT_DATA, or the embedded world's)")
    parser.add_argument("--split", default="test", help="the dataset split to evaluate (e.g. test, val)")
    parser.add_argument("--templates", default="dataset", help="dataset | single | imagenet80 | FILE")
    parser.add_argument("--prompt", default=None, help="a trained prompt checkpoint (default: zero-shot)")
    parser.add_argument("--batch-size", type=counted_int(1), default=128, help="images per forward pass")
    parser.add_argument("--workers", type=counted_int(0), default=0,
                        help="data-loading worker processes; 0 loads in the main process")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument(
        "--format", default="vlprompt", choices=("vlprompt", "clip_benchmark"),
        help="clip_benchmark: one CLIP_benchmark result file per dataset (see --output)",
    )
    parser.add_argument(
        "--output", default="{dataset}_{pretrained}_{model}_{language}_{task}.json",
        help="--format clip_benchmark: file pattern ({dataset} {model} {pretrained} {language} {task} {method})",
    )
    parser.add_argument("--language", default="en", help="--format clip_benchmark: the language recorded")
    _add_backbone_args(parser)

    def run(args: argparse.Namespace) -> None:
        from vlprompt import api
        from vlprompt.engine.zero_shot import format_results_table
        from vlprompt.paths import check_writable

        if args.json:  # an unwritable --json target fails before the evaluation, not after it
            check_writable(args.json)

        results = api.evaluate(
            datasets=args.dataset,
            root=args.root,
            backbone=args.backbone,
            pretrained=args.pretrained,
            device=args.device,
            split=args.split,
            templates=args.templates,
            prompt=args.prompt,
            batch_size=args.batch_size,
            num_workers=args.workers,
        )
        print(format_results_table(results))
        _write_json(results, args.json)
        if args.format == "clip_benchmark":
            from vlprompt.interop.clip_benchmark import write_clip_benchmark

            for path in write_clip_benchmark(results, args.output, args.language):
                print(f"wrote {path}")

    parser.set_defaults(run=run)


@COMMANDS.register("train")
def _train_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a prompt: vlprompt train --config FILE [key=value ...]")
    parser.add_argument("--config", default=None, help="experiment YAML (path or relative to configs/)")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in output_dir")
    add_threads_arg(parser)
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.lr=0.01")

    def run(args: argparse.Namespace) -> None:
        from vlprompt.config import ExperimentConfig

        # progress: a bar on a terminal, a plain line every ~10 s in a pipe or log (the user's override wins)
        overrides = ["train.progress=true", *args.overrides]
        config = ExperimentConfig.load(args.config, overrides)  # a typo fails here, before anything heavy
        from vlprompt.runner import format_experiment, run_experiment

        result = run_experiment(config, resume=args.resume, overwrite=args.overwrite)
        print(format_experiment(result))
        print(f"results in {result['output_dir']}")

    parser.set_defaults(run=run)


@COMMANDS.register("demo")
def _demo_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="the main job on the embedded world: zero-shot vs learned prompts")
    parser.add_argument("--data", default=None, help="where to write the embedded datasets (default: user cache)")
    parser.add_argument("--out", default="runs/demo", help="results directory")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (for tests)")
    add_threads_arg(parser)

    def run(args: argparse.Namespace) -> None:
        from vlprompt.demo import run_demo

        run_demo(data_root=args.data, out_dir=Path(args.out), quick=args.quick)

    parser.set_defaults(run=run)
