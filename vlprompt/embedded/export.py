"""Write the embedded world's downstream datasets to disk, in the real on-disk formats.

CoOp layout for classification (`world_shapes`, `world_textures`, `world_colored_shapes`) and the
CZSL `compositional-split-natural` layout for `world_czsl`, so the ordinary readers and the
end-to-end paths are exercised exactly as with real benchmarks. Each dataset is rendered into a
temporary folder and renamed into place with a marker file; a killed run never leaves half a
dataset, and a complete one is never rewritten unless `force`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlprompt.embedded.render import render_scene
from vlprompt.embedded.scene import sample_scene
from vlprompt.embedded.styles import DATASET_STYLES, DATASET_TINTS, apply_tint
from vlprompt.embedded.vocab import COLOUR_NAMES, SHAPES

MARKER = ".vlprompt-complete.json"
FORMAT_VERSION = 3  # 2: small-shape and colour-cast shifts; 3: uncompressed PNG (decoding at encoder speed)
CZSL_SPLIT = "compositional-split-natural"


@dataclass(frozen=True)
class ClassSpec:
    """One classification class: its name, its image folder, and the scene attributes it fixes."""

    name: str
    folder: str
    fixed: dict[str, str]


def _classes(name: str) -> list[ClassSpec]:
    if name == "world_shapes":
        return [ClassSpec(s, s, {"shape": s}) for s in SHAPES]
    if name == "world_textures":
        # Patterned shapes labelled by colour: the world CLIP barely separates patterns zero-shot
        # (~30% on 4 classes), while colour under pattern + shift lands mid-range (~60%).
        return [ClassSpec(c, c, {"colour": c}) for c in COLOUR_NAMES]
    if name == "world_colored_shapes":
        return [ClassSpec(f"{c} {s}", f"{c}_{s}", {"colour": c, "shape": s}) for c in COLOUR_NAMES for s in SHAPES]
    raise KeyError(name)


# images per class: (train, val, test)
CLASSIFICATION_SIZES: dict[str, tuple[int, int, int]] = {
    "world_shapes": (24, 4, 30),
    "world_textures": (24, 4, 30),
    "world_colored_shapes": (20, 4, 20),
}
CZSL_IMAGES_PER_PAIR = {"train": 20, "val": 4, "test": 10}
CZSL_UNSEEN = {"val": 15, "test": 25}  # unseen pairs per split; as many seen pairs join them


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=0)


def _write_classification(folder: Path, name: str, rng: np.random.Generator) -> None:
    style = DATASET_STYLES[name]
    sizes = CLASSIFICATION_SIZES[name]
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, spec in enumerate(_classes(name)):
        for split_name, count in zip(split, sizes):
            for i in range(count):
                rel = f"{spec.folder}/{split_name}_{i:03d}.png"
                scene = sample_scene(rng, style, **spec.fixed)
                _save_png(apply_tint(render_scene(scene, rng), DATASET_TINTS[name]), folder / "images" / rel)
                split[split_name].append([rel, label, spec.name])
    (folder / f"split_{name}.json").write_text(json.dumps(split, indent=1))


def czsl_pair_splits(rng: np.random.Generator) -> dict[str, list[tuple[str, str]]]:
    """Seen (train) pairs and val/test pairs with unseen ones; every attr and obj is seen in train."""
    pairs = [(c, s) for c in COLOUR_NAMES for s in SHAPES]
    n_unseen = CZSL_UNSEEN["val"] + CZSL_UNSEEN["test"]
    while True:  # redraw until training still covers every attribute and object
        order = rng.permutation(len(pairs))
        unseen = [pairs[i] for i in order[:n_unseen]]
        seen = [pairs[i] for i in order[n_unseen:]]
        if {a for a, _ in seen} == set(COLOUR_NAMES) and {o for _, o in seen} == set(SHAPES):
            break
    val_unseen, test_unseen = unseen[: CZSL_UNSEEN["val"]], unseen[CZSL_UNSEEN["val"] :]
    pick = rng.permutation(len(seen))
    val_seen = [seen[i] for i in pick[: CZSL_UNSEEN["val"]]]
    test_seen = [seen[i] for i in pick[CZSL_UNSEEN["val"] : CZSL_UNSEEN["val"] + CZSL_UNSEEN["test"]]]
    return {"train": seen, "val": val_seen + val_unseen, "test": test_seen + test_unseen}


def _write_czsl(folder: Path, name: str, rng: np.random.Generator) -> None:
    style = DATASET_STYLES[name]
    splits = czsl_pair_splits(rng)
    (folder / CZSL_SPLIT).mkdir(parents=True)
    metadata = []
    for split_name, pairs in splits.items():
        lines = "".join(f"{a} {o}\n" for a, o in pairs)
        (folder / CZSL_SPLIT / f"{split_name}_pairs.txt").write_text(lines)
        for attr, obj in pairs:
            for i in range(CZSL_IMAGES_PER_PAIR[split_name]):
                rel = f"{attr}_{obj}/{split_name}_{i:03d}.png"
                scene = sample_scene(rng, style, colour=attr, shape=obj)
                _save_png(apply_tint(render_scene(scene, rng), DATASET_TINTS[name]), folder / "images" / rel)
                metadata.append({"image": rel, "attr": attr, "obj": obj, "set": split_name})
    torch.save(metadata, folder / f"metadata_{CZSL_SPLIT}.t7")


WRITERS: dict[str, Callable[[Path, str, np.random.Generator], None]] = {
    "world_shapes": _write_classification,
    "world_textures": _write_classification,
    "world_colored_shapes": _write_classification,
    "world_czsl": _write_czsl,
}
WORLD_DATASETS: tuple[str, ...] = tuple(WRITERS)


def is_complete(folder: Path, seed: int) -> bool:
    """True if `folder` holds a finished export for `seed` and this format version."""
    marker = folder / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("seed") == seed and info.get("version") == FORMAT_VERSION


def write_world_datasets(
    root: Path | str, seed: int = 0, force: bool = False, names: Sequence[str] = WORLD_DATASETS, log: bool = True
) -> dict[str, Path]:
    """Render the world datasets under `root` (skipping complete ones) and return their folders; with
    `log`, a line on stderr before and after each set written."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for index, name in enumerate(WORLD_DATASETS):
        if name not in names:
            continue
        final = root / name
        out[name] = final
        if not force and is_complete(final, seed):
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
        started = time.perf_counter()
        if log:  # first use takes 20-30 s for all sets: say what is happening
            print(f"writing the embedded world dataset {name} to {final} (first use) ...", file=sys.stderr, flush=True)
        try:
            rng = np.random.default_rng([seed, index])
            WRITERS[name](tmp, name, rng)
            (tmp / MARKER).write_text(json.dumps({"seed": seed, "version": FORMAT_VERSION, "name": name}))
            if final.exists():  # stale, incomplete or forced: move aside, then remove
                old = final.with_name(f".{name}.old-{os.getpid()}")
                os.replace(final, old)
                shutil.rmtree(old)
            os.replace(tmp, final)
            if log:
                print(f"  {name}: done [{time.perf_counter() - started:.1f}s]", file=sys.stderr, flush=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return out
