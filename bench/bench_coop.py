"""CoOp for one epoch, two ways in one run: a reference loop written the way CoOp's original
trainer works, and vlprompt's engine. Prints step/epoch times, peak memory and the ratio.

Reference loop (per step): the frozen image encoder on the batch, all prompts built at the full
context length (77), the text tower on every class with autograd, cross-entropy, SGD.
vlprompt: image features from the feature cache (built once per backbone/transform/item, then
reused by every epoch and run), prompts truncated at the longest EOT, the engine's Trainer.

Both start from the same context vectors and see the same batches in the same order; the first
steps' losses are compared. Weights are random (ViT-B-16-sized by default): speed does not depend
on them. The reference is timed on --ref-steps steps (the first, warm-up, left out of the mean) and its
epoch time is steps x mean step time.

    python bench/bench_coop.py                     # CPU preset: ViT-B-16, 100 classes, 16 shots
    python bench/bench_coop.py --preset gpu        # CUDA, bf16 autocast, 1000 classes
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt.backbones import create_backbone
from vlprompt.engine.trainer import TrainConfig, Trainer
from vlprompt.methods import build_method

PRESETS = {
    "cpu": {"model": "ViT-B-16", "classes": 100, "shots": 16, "batch": 32, "device": "cpu", "precision": "fp32"},
    "gpu": {"model": "ViT-B-16", "classes": 1000, "shots": 16, "batch": 32, "device": "cuda", "precision": "bf16"},
    "tiny": {"model": "vlprompt-test-vit", "classes": 20, "shots": 4, "batch": 8, "device": "cpu", "precision": "fp32"},
}


@dataclass(frozen=True)
class FakeItem:
    path: str
    label: int


class PrecomputedFeatures:
    """Stands in for FeatureCache: the features were computed once, before the epoch."""

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def get(self, backbone, items, transform, views: int = 1, across_ranks: bool = False) -> torch.Tensor:
        return self.features[None]


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def reference_step(backbone, ctx, prefix, suffix, token_ids, images, labels, optimizer, autocast) -> float:
    """One CoOp step as the original trainer runs it."""
    model = backbone.model
    with autocast():
        with torch.no_grad():
            image_features = F.normalize(model.encode_image(images), dim=-1)
        n_cls = prefix.shape[0]
        prompts = torch.cat([prefix, ctx.unsqueeze(0).expand(n_cls, -1, -1), suffix], dim=1)  # [C, 77, W]
        x = prompts + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = x[torch.arange(n_cls), token_ids.argmax(-1)] @ model.text_projection
        text_features = F.normalize(x, dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.t()
        loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--ref-steps", type=int, default=3, help="reference steps to time (epoch is extrapolated)")
    parser.add_argument("--n-ctx", type=int, default=16)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    p = PRESETS[args.preset]
    device = p["device"]
    torch.manual_seed(0)
    backbone = create_backbone(p["model"], device=device)
    size = backbone.image_size
    classnames = [f"class number {i}" for i in range(p["classes"])]
    n_items = p["classes"] * p["shots"]
    items = [FakeItem(f"item{i}", i % p["classes"]) for i in range(n_items)]
    labels = torch.tensor([it.label for it in items])

    def images_of(idx: torch.Tensor) -> torch.Tensor:  # deterministic stand-in images per item
        out = []
        for i in idx.tolist():
            out.append(torch.randn(3, *size, generator=torch.Generator().manual_seed(10_000 + i)))
        return torch.stack(out).to(device)

    init_ctx = build_method("coop", backbone, classnames, {"n_ctx": args.n_ctx, "init_seed": 0}).ctx.detach().clone()
    cfg = TrainConfig(epochs=1, batch_size=p["batch"], lr=0.002, warmup_epochs=1, warmup_lr=1e-5,
                      precision=p["precision"], device=device, progress=False, seed=1)
    # the engine's epoch-0 batch order, shared by all loops
    order_probe = Trainer(build_method("coop", backbone, classnames, {"n_ctx": 1}), cfg)
    batches, _ = order_probe._batches(0, {"labels": labels})

    # -- the feature cache, built once: timed (and real) on the batches the reference runs; the
    #    other items' features are tiled copies (the text-side cost does not depend on their values)
    steps = min(args.ref_steps, len(batches))
    t0 = time.perf_counter()
    with torch.no_grad():
        first = torch.cat(batches[:steps])
        real = F.normalize(backbone.encode_image(images_of(first)).float(), dim=-1).cpu()
    encode_seconds_per_image = (time.perf_counter() - t0) / len(first)
    features = real[torch.arange(n_items) % len(first)].clone()
    features[first] = real

    # -- reference loop: same init, same batches
    ref_ctx = torch.nn.Parameter(init_ctx.clone().to(device))
    ref_opt = torch.optim.SGD([ref_ctx], lr=1e-5, momentum=0.9, weight_decay=5e-4)
    with torch.no_grad():
        texts = [" ".join(["X"] * args.n_ctx) + f" {name}." for name in classnames]
        token_ids = backbone.tokenize(texts).to(device)
        embeds = backbone.embed_tokens(token_ids)
        prefix, suffix = embeds[:, :1], embeds[:, 1 + args.n_ctx :]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if p["precision"] == "bf16" else torch.no_grad
    if p["precision"] != "bf16":
        import contextlib

        autocast = contextlib.nullcontext
    ref_losses, ref_times = [], []
    for step in range(steps):
        idx = batches[step]
        t0 = time.perf_counter()
        ref_losses.append(reference_step(backbone, ref_ctx, prefix, suffix, token_ids, images_of(idx),
                                         labels[idx].to(device), ref_opt, autocast))
        if device == "cuda":
            torch.cuda.synchronize()
        ref_times.append(time.perf_counter() - t0)
        print(f"reference step {step + 1}/{steps}: {ref_times[-1]:.2f}s loss {ref_losses[-1]:.5f}", flush=True)
    ref_peak = peak_rss_gb() if device == "cpu" else torch.cuda.max_memory_allocated() / 1024**3

    # -- vlprompt engine: one epoch on cached features, plain text path then shared prefix
    def run_engine(shared_prefix: bool) -> tuple[float, list[float], float]:
        backbone.shared_prefix = shared_prefix
        engine_method = build_method("coop", backbone, classnames, {"n_ctx": args.n_ctx, "init_seed": 0})
        engine_trainer = Trainer(engine_method, cfg)
        engine_trainer.cache = PrecomputedFeatures(features)
        losses: list[float] = []
        original_loss = engine_method.loss

        def recording_loss(logits, batch):
            loss, stats = original_loss(logits, batch)
            losses.append(float(loss.detach()))
            return loss, stats

        engine_method.loss = recording_loss  # type: ignore[method-assign]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        engine_trainer.fit(items)
        seconds = time.perf_counter() - t0
        peak = peak_rss_gb() if device == "cpu" else torch.cuda.max_memory_allocated() / 1024**3
        return seconds, losses, peak

    plain_epoch, plain_losses, plain_peak = run_engine(shared_prefix=False)
    print(f"vlprompt plain epoch: {plain_epoch:.1f}s", flush=True)
    shared_epoch, shared_losses, shared_peak = run_engine(shared_prefix=True)
    print(f"vlprompt shared-prefix epoch: {shared_epoch:.1f}s", flush=True)

    steps_n = len(batches)
    # the first reference step carries one-off warm-up (allocator, kernels): leave it out when we can
    timed = ref_times[1:] if len(ref_times) > 1 else ref_times
    ref_step = sum(timed) / len(timed)
    ref_epoch = ref_step * steps_n
    n = len(ref_losses)
    diff_plain = max(abs(a - b) for a, b in zip(ref_losses, plain_losses[:n]))
    diff_shared = max(abs(a - b) for a, b in zip(ref_losses, shared_losses[:n]))
    diff_epoch = max(abs(a - b) for a, b in zip(plain_losses, shared_losses))
    figures = {
        "preset": args.preset, **p, "n_ctx": args.n_ctx, "steps_per_epoch": steps_n,
        "reference_step_s": ref_step, "reference_step_times_s": ref_times, "reference_epoch_s": ref_epoch,
        "plain_step_s": plain_epoch / steps_n, "plain_epoch_s": plain_epoch,
        "shared_step_s": shared_epoch / steps_n, "shared_epoch_s": shared_epoch,
        "speedup_plain": ref_epoch / plain_epoch, "speedup_shared": ref_epoch / shared_epoch,
        "feature_cache_build_s": encode_seconds_per_image * n_items,
        "first_losses_reference": ref_losses, "first_losses_plain": plain_losses[:n],
        "first_losses_shared": shared_losses[:n],
        "max_loss_diff_reference_vs_plain": diff_plain, "max_loss_diff_reference_vs_shared": diff_shared,
        "max_loss_diff_plain_vs_shared_whole_epoch": diff_epoch,
        "peak_memory_gb_reference": ref_peak,
        "peak_memory_gb_plain_cumulative": plain_peak, "peak_memory_gb_shared_cumulative": shared_peak,
        "memory_note": "CPU peaks are process-wide maxima (ru_maxrss), so later columns include earlier ones",
    }
    print()
    print(f"{'':<22}{'reference':>12}{'plain':>12}{'shared':>12}")
    print(f"{'step time (s)':<22}{ref_step:>12.3f}{plain_epoch / steps_n:>12.3f}{shared_epoch / steps_n:>12.3f}")
    print(f"{'epoch time (s)':<22}{ref_epoch:>12.1f}{plain_epoch:>12.1f}{shared_epoch:>12.1f}")
    print(f"{'speed-up':<22}{1.0:>12.1f}{ref_epoch / plain_epoch:>12.1f}{ref_epoch / shared_epoch:>12.1f}")
    print(f"{'peak memory (GB)':<22}{ref_peak:>12.2f}{plain_peak:>12.2f}{shared_peak:>12.2f}")
    print(f"feature cache built once: {figures['feature_cache_build_s']:.0f}s, reused by every later epoch and run")
    print(f"first {n} step losses vs reference: plain {diff_plain:.1e}, shared {diff_shared:.1e}; "
          f"plain vs shared over the epoch: {diff_epoch:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
