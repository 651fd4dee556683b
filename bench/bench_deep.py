"""MaPLe and PromptSRC training steps, two ways in one run: a reference loop written the way the official
trainers work, and vlprompt's methods. Prints step times, the speed ratio, peak memory and the first losses.

Reference (muzairkhattak/multimodal-prompt-learning ``trainers/maple.py``, muzairkhattak/PromptSRC
``trainers/promptsrc.py``), every step: the prompted image tower on the batch (visual tokens appended after the
patch tokens, replaced per layer), the text tower on every class at the full context length (77 positions) with
the deep prompts replaced per layer; PromptSRC also runs the frozen image tower on the batch. SGD.
vlprompt: ``method.train_step``: the same prompted image tower; the text prompts truncated after the longest EOT
with the class-independent prefix ([SOS] + context, deep tokens included) encoded once; PromptSRC's frozen image
features read from the feature cache (computed once per item and view: timed separately, not per step).

Both sides start from the same prompt weights and see the same batches; the first steps' losses are compared.
Weights are random (ViT-B-16-sized by default): speed does not depend on them. Each side runs in a forked
process, so the CPU peak memory (ru_maxrss) of each is its own (same baseline: the weights, shared at fork).

    python bench/bench_deep.py                      # CPU preset: ViT-B-16, 100 classes, batch 4
    python bench/bench_deep.py --preset gpu         # CUDA, bf16 autocast
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import resource
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt.backbones import create_backbone
from vlprompt.methods import build_method

PRESETS = {
    "cpu": {"model": "ViT-B-16", "classes": 100, "batch": 4, "device": "cpu", "precision": "fp32"},
    "gpu": {"model": "ViT-B-16", "classes": 100, "batch": 4, "device": "cuda", "precision": "bf16"},
    "tiny": {"model": "vlprompt-test-vit", "classes": 10, "batch": 4, "device": "cpu", "precision": "fp32"},
}
METHODS = {  # the released base-to-new settings
    "maple": {"n_ctx": 2, "ctx_init": "a photo of a", "depth": 9},
    "promptsrc": {"n_ctx_text": 4, "n_ctx_vision": 4, "ctx_init": "a photo of a", "depth_text": 9, "depth_vision": 9,
                  "templates": ["a photo of a {}.", "a bad photo of a {}.", "a sculpture of a {}."]},
}
LR = 0.0025


def peak_memory_gb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1024**3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _blocks(transformer, x, attn_mask, replace):
    """The official trainers' block loop (sequence-first inside, as OpenAI CLIP), with ``replace(i, x)``."""
    for i, block in enumerate(transformer.resblocks):
        x = replace(i, x)
        if transformer.batch_first:
            x = block(x, attn_mask=attn_mask)
        else:
            x = block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
    return x


def reference_text(backbone, ids, ctx, deep):
    """All 77 positions of every class; deep tokens replace positions 1..n at blocks 1..J-1."""
    model = backbone.model
    n = ctx.shape[0]
    embeds = model.token_embedding(ids)
    x = torch.cat([embeds[:, :1], ctx.expand(ids.shape[0], -1, -1).to(embeds.dtype), embeds[:, 1 + n :]], 1)
    x = x + model.positional_embedding

    def replace(i, x):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :1], deep[i - 1].expand(x.shape[0], -1, -1).to(x.dtype), x[:, 1 + n :]], 1)
        return x

    x = model.ln_final(_blocks(model.transformer, x, model.attn_mask, replace))
    return F.normalize(x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ model.text_projection, dim=-1)


def reference_image(backbone, images, shallow, deep):
    """The official VisionTransformer: visual tokens appended after the patches, before ln_pre."""
    v = backbone.model.visual
    n = shallow.shape[0]
    x = v.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                                device=x.device), x], 1)
    x = x + v.positional_embedding.to(x.dtype)
    x = v.ln_pre(torch.cat([x, shallow.expand(x.shape[0], -1, -1).to(x.dtype)], 1))

    def replace(i, x):
        if 1 <= i <= len(deep):
            x = torch.cat([x[:, :-n], deep[i - 1].expand(x.shape[0], -1, -1).to(x.dtype)], 1)
        return x

    x = _blocks(v.transformer, x, None, replace)
    return F.normalize(v.ln_post(x[:, 0]) @ v.proj, dim=-1)


def reference_loss(name, method, backbone, ids, images, labels, fixed_text):
    """One official forward and loss (prompt tensors taken from `method`, never its forward)."""
    scale = backbone.model.logit_scale.exp()
    if name == "maple":
        visual = method.visual_prompts()
        text = reference_text(backbone, ids, method.ctx, list(method.compound_prompts_text))
        image = reference_image(backbone, images, visual.shallow, list(visual.deep))
        logits = scale * image @ text.t()
        return F.cross_entropy(logits.float(), labels)
    text = reference_text(backbone, ids, method.ctx, list(method.text_deep))
    image = reference_image(backbone, images, method.visual.shallow, list(method.visual.deep))
    logits = scale * image @ text.t()
    with torch.no_grad():  # the frozen image tower, every step
        zs_image = F.normalize(backbone.model.encode_image(images), dim=-1)
        zs_logits = scale * zs_image @ fixed_text.t()
    loss_ce = F.cross_entropy(logits.float(), labels)
    loss_text = F.l1_loss(text.float(), fixed_text.float()) * 25
    loss_image = F.l1_loss(image.float(), zs_image.float()) * 10
    kl = F.kl_div(F.log_softmax(logits.float(), 1), F.log_softmax(zs_logits.float(), 1), reduction="sum",
                  log_target=True) / logits.numel()
    return loss_ce + kl + loss_text + loss_image


