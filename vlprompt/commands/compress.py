"""`vlprompt compress --templates imagenet80 --n-ctx 4 --out PROMPT`: a template ensemble (or per-class
descriptions) distilled into an n-token soft prompt, with no images; writes an ordinary prompt checkpoint."""

from __future__ import annotations

import argparse

from vlprompt.commands import COMMANDS
from vlprompt.commands.experiment import _add_backbone_args
from vlprompt.commands.zoo import _classes_arg
from vlprompt.errors import VLPromptError


@COMMANDS.register("compress")
def _compress_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("compress", help="distil templates or class descriptions into a short soft prompt")
    parser.add_argument("--templates", default=None, help="bank (imagenet80, world_captions...), a '{}' template or a FILE")
    parser.add_argument("--descriptions", default=None, help="per-class descriptions: JSON {class: [text]} or class: text lines")
    parser.add_argument("--classes", default=None, help="class names: 'a,b,c' or a file with one per line")
    parser.add_argument("--dataset", default=None, help="take the class names (and 'dataset' templates) from this dataset")
    parser.add_argument("--root", default=None, help="data root for --dataset")
    parser.add_argument("--n-ctx", type=int, default=4, help="soft tokens of the compressed prompt")
    parser.add_argument("--ctx-init", default="", help="initial words (sets n-ctx), default N(0, 0.02)")
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps over all classes")
    parser.add_argument("--lr", type=float, default=0.01, help="AdamW learning rate (cosine decay)")
    parser.add_argument("--seed", type=int, default=1, help="initialisation seed")
    parser.add_argument("--out", required=True, help="where to write the prompt (PATH.safetensors + PATH.json)")
    _add_backbone_args(parser)

    def run(args: argparse.Namespace) -> None:
        from vlprompt import api
        from vlprompt.methods.compression import (
            CompressConfig,
            compress,
            compression_target,
            ensemble_cost,
            prompt_cost,
            read_descriptions,
        )
        from vlprompt.prompts.templates import get_templates
        from vlprompt.zoo import save_prompt

        if (args.templates is None) == (args.descriptions is None):
            raise VLPromptError("compress needs --templates or --descriptions (one of them)")
        dataset = api.get_dataset(args.dataset, args.root) if args.dataset else None
        classnames = _classes_arg(args.classes) or (list(dataset.classnames) if dataset is not None else None)
        if not classnames:
            raise VLPromptError("compress needs class names: --classes 'a,b,c' (or a file) or --dataset NAME")
        config = CompressConfig.from_dict(
            {"n_ctx": args.n_ctx, "ctx_init": args.ctx_init, "steps": args.steps, "lr": args.lr, "seed": args.seed}
        )
        backbone = api.load_backbone(args.backbone, None if args.pretrained == "none" else args.pretrained, args.device)
        templates = get_templates(args.templates, dataset) if args.templates else None
        descriptions = read_descriptions(args.descriptions) if args.descriptions else None
        target = compression_target(backbone, classnames, templates=templates, descriptions=descriptions)
        method, stats = compress(backbone, classnames, target, config)
        source = {"templates": args.templates, "n_templates": len(templates)} if templates else {
            "descriptions": str(args.descriptions), "n_descriptions": sum(len(descriptions[c]) for c in classnames)}
        cost = {"context": ensemble_cost(backbone, classnames, templates) if templates else None,
                "compressed": prompt_cost(method)}
        path = save_prompt(
            args.out, method,
            training={"compressed_from": source, "images": 0, **({"dataset": dataset.name} if dataset else {})},
            metrics={"target_cosine": stats["cosine"], "t2t_acc": stats["t2t_acc"]},
            extra={"compression": {"config": vars(config), "stats": stats, "text_encoding_cost": cost}},
        )
        print(f"compressed {source} over {len(classnames)} classes into {method.n_ctx} soft tokens in {stats['seconds']:.1f} s: "
              f"mean cosine to the target {stats['cosine']:.4f}, text-to-text accuracy {stats['t2t_acc']:.1f}%")
        if cost["context"]:
            print(f"text encoding: {cost['context']['passes']} passes / {cost['context']['positions']} positions -> "
                  f"{cost['compressed']['passes']} / {cost['compressed']['positions']}")
        print(f"wrote {path}")

    parser.set_defaults(run=run)
