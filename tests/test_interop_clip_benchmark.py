"""The CLIP_benchmark round trip against CLIP_benchmark itself (bench/interop_clip_benchmark.py).

CLIP_benchmark is not a dependency (its side needs numpy < 2.4, scikit-learn, pycocotools...): point
``VLPROMPT_CLIP_BENCHMARK_PATH`` at a PYTHONPATH where it is installed (``pip install --target DIR
clip_benchmark "numpy<2.4" requests scikit-learn pycocotools pycocoevalcap``) to run this test; without
it the test is skipped. The format itself is tested without CLIP_benchmark in test_interop_export.py.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CB_PATH = os.environ.get("VLPROMPT_CLIP_BENCHMARK_PATH", "")


def _clip_benchmark_importable() -> bool:
    if not CB_PATH:
        return False
    env = {**os.environ, "PYTHONPATH": CB_PATH}
    return subprocess.run([sys.executable, "-c", "import clip_benchmark.cli"], env=env, capture_output=True).returncode == 0


@pytest.mark.skipif(not _clip_benchmark_importable(), reason="CLIP_benchmark not installed (set VLPROMPT_CLIP_BENCHMARK_PATH)")
def test_clip_benchmark_round_trip_both_directions(tmp_path):
    path = Path(__file__).resolve().parents[1] / "bench" / "interop_clip_benchmark.py"
    spec = importlib.util.spec_from_file_location("interop_clip_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.main(["--cb-path", CB_PATH, "--work", str(tmp_path)])
    assert figures["equal"], figures
    assert figures["sets"]["world_textures"]["vlprompt"]["top1"] == 70.33
