"""CLIP_benchmark round trip, both directions, on the embedded world (figures, not a speed benchmark).

vlprompt -> CLIP_benchmark: the world CLIP exported as a plain open_clip checkpoint (`export-backbone`)
and world_textures' test split exported as webdataset shards (`datasets export-wds`) are evaluated by
CLIP_benchmark's own ``clip_benchmark eval``; vlprompt's ``--format clip_benchmark`` files are read by
CLIP_benchmark's own ``clip_benchmark build``.
CLIP_benchmark -> vlprompt: CLIP_benchmark's result files are read back (`read_clip_benchmark`) and its
template file (``en_zeroshot_classification_templates.json``, extended with entries for the three sets,
one of them CuPL descriptions) is given to vlprompt as ``--templates``.

Three copies of the split: ``world_textures`` (its own template), ``textures_in80`` (no entry: both tools
fall back to the file's imagenet1k templates, CLIP's 80) and ``textures_cupl`` (per-class descriptions).
The figures match when both tools compute the same thing.

CLIP_benchmark runs in a subprocess whose PYTHONPATH is --cb-path (it needs numpy < 2.4, requests,
scikit-learn, pycocotools, pycocoevalcap; install them with ``pip install --target DIR``):

    python bench/interop_clip_benchmark.py --cb-path /opt/cb:/opt/cbdeps --json bench/results/interop_clip_benchmark.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from vlprompt.backbones import load_backbone
from vlprompt.data.webdataset_reader import read_wds_dataset
from vlprompt.data.world import get_dataset
from vlprompt.engine.zero_shot import evaluate_zero_shot
from vlprompt.interop.clip_benchmark import read_clip_benchmark, write_clip_benchmark
from vlprompt.interop.open_clip_export import export_open_clip
from vlprompt.interop.webdataset_export import export_wds

CUPL = {  # CuPL-style descriptions of the world's colours (hand-written; different counts per class)
    "red": ["A red texture, the colour of a ripe tomato.", "Something bright red."],
    "orange": ["An orange pattern, like the peel of an orange.", "A warm orange texture.", "Orange coloured."],
    "yellow": ["A yellow texture, like a lemon.", "Something bright yellow."],
    "green": ["A green pattern, the colour of grass.", "Something green."],
    "cyan": ["A cyan texture, a light blue-green.", "Something cyan."],
    "blue": ["A deep blue texture, like the sea.", "Something blue."],
    "purple": ["A purple pattern, like a plum.", "Something purple.", "A violet texture."],
    "pink": ["A pink texture, like a flamingo.", "Something pink."],
    "brown": ["A brown texture, like wood.", "Something brown."],
    "white": ["A white texture, like snow.", "Something white."],
}
SETS = ("world_textures", "textures_in80", "textures_cupl")


def run_clip_benchmark(cb_path: str, args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": cb_path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = "import sys; from clip_benchmark.cli import main; sys.argv = ['clip_benchmark'] + sys.argv[1:]; main()"
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"clip_benchmark {args[0]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def clip_benchmark_templates(cb_path: str) -> dict:
    code = "import clip_benchmark, os; print(os.path.dirname(clip_benchmark.__file__))"
    env = {**os.environ, "PYTHONPATH": cb_path}
    folder = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    return json.loads(Path(folder, "datasets", "en_zeroshot_classification_templates.json").read_text())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cb-path", required=True, help="PYTHONPATH for CLIP_benchmark's side")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--amp", action="store_true", help="let CLIP_benchmark use its default bf16 autocast")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="vlprompt-cb-"))

    backbone = load_backbone("vlprompt-tiny", "world", "cpu")
    export_open_clip(backbone, work / "open_clip")
    textures = get_dataset("world_textures")
    export_wds(textures, work / "wds" / "world_textures", splits=["test"])
    for copy in SETS[1:]:
        shutil.copytree(work / "wds" / "world_textures", work / "wds" / copy, dirs_exist_ok=True)
    templates = clip_benchmark_templates(args.cb_path)
    templates.update({"world_textures": ["a photo of a {c}."], "textures_cupl": CUPL})
    template_file = work / "templates.json"
    template_file.write_text(json.dumps(templates))

    # vlprompt, on the shards, with CLIP_benchmark's template file
    ours = []
    for name in SETS:
        dataset = read_wds_dataset(work / "wds" / name)
        result = evaluate_zero_shot(backbone, dataset, templates=str(template_file), progress=False)
        result["dataset"] = f"wds/{name}"
        ours.append(result)
    ours_files = write_clip_benchmark(ours, str(work / "vlprompt" / "{dataset}_{model}_{pretrained}.json"))

    # CLIP_benchmark's own eval on the exported model and shards, and its own build over vlprompt's files.
    # Its default mixed precision is bf16 autocast, also on the CPU; vlprompt evaluates in fp32 there.
    amp = [] if args.amp else ["--no_amp"]
    (work / "cb").mkdir(exist_ok=True)
    run_clip_benchmark(
        args.cb_path,
        ["eval", "--dataset", *[f"wds/{n}" for n in SETS], "--dataset_root", str(work / "wds" / "{dataset}"),
         "--model", f"local-dir:{work / 'open_clip'}", "--pretrained", "none", "--custom_template_file", str(template_file),
         "--output", str(work / "cb" / "{dataset}.json"), "--batch_size", "64", "--num_workers", "0", *amp],
        work,
    )  # fmt: skip
    run_clip_benchmark(args.cb_path, ["build", *map(str, ours_files), "--output", str(work / "benchmark.csv")], work)
    with open(work / "benchmark.csv", newline="") as handle:
        rows = {row["dataset"]: row for row in csv.DictReader(handle)}

    figures = {"clip_benchmark_amp": args.amp, "sets": {}}
    for name, result in zip(SETS, ours):
        theirs = read_clip_benchmark(work / "cb" / f"{name}.json")
        row = rows[f"wds/{name}"]
        figures["sets"][name] = {
            "templates": len(result["templates"]),
            "vlprompt": {k: round(v, 2) for k, v in result["metrics"].items() if k != "n_images"},
            "clip_benchmark_eval": {k: round(v, 2) for k, v in theirs["metrics"].items()},
            "clip_benchmark_build_acc1": round(100 * float(row["acc1"]), 2),
        }
    figures["equal"] = all(
        s["vlprompt"] == s["clip_benchmark_eval"] and s["clip_benchmark_build_acc1"] == s["vlprompt"]["top1"]
        for s in figures["sets"].values()
    )
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
