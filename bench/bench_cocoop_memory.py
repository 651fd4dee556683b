"""CoCoOp training step (forward + backward + SGD) on B images x C classes: peak memory growth and
step time, with and without `text_chunk` (chunks gradient-checkpointed), shared prefix on and off.

Each configuration runs in its own subprocess, so peak memory is that configuration's alone:
CPU: ru_maxrss after the steps minus the resident size before the first step (process-wide,
includes allocator slack); CUDA: torch.cuda.max_memory_allocated minus allocated before.
Image features are cached (as the engine trains CoCoOp), so a step is the meta-net, B x C prompts
through the text tower, the loss and the update. Weights are random unless the model has "world".

The reference row (first, per batch size; off with --no-reference) is the original CoCoOp step
measured in the same run: the image encoder on every step, then each image's C prompts through
all 77 text positions, looping over the batch. Same initial weights and images, so the first-step
losses agree; the speed-up (per image) and memory fraction of every vlprompt row are against it.

    python bench/bench_cocoop_memory.py                      # ViT-B-16, 37 classes, B=1 and 4 (the issue)
    python bench/bench_cocoop_memory.py --preset tiny        # vlprompt-tiny/world, 100 classes, B=32
    python bench/bench_cocoop_memory.py --preset vitb16-100  # ViT-B-16 text tower, 100 classes, B=4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PRESETS = {
    "issue": {"model": "ViT-B-16", "pretrained": None, "classes": 37, "batches": [1, 4], "chunks": [0, 1]},
    "vitb16-100": {"model": "ViT-B-16", "pretrained": None, "classes": 100, "batches": [4], "chunks": [0, 1]},
    "tiny": {"model": "vlprompt-tiny", "pretrained": "world", "classes": 100, "batches": [32], "chunks": [0, 8]},
    "test": {"model": "vlprompt-test-vit", "pretrained": None, "classes": 5, "batches": [2], "chunks": [0, 1]},  # smoke test
}


def rss_gb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 1024**3


def reference_logits(backbone, method, classnames: list[str], images):
    """The original CoCoOp forward: image encoder every step, then for each image its C prompts
    through the whole 77-position text tower (no truncation, no shared prefix, no checkpointing)."""
    import torch
    import torch.nn.functional as F

    model = backbone.model
    n_ctx = method.ctx.shape[0]
    with torch.no_grad():
        token_ids = backbone.tokenize([" ".join(["X"] * n_ctx) + f" {name}." for name in classnames]).to(images.device)
        embeds = backbone.embed_tokens(token_ids)
    prefix, suffix = embeds[:, :1], embeds[:, 1 + n_ctx :]
    image_features = F.normalize(model.encode_image(images), dim=-1)
    shifted = method.ctx.unsqueeze(0) + method.meta_net(image_features).unsqueeze(1)  # [B, n_ctx, W]
    n_cls, rows = len(classnames), []
    for ctx_i, image_i in zip(shifted, image_features):
        prompts = torch.cat([prefix, ctx_i.unsqueeze(0).expand(n_cls, -1, -1), suffix], dim=1)
        x = model.transformer(prompts + model.positional_embedding, attn_mask=model.attn_mask)
        x = model.ln_final(x)[torch.arange(n_cls), token_ids.argmax(-1)] @ model.text_projection
        rows.append(model.logit_scale.exp() * image_i @ F.normalize(x, dim=-1).t())
    return torch.stack(rows)


def child(cfg: dict) -> dict:
    import resource

    import torch
    import torch.nn.functional as F

    from vlprompt.backbones import create_backbone
    from vlprompt.methods import build_method

    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    backbone = create_backbone(cfg["model"], cfg["pretrained"], device=cfg["device"])
    backbone.shared_prefix = cfg["shared_prefix"]
    classnames = [f"class number {i}" for i in range(cfg["classes"])]
    method = build_method("cocoop", backbone, classnames, {"init_seed": 0, "text_chunk": cfg["chunk"]}).to(device)
    method.train()
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.002, momentum=0.9)
    B = cfg["batch"]
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(B, 3, *backbone.image_size, generator=gen).to(device)
    labels = (torch.arange(B) % cfg["classes"]).to(device)
    with torch.no_grad():  # vlprompt trains CoCoOp on cached features: encoded once, before timing
        feats = F.normalize(backbone.encode_image(images).float(), dim=-1)
    forward = (lambda: reference_logits(backbone, method, classnames, images)) if cfg.get("reference") else (
        lambda: method({"features": feats}))

    def step() -> float:
        logits = forward()
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = rss_gb()
    times, losses = [], []
    for _ in range(cfg["steps"]):
        t0 = time.perf_counter()
        losses.append(step())
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        growth = (torch.cuda.max_memory_allocated() - before) / 1024**3
    else:
        growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2 - before
    timed = times[1:] if len(times) > 1 else times
    return {**cfg, "step_s": sum(timed) / len(timed), "step_times_s": times, "peak_growth_gb": growth,
            "rss_before_gb": before if device.type != "cuda" else None, "losses": losses,
            "per_image_s": sum(timed) / len(timed) / B, "per_image_growth_gb": growth / B}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="issue")
    parser.add_argument("--batches", type=int, nargs="*", default=None)
    parser.add_argument("--chunks", type=int, nargs="*", default=None, help="text_chunk values (0: whole batch)")
    parser.add_argument("--shared-prefix", choices=["on", "off", "both"], default="both")
    parser.add_argument("--steps", type=int, default=3, help="steps per configuration (first one not timed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip the original-CoCoOp reference loop (image encoder + 77 positions, per image)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return {"child": True}
    p = PRESETS[args.preset]
    shared = {"on": [True], "off": [False], "both": [False, True]}[args.shared_prefix]
    rows = []
    header = (f"{'B':>3} {'chunk':>5} {'shared':>6} {'step s':>8} {'s/img':>7} {'peak+ GB':>9} {'GB/img':>7}  loss"
              "       speed-up  memory vs ref")
    print(f"{p['model']} ({p['pretrained'] or 'random'}), {p['classes']} classes, {args.device}")
    print(header, flush=True)
    for batch in args.batches or p["batches"]:
        configs = [("reference", 0, False)] if args.reference else []
        for chunk in args.chunks if args.chunks is not None else p["chunks"]:
            if chunk < batch or chunk == 0:  # a chunk covering the batch is the same as chunk 0
                configs += [("vlprompt", chunk, sp) for sp in shared]
        reference = None
        for kind, chunk, sp in configs:
            cfg = {"model": p["model"], "pretrained": p["pretrained"], "classes": p["classes"], "batch": batch,
                   "chunk": chunk, "shared_prefix": sp, "steps": args.steps, "device": args.device,
                   "reference": kind == "reference"}
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            reference = row if kind == "reference" else reference
            ratios = ""
            if reference is not None and kind != "reference":
                row["speedup_per_image"] = reference["per_image_s"] / row["per_image_s"]
                row["memory_fraction"] = row["peak_growth_gb"] / max(reference["peak_growth_gb"], 1e-9)
                ratios = f"  {row['speedup_per_image']:>6.1f}x  {row['memory_fraction']:>6.3f}"
            label = "ref" if kind == "reference" else ("on" if sp else "off")
            print(f"{batch:>3} {chunk or '-':>5} {label:>6} {row['step_s']:>8.3f} {row['per_image_s']:>7.3f} "
                  f"{row['peak_growth_gb']:>9.3f} {row['per_image_growth_gb']:>7.3f}  {row['losses'][0]:.6f}{ratios}",
                  flush=True)
    figures = {"preset": args.preset, **p, "device": args.device, "rows": rows,
               "memory_note": "CPU: ru_maxrss minus resident size before the first step, per subprocess"}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
