#!/usr/bin/env bash
# All GPU figures in one prepared run (CUDA, bf16, ViT-B-16): CoOp (1000 classes), CoCoOp memory, MaPLe and
# PromptSRC steps (100 classes, batch 4),
# evaluation at encoder speed. Writes bench/results/gpu_*.json. Run from the repository root with
# the project installed (make test installs it): bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p bench/results
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee bench/results/gpu_device.txt
$PY bench/bench_coop.py --preset gpu --ref-steps 4 --json bench/results/gpu_coop.json
$PY bench/bench_cocoop_memory.py --preset issue --device cuda --json bench/results/gpu_cocoop_memory.json
$PY bench/bench_deep.py --preset gpu --steps 4 --json bench/results/gpu_deep.json
$PY bench/bench_eval.py --scenario vitb16 --device cuda --json bench/results/gpu_eval.json
echo "figures in bench/results/gpu_*.json"
