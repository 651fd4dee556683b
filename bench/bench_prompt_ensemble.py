"""Prompt ensemble training step: N soft prompts in ONE batched text-tower call (``prompt_ensemble``) vs
the reference measured in the same run, N separate calls (one per member, as N CoOp runs would do).

A step is the text tower forward for C classes x N members, the members' losses and backward; image
features are cached. Same members, same images: the losses agree (printed). Speed-up = reference time /
batched time.

    python bench/bench_prompt_ensemble.py                  # vlprompt-tiny (world weights), 10 classes, N = 4, 8
    python bench/bench_prompt_ensemble.py --preset test    # smoke test
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

PRESETS = {
    "tiny": {"model": "vlprompt-tiny", "pretrained": "world", "classes": 10, "members": [4, 8], "steps": 20},
    "test": {"model": "vlprompt-test-vit", "pretrained": None, "classes": 3, "members": [2], "steps": 2},
}


def _step_batched(method, batch) -> float:
    method.zero_grad()
    loss, _ = method.loss(method(batch), batch)
    loss.backward()
    return float(loss.detach())


def _step_separate(method, batch) -> float:
    method.zero_grad()
    image = batch["features"]
    total = 0.0
    for m in range(method.ctx.shape[0]):  # one text-tower call per member
        text = F.normalize(method.prompts.encode(ctx=method.ctx[m]), dim=-1)
        loss = F.cross_entropy(method.backbone.logit_scale * image @ text.t(), batch["labels"])
        loss.backward()
        total += float(loss.detach())
    return total


def _time(step, method, batch, steps: int) -> tuple[float, float]:
    loss = step(method, batch)  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step(method, batch)
    return (time.perf_counter() - start) / steps, loss


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]

    from vlprompt.backbones import create_backbone
    from vlprompt.methods import build_method

    torch.manual_seed(0)
    backbone = create_backbone(preset["model"], preset["pretrained"])
    classes = [f"class {i}" for i in range(preset["classes"])]
    with torch.no_grad():
        images = torch.randn(32, 3, *backbone.image_size)
        batch = {"features": F.normalize(backbone.encode_image(images), dim=-1), "labels": torch.arange(32) % len(classes)}
    rows = []
    for n in preset["members"]:
        method = build_method("prompt_ensemble", backbone, classes, {"n_prompts": n, "init": "uniform", "init_seed": 0}).train()
        ref, ref_loss = _time(_step_separate, method, batch, preset["steps"])
        fast, fast_loss = _time(_step_batched, method, batch, preset["steps"])
        rows.append({"members": n, "separate_s": ref, "batched_s": fast, "speedup": ref / fast,
                     "loss_diff": abs(ref_loss - fast_loss)})  # both: the sum of the members' cross-entropies
        print(f"N={n:2d}  separate {ref * 1e3:7.1f} ms/step  batched {fast * 1e3:7.1f} ms/step  speed-up x{ref / fast:.2f}  "
              f"loss diff {abs(ref_loss - fast_loss):.1e}")
    figures = {"preset": args.preset, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return figures


if __name__ == "__main__":
    main()
