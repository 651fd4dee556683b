#!/usr/bin/env python3
"""Extract the middle frame of every UCF-101 video into CoOp's ``UCF-101-midframes`` layout.

Input  (the official UCF101.rar, extracted):   UCF-101/<Class>/v_<Class>_gXX_cYY.avi
Output (what split_zhou_UCF101.json expects):  UCF-101-midframes/<Class>/v_<Class>_gXX_cYY.jpg

Needs ``ffmpeg`` and ``ffprobe`` on PATH (it calls them with subprocess); otherwise only the
Python standard library. The middle frame is taken at half the container duration reported by
ffprobe. CoOp did not publish its exact extraction procedure, so regenerated frames may differ
slightly from CoOp's ``UCF-101-midframes.zip``; prefer that zip when you can get it.

Example:
    python datasets/prepare_ucf101_midframes.py --videos /data/UCF-101 \\
        --out "$VLPROMPT_DATA/ucf101/UCF-101-midframes" --jobs 8
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov")


class PrepareError(Exception):
    pass


def find_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PrepareError(
            f"'{name}' was not found on PATH. Install ffmpeg (e.g. 'apt-get install ffmpeg' or "
            "'conda install -c conda-forge ffmpeg'), or download CoOp's UCF-101-midframes.zip instead."
        )
    return path


def list_videos(videos: Path) -> list[Path]:
    if not videos.is_dir():
        raise PrepareError(f"video folder {videos} does not exist (expected UCF-101/<Class>/*.avi)")
    found = sorted(p for p in videos.glob("*/*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not found:
        raise PrepareError(f"no videos found as {videos}/<Class>/*.avi; point --videos at the extracted 'UCF-101' folder")
    return found


def duration_seconds(ffprobe: str, video: Path) -> float:
    result = subprocess.run(
        [ffprobe, "-v", "error", "-show_entries", "format=duration", "-of", "default=noprint_wrappers=1:nokey=1", str(video)],
        capture_output=True,
        text=True,
        check=False,
    )
    text = result.stdout.strip()
    try:
        value = float(text)
    except ValueError:
        raise PrepareError(f"ffprobe could not read the duration of {video}: {result.stderr.strip() or text!r}") from None
    if value <= 0:
        raise PrepareError(f"ffprobe reports a non-positive duration ({value}) for {video}")
    return value


def extract_middle(ffmpeg: str, ffprobe: str, video: Path, target: Path, quality: int) -> None:
    middle = duration_seconds(ffprobe, video) / 2
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.stem + ".partial.jpg")
    result = subprocess.run(
        [
            ffmpeg,
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-ss",
            f"{middle:.3f}",
            "-i",
            str(video),
            "-frames:v",
            "1",
            "-q:v",
            str(quality),
            str(partial),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        raise PrepareError(f"ffmpeg failed on {video}: {result.stderr.strip() or 'no frame written'}")
    partial.replace(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Extract the middle frame of every UCF-101 video into CoOp's "
        "UCF-101-midframes/<Class>/<video>.jpg layout (needs ffmpeg and ffprobe on PATH).",
    )
    parser.add_argument("--videos", type=Path, required=True, help="extracted UCF-101 folder holding <Class>/v_*.avi")
    parser.add_argument("--out", type=Path, required=True, help="output folder, normally <root>/ucf101/UCF-101-midframes")
    parser.add_argument("--jobs", type=int, default=4, help="parallel ffmpeg processes (default 4)")
    parser.add_argument("--quality", type=int, default=2, help="ffmpeg JPEG quality -q:v, 2 (best) to 31 (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="re-extract frames that already exist")
    parser.add_argument("--dry-run", action="store_true", help="only count videos and planned outputs")
    args = parser.parse_args(argv)

    try:
        if args.jobs < 1:
            raise PrepareError("--jobs must be at least 1")
        if not 2 <= args.quality <= 31:
            raise PrepareError("--quality must be between 2 and 31")
        videos = list_videos(args.videos)
        plan = [(v, args.out / v.parent.name / (v.stem + ".jpg")) for v in videos]
        todo = [(v, t) for v, t in plan if args.overwrite or not t.is_file()]
        classes = len({v.parent.name for v in videos})
        print(f"{len(videos)} videos in {classes} classes; {len(todo)} frames to extract into {args.out}")
        if args.dry_run or not todo:
            return 0
        ffmpeg, ffprobe = find_tool("ffmpeg"), find_tool("ffprobe")
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    failures: list[str] = []

    def work(pair: tuple[Path, Path]) -> None:
        try:
            extract_middle(ffmpeg, ffprobe, pair[0], pair[1], args.quality)
        except PrepareError as error:
            failures.append(str(error))

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for done, _ in enumerate(pool.map(work, todo), start=1):
            if done % 500 == 0 or done == len(todo):
                print(f"  {done}/{len(todo)}", flush=True)

    if failures:
        print(f"error: {len(failures)} of {len(todo)} videos failed, e.g.:", file=sys.stderr)
        for line in failures[:5]:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("done; verify with: vlprompt datasets check ucf101 --root <root>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
