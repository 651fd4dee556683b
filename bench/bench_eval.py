"""Zero-shot evaluation at encoder speed: images/s of the whole evaluation against images/s of the
bare image encoder, in one run.

full:  `evaluate_zero_shot` on files on disk: class text features computed once, then every image
       decoded, transformed, encoded (streamed by `extract_image_features`) and scored.
bare:  the image encoder alone (`encode_normalized`: bf16 autocast on CUDA, as the evaluation), same
       batch size, on the very tensors the eval transform makes from the same files (decoded and
       stacked before timing), under inference mode.

Ratio = full images/s / bare images/s (target >= 0.9). The two are timed alternately, --repeats
times each, and the best of each is kept, so load from other processes on the machine hits both
sides alike.

Scenarios:
  world   the embedded world model (`vlprompt-tiny`, weights "world", 64 px) on the
          world_colored_shapes test split (2000 PNG files, 100 classes), written by
          `api.world_data_root`.
  vitb16  a ViT-B-16-sized model (random weights, 224 px) on --vitb16-images generated 224 px JPEG
          files in class folders (`folder:` dataset, 10 classes).

    python bench/bench_eval.py                       # both scenarios, CPU
    python bench/bench_eval.py --scenario world --json out.json
    python bench/bench_eval.py --device cuda         # pinned memory, channels-last, bf16 on CUDA
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlprompt import api
from vlprompt.backbones import create_backbone
from vlprompt.data.classification import ImageItems
from vlprompt.data.folder import read_image_folder
from vlprompt.data.registry import load_dataset
from vlprompt.engine import features as features_module
from vlprompt.engine.zero_shot import evaluate_zero_shot


def write_images(folder: Path, n: int, classes: int, size: int, seed: int = 0) -> Path:
    """`n` smooth random RGB JPEGs of `size` px in `classes` class folders (idempotent)."""
    marker = folder / f".done-{n}-{classes}-{size}-{seed}"
    if marker.exists():
        return folder
    rng = np.random.default_rng(seed)
    for i in range(n):
        coarse = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.BILINEAR)
        noise = rng.integers(-20, 21, (size, size, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        out = folder / f"class_{i % classes:02d}" / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(out, quality=90)
    marker.write_text("ok")
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_encode(backbone, tensors: torch.Tensor, batch_size: int) -> float:
    """Seconds for `encode_image` over the pre-made tensors (already on the device)."""
    device = backbone.device
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        for start in range(0, len(tensors), batch_size):
            features_module.encode_normalized(backbone, tensors[start : start + batch_size])  # same precision as the eval
        sync(device)
        return time.perf_counter() - t0


def full_eval(backbone, dataset, batch_size: int, num_workers: int | None) -> tuple[float, dict]:
    device = backbone.device
    sync(device)
    t0 = time.perf_counter()
    kwargs = {} if num_workers is None else {"num_workers": num_workers}
    result = evaluate_zero_shot(backbone, dataset, "test", batch_size=batch_size, progress=False, **kwargs)
    sync(device)
    return time.perf_counter() - t0, result


def run_scenario(name: str, backbone, dataset, batch_size: int, repeats: int, num_workers: int | None) -> dict:
    items = dataset.split("test")
    n = len(items)
    # the exact tensors the evaluation feeds the encoder, made before timing
    made = ImageItems(items, backbone.eval_transform, dataset.source)
    tensors = torch.stack([made[i][0] for i in range(n)]).to(backbone.device)
    tensors = features_module.prepare_images(backbone, tensors)
    # warm-up: one small pass of each (allocator, kernels, lazy imports)
    bare_encode(backbone, tensors[: 2 * batch_size], batch_size)
    full_times, bare_times = [], []
    result = None
    for _ in range(repeats):
        bare_times.append(bare_encode(backbone, tensors, batch_size))
        seconds, result = full_eval(backbone, dataset, batch_size, num_workers)
        full_times.append(seconds)
    bare_ips, full_ips = n / min(bare_times), n / min(full_times)
    figures = {
        "scenario": name, "model": backbone.identity.name, "image_size": list(backbone.image_size),
        "device": str(backbone.device), "images": n, "classes": len(dataset.classnames),
        "batch_size": batch_size, "num_workers": features_module.resolve_num_workers(num_workers, backbone.device),
        "torch_threads": torch.get_num_threads(),
        "bare_images_per_s": bare_ips, "full_images_per_s": full_ips, "ratio": full_ips / bare_ips,
        "bare_seconds": bare_times, "full_seconds": full_times, "top1": result["metrics"]["top1"],
    }
    print(f"{name:<8} {figures['model']:<14} {n:>5} imgs  bare {bare_ips:>8.1f} img/s  "
          f"full {full_ips:>8.1f} img/s  ratio {figures['ratio']:.3f}  "
          f"(workers {figures['num_workers']}, best of {repeats})", flush=True)
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["world", "vitb16", "all"], default="all")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: automatic)")
    parser.add_argument("--vitb16-images", type=int, default=256)
    parser.add_argument("--data", default=None, help="folder for the generated data (default: a temp folder)")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    root = Path(args.data or tempfile.mkdtemp(prefix="vlprompt-bench-eval-"))
    out = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                       "cuda": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
           "scenarios": []}
    if args.scenario in ("world", "all"):
        backbone = create_backbone("vlprompt-tiny", "world", device=args.device)
        dataset = load_dataset("world_colored_shapes", api.world_data_root(root / "world"))
        out["scenarios"].append(run_scenario("world", backbone, dataset, args.batch_size, args.repeats, args.num_workers))
    if args.scenario in ("vitb16", "all"):
        backbone = create_backbone("ViT-B-16", device=args.device)
        folder = write_images(root / "vitb16", args.vitb16_images, 10, 224)
        dataset = read_image_folder(folder, name="generated224")
        out["scenarios"].append(run_scenario("vitb16", backbone, dataset, args.batch_size, args.repeats, args.num_workers))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
