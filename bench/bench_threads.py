"""Intra-op threads on a small model: CoOp on world_colored_shapes with 1 and with N threads, on an idle
machine and beside one busy core (a `yes > /dev/null`-like process), in one run.

Each setting is one `vlprompt train` subprocess (world model, 16 shots, `--epochs` epochs, its own
feature cache warmed first so that only training and evaluation are timed). The ratio N-threads time /
1-thread time is what `vlprompt.threads` decides from: > 1 means one thread wins.

    python bench/bench_threads.py                       # epochs 5, threads 1 vs 2
    python bench/bench_threads.py --epochs 2 --json bench/results/threads_cpu.json

The load average is printed with each row: the machine may be shared, so compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _train(threads: int, epochs: int, out: Path, cache: Path) -> tuple[float, float]:
    """(seconds, top-1) of one `vlprompt train` run with `threads` intra-op threads."""
    env = {**os.environ, "VLPROMPT_CACHE": str(cache), "OMP_NUM_THREADS": str(threads)}
    argv = [sys.executable, "-m", "vlprompt", "train", "--config", "experiments/world_coop.yaml", "--threads", str(threads),
            "dataset.name=world_colored_shapes", f"train.epochs={epochs}", f"output_dir={out}", "train.progress=false"]
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "experiment.json").read_text())["metrics"]["all"]["top1"]


def _busy_core() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="the multi-thread setting compared with 1")
    parser.add_argument("--cache", default=None, help="feature/data cache (default: $VLPROMPT_CACHE or a temp folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops us: the busy process goes too
    cache = Path(args.cache or os.environ.get("VLPROMPT_CACHE") or tempfile.mkdtemp(prefix="vlprompt-bench-"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _train(1, 1, Path(tmp) / "warm", cache)  # datasets + feature cache, not timed
        for condition in ("idle", "busy core"):
            busy = _busy_core() if condition == "busy core" else None
            try:
                times = {}
                for threads in (1, args.threads):
                    seconds, top1 = _train(threads, args.epochs, Path(tmp) / f"{condition}-{threads}", cache)
                    times[threads] = seconds
                    rows.append({"condition": condition, "threads": threads, "seconds": round(seconds, 2),
                                 "top1": top1, "loadavg": os.getloadavg()[0]})
                    print(f"{condition:<10} threads {threads}: {seconds:7.1f} s  top-1 {top1:.2f}  "
                          f"(load average {os.getloadavg()[0]:.2f})", flush=True)
                print(f"{condition:<10} {args.threads} threads / 1 thread: {times[args.threads] / times[1]:.2f}x time")
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    if args.json:
        Path(args.json).write_text(json.dumps({"epochs": args.epochs, "cpus": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
