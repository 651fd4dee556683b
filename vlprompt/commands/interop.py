"""`vlprompt export-backbone OUT` (a plain open_clip checkpoint of a backbone) and `vlprompt interpret
PROMPT` (the vocabulary words nearest to each learned context vector)."""

from __future__ import annotations

import argparse

from vlprompt.commands import COMMANDS


@COMMANDS.register("export-backbone")
def _export_backbone_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export-backbone", help="write a backbone (default: the world CLIP) as a plain open_clip checkpoint")
    parser.add_argument("out", help="output folder (open_clip_model.safetensors, open_clip_config.json, <arch>.json)")
    parser.add_argument("--backbone", default="vlprompt-tiny", help="[source:]architecture, e.g. ViT-B-16")
    parser.add_argument("--pretrained", default="world", help="tag (openai, world...), checkpoint file, or 'none'")

    def run(args: argparse.Namespace) -> None:
        from vlprompt.backbones import load_backbone
        from vlprompt.interop.open_clip_export import export_open_clip

        backbone = load_backbone(args.backbone, args.pretrained, "cpu")
        files = export_open_clip(backbone, args.out)
        name = backbone.identity.name
        print(f"wrote {files['weights']}, {files['config']}, {files['model_config']}")
        print(
            f'open_clip: open_clip.create_model_and_transforms("local-dir:{args.out}"), or after '
            f'open_clip.add_model_config("{files["model_config"]}"): '
            f'open_clip.create_model_and_transforms("{name}", pretrained="{files["weights"]}")'
        )

    parser.set_defaults(run=run)


@COMMANDS.register("interpret")
def _interpret_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("interpret", help="nearest vocabulary words to each learned context vector of a prompt")
    parser.add_argument("prompt", help="a saved prompt (.safetensors/.json) or zoo name")
    parser.add_argument("--top-k", type=int, default=3, help="words shown per vector")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")

    def run(args: argparse.Namespace) -> None:
        import json

        from vlprompt.interop.interpret import format_interpretation, interpret_prompt

        found = interpret_prompt(args.prompt, top_k=args.top_k, device=args.device)
        print(json.dumps(found, indent=2) if args.json else format_interpretation(found))

    parser.set_defaults(run=run)


@COMMANDS.register("import-official")
def _import_official_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "import-official", help="a released CoOp / CoCoOp / KgCoOp prompt (prompt_learner/model.pth.tar-N) as a vlprompt prompt"
    )
    parser.add_argument("checkpoint", help="the released file, e.g. .../prompt_learner/model.pth.tar-50 (tensors only are read)")
    parser.add_argument("--method", required=True, choices=("coop", "cocoop", "kgcoop"), help="the method that trained it")
    parser.add_argument("--classes", required=True, help="'a,b,c' or a file with one class name per line, in label order")
    parser.add_argument("--out", required=True, help="where to write the prompt (.safetensors + .json)")
    parser.add_argument("--class-position", default=None, help="CoOp's class token position if not end: middle | front")
    parser.add_argument("--backbone", default="ViT-B-16", help="[source:]architecture it was trained on")
    parser.add_argument("--pretrained", default="openai", help="its weights tag or file")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")

    def run(args: argparse.Namespace) -> None:
        from vlprompt.backbones import load_backbone
        from vlprompt.commands.zoo import _classes_arg
        from vlprompt.interop.official import import_official
        from vlprompt.zoo import save_prompt

        backbone = load_backbone(args.backbone, args.pretrained, args.device)
        config = {"class_position": args.class_position} if args.class_position else None
        method = import_official(args.checkpoint, args.method, backbone, _classes_arg(args.classes), config)
        path = save_prompt(args.out, method, training={"source": f"official {args.method} release: {args.checkpoint}"})
        print(f"wrote {path} ({args.method}, {method.config.n_ctx} context vectors, {len(method.classnames)} classes)")

    parser.set_defaults(run=run)