def _side(kind, name, backbone, method, ids, batches, fixed_text, frozen, device, autocast, queue):
    """Run `steps` training steps of one side; put (losses, step times, peak memory) on the queue."""
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=LR, momentum=0.9, weight_decay=5e-4)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    method.train()
    losses, times = [], []
    for step, (images, labels) in enumerate(batches):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            if kind == "reference":
                loss = reference_loss(name, method, backbone, ids, images, labels, fixed_text)
                loss.backward()
            else:
                batch = {"images": images, "labels": labels}
                if frozen is not None:
                    batch["frozen_features"] = frozen[step]
                loss, _ = method.train_step(batch, method, lambda loss: loss.backward())
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
        print(f"{name} {kind} step {step + 1}/{len(batches)}: {times[-1]:.2f}s loss {losses[-1]:.6f}", flush=True)
    result = (losses, times, peak_memory_gb(device))
    if queue is None:
        return result
    queue.put(result)
    return None


def _run_forked(*args) -> tuple[list[float], list[float], float]:
    if args[-3] == "cuda":  # CUDA does not survive fork: run in process, peaks reset per side
        return _side(*args, None)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_side, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench_method(name, backbone, p, steps, autocast) -> dict:
    device = p["device"]
    classnames = [f"class number {i}" for i in range(p["classes"])]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # depth clamped on the tiny preset
        method = build_method(name, backbone, classnames, METHODS[name]).to(device)
        twin = build_method(name, backbone, classnames, METHODS[name]).to(device)
    twin.load_trainable_state(method.trainable_state())
    n_ctx = method.ctx.shape[0]
    ids = backbone.tokenize([f"a photo of a {c}." for c in classnames]).to(device)
    assert n_ctx <= 4
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(p["batch"], 3, *backbone.image_size, generator=g).to(device),
                torch.randint(p["classes"], (p["batch"],), generator=g).to(device)) for _ in range(steps)]
    fixed_text, frozen, cache_s = None, None, 0.0
    if name == "promptsrc":
        fixed_text = method.frozen_text()
        t0 = time.perf_counter()
        with torch.no_grad():  # what the feature cache computes once per item and view
            frozen = [F.normalize(backbone.encode_image(images).float(), dim=-1) for images, _ in batches]
        cache_s = (time.perf_counter() - t0) / steps
    ref_losses, ref_times, ref_peak = _run_forked("reference", name, backbone, method, ids, batches, fixed_text, None,
                                                  device, autocast)
    vl_losses, vl_times, vl_peak = _run_forked("vlprompt", name, backbone, twin, ids, batches, fixed_text, frozen,
                                               device, autocast)
    timed = slice(1, None) if steps > 1 else slice(None)  # the first step carries one-off warm-up
    ref_step = sum(ref_times[timed]) / len(ref_times[timed])
    vl_step = sum(vl_times[timed]) / len(vl_times[timed])
    return {
        "method": name, "config": METHODS[name], "depths": method.result_metadata()["prompt_depth"],
        "reference_step_s": ref_step, "vlprompt_step_s": vl_step, "speedup": ref_step / vl_step,
        "reference_step_times_s": ref_times, "vlprompt_step_times_s": vl_times,
        "frozen_features_once_per_batch_s": cache_s,
        "peak_memory_gb_reference": ref_peak, "peak_memory_gb_vlprompt": vl_peak,
        "losses_reference": ref_losses, "losses_vlprompt": vl_losses,
        "max_loss_diff": max(abs(a - b) for a, b in zip(ref_losses, vl_losses)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="steps per side (the first is left out of the mean)")
    parser.add_argument("--methods", default="maple,promptsrc")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    p = PRESETS[args.preset]
    torch.manual_seed(0)
    backbone = create_backbone(p["model"], device=p["device"])
    if p["precision"] == "bf16":
        def autocast():
            return torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext
    rows = [bench_method(name, backbone, p, args.steps, autocast) for name in args.methods.split(",")]
    figures = {"preset": args.preset, **p, "steps": args.steps, "rows": rows,
               "memory_note": "CPU: ru_maxrss of each side's forked process (weights shared at fork, counted in both)"}
    print()
    print(f"{'method':<11}{'ref step s':>11}{'vlp step s':>11}{'speed-up':>9}{'ref peak GB':>12}{'vlp peak GB':>12}"
          f"{'loss diff':>11}")
    for r in rows:
        print(f"{r['method']:<11}{r['reference_step_s']:>11.3f}{r['vlprompt_step_s']:>11.3f}{r['speedup']:>9.2f}"
              f"{r['peak_memory_gb_reference']:>12.2f}{r['peak_memory_gb_vlprompt']:>12.2f}{r['max_loss_diff']:>11.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
