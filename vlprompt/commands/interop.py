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
