"""`vlprompt czsl eval | train | make-pairs | info`: compositional zero-shot (CZSL) tasks."""

from __future__ import annotations

import argparse
import json

from vlprompt.commands import COMMANDS, add_threads_arg


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="czsl/world",
                        help="CZSL experiment YAML (e.g. czsl/mit-states_csp); default: the embedded world's set")
    parser.add_argument("--root", default=None,
                        help="dataset folder (overrides dataset.root; the world set needs none)")
    parser.add_argument("--out", default=None,
                        help="the run's folder: experiment.json and the trained prompt (default runs/<method>/<dataset>/...)")
    parser.add_argument("--json", action="store_true", help="print the full results as JSON")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="write the seen-vs-unseen accuracy curves (bias sweep) and HM of every result to PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in the run's folder")
    add_threads_arg(parser)
    parser.add_argument("overrides", nargs="*", help="key.sub=value, e.g. method.name=csp eval.worlds=[closed,open]")


def _run(args: argparse.Namespace, train: bool) -> None:
    from vlprompt.config import ExperimentConfig
    from vlprompt.czsl.evaluate import format_results
    from vlprompt.runner import run_experiment

    overrides = (["train.progress=true"] if train else []) + list(args.overrides) + ["task=czsl"]
    if args.root:
        overrides.append(f"dataset.root={args.root}")
    if args.out:
        overrides.append(f"output_dir={args.out}")
    config = ExperimentConfig.load(args.config, overrides)
    out = run_experiment(config, train=train, prompt=getattr(args, "prompt", None), overwrite=args.overwrite)
    if args.plot:
        from vlprompt.czsl.plots import plot_curves

        plot_curves(out["metrics"], args.plot, title=f"{out['method']} on {out['dataset']}")
    if args.json:
        print(json.dumps(out, indent=2, default=float))
    else:
        print(f"{out['method']} on {out['dataset']}: {out['dataset_summary']}")
        print(format_results(out["metrics"]))
        print(f"results in {out['output_dir']}" + (f"; curves in {args.plot}" if args.plot else ""))


@COMMANDS.register("czsl")
def _czsl_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("czsl", help="compositional zero-shot: eval | train | make-pairs | info")
    czsl_sub = parser.add_subparsers(dest="czsl_command", required=True)

    ev = czsl_sub.add_parser("eval", help="evaluate (zero-shot, or a trained prompt with --prompt)")
    _common(ev)
    ev.add_argument("--prompt", default=None,
                    help="a trained prompt (prompt.safetensors from `vlprompt czsl train`) or a zoo name")
    ev.set_defaults(run=lambda args: _run(args, train=False))

    tr = czsl_sub.add_parser("train", help="train on the train pairs, then evaluate")
    _common(tr)
    tr.set_defaults(run=lambda args: _run(args, train=True))

    mp = czsl_sub.add_parser("make-pairs", help="regenerate {train,val,test}_pairs.txt from the metadata file")
    mp.add_argument("root", help="dataset folder holding metadata_<split>.t7")
    mp.add_argument("--split-dir", default="compositional-split-natural", help="the split's folder under root")
    mp.add_argument("--metadata", default=None, help="metadata file name (default metadata_<split-dir>.t7)")
    mp.add_argument("--overwrite", action="store_true", help="replace existing pair files")

    def make_pairs(args: argparse.Namespace) -> None:
        from vlprompt.czsl.data import make_pair_files

        counts = make_pair_files(args.root, args.split_dir, args.metadata, args.overwrite)
        print(f"wrote {args.root}/{args.split_dir}/{{train,val,test}}_pairs.txt: {counts}")

    mp.set_defaults(run=make_pairs)

    info = czsl_sub.add_parser("info", help="counts of attributes, objects, pairs and images")
    info.add_argument("root", help="dataset folder")
    info.add_argument("--split-dir", default="compositional-split-natural", help="the split's folder under root")
    info.add_argument("--open-world", action="store_true", help="count every attribute-object pair as a candidate")

    def show(args: argparse.Namespace) -> None:
        from vlprompt.czsl.data import CZSLDataset

        print(json.dumps(CZSLDataset.load(args.root, args.split_dir, args.open_world).summary(), indent=2))

    info.set_defaults(run=show)
