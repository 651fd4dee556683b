"""`vlprompt predict --prompt NAME_OR_PATH IMAGE...`: top-k labels and scores per image."""

from __future__ import annotations

import argparse
import json

from vlprompt.commands import COMMANDS, add_threads_arg, counted_int
from vlprompt.commands.zoo import _classes_arg


@COMMANDS.register("predict")
def _predict_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="classify images with a trained prompt (path or zoo name)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to classify")
    parser.add_argument("--prompt", required=True, help="checkpoint path, zoo entry name or hf://org/repo")
    parser.add_argument("--classes", default=None, help="replace the class names: 'a,b,c' or a file with one per line")
    parser.add_argument("--top-k", type=counted_int(1), default=5, help="how many labels to show per image")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto")
    parser.add_argument("--batch-size", type=counted_int(1), default=32, help="images per forward pass")
    parser.add_argument("--user-examples", default=None, metavar="FOLDER",
                        help="a user's example images: personalise a prompt adapter (persoma) first, no training")
    add_threads_arg(parser)

    def run(args: argparse.Namespace) -> None:
        from vlprompt.zoo.predict import format_predictions, predict

        results = predict(
            args.prompt,
            args.images,
            classnames=_classes_arg(args.classes),
            top_k=args.top_k,
            device=args.device,
            batch_size=args.batch_size,
            user_examples=args.user_examples,
        )
        print(json.dumps(results, indent=2) if args.json else format_predictions(results))

    parser.set_defaults(run=run)
