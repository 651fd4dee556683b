"""Miniature copies of the CZSL layouts (for tests and for trying the tools without downloads).

Each flavour mimics its real release: MIT-States (``images/<attr> <obj>/`` renamed to ``_``,
lower-case names), UT-Zappos (reorganised ``images/<attr>_<obj>/``, dotted names such as
``Faux.Fur`` / ``Boots.Ankle``), C-GQA updated (flat ``images/<id>.jpg``, underscore names such as
``traffic_light``). Images are tiny solid colours whose hue depends on the attribute and whose
brightness depends on the object, so a model can learn something from them.
"""

from __future__ import annotations

import colorsys
import random
from pathlib import Path

import torch
from PIL import Image

FLAVOURS = {
    "mit-states": {
        "attrs": ["ancient", "broken", "cooked", "wet"],
        "objs": ["apple", "bridge", "coin"],
        "image": lambda a, o, i: f"{a}_{o}/img_{i}.jpg",
    },
    "ut-zappos": {
        "attrs": ["Canvas", "Faux.Fur", "Leather", "Patent.Leather"],
        "objs": ["Boots.Ankle", "Shoes.Flats", "Slippers"],
        "image": lambda a, o, i: f"{a}_{o}/{i}.jpg",
    },
    "cgqa": {
        "attrs": ["black_and_white", "red", "wooden", "tall"],
        "objs": ["traffic_light", "chair", "tree"],
        "image": lambda a, o, i: f"{abs(hash((a, o, i))) % 10**9}.jpg",
    },
}


def write_miniature(root: str | Path, flavour: str = "mit-states", per_pair: int = 2, seed: int = 0,
                    split_dir: str = "compositional-split-natural", image_size: int = 16,
                    with_pair_files: bool = True, extra_na: bool = True) -> Path:
    """Write a miniature dataset; returns its root. 12 pairs: 6 train, 3 val-unseen, 3 test-unseen;
    val/test also contain seen pairs (as in the real splits)."""
    spec = FLAVOURS[flavour]
    root = Path(root)
    rng = random.Random(seed)
    attrs, objs = spec["attrs"], spec["objs"]
    all_pairs = [(a, o) for a in attrs for o in objs]
    rng.shuffle(all_pairs)
    train, val_u, test_u = all_pairs[:6], all_pairs[6:9], all_pairs[9:12]
    val = train[:2] + val_u
    test = train[2:4] + test_u
    entries = []
    counter = 0
    for phase, pairs in (("train", train), ("val", val), ("test", test)):
        for a, o in pairs:
            for _ in range(per_pair):
                name = spec["image"](a, o, counter) if flavour != "cgqa" else f"{counter:06d}.jpg"
                counter += 1
                path = root / "images" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                h = attrs.index(a) / len(attrs)
                v = 0.4 + 0.5 * objs.index(o) / len(objs)
                r, g, b = (int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.8, v))
                Image.new("RGB", (image_size, image_size), (r, g, b)).save(path)
                entries.append({"image": name, "attr": a, "obj": o, "set": phase})
    if extra_na:
        entries.append({"image": "missing.jpg", "attr": "NA", "obj": objs[0], "set": "train"})
        entries.append({"image": "missing2.jpg", "attr": attrs[0], "obj": objs[0], "set": "NA"})
    torch.save(entries, root / f"metadata_{split_dir}.t7")
    if with_pair_files:
        out = root / split_dir
        out.mkdir(parents=True, exist_ok=True)
        for phase, pairs in (("train", train), ("val", val), ("test", test)):
            # file order deliberately unsorted: train labels must follow it
            (out / f"{phase}_pairs.txt").write_text("".join(f"{a} {o}\n" for a, o in pairs))
    return root
