"""Study: PERSOMA-style personalised prompts on the embedded world (seed_systems_b.md, section 5).

A "user" is an image style (a colour cast, a new background, smaller shapes: image transforms applied to
world_colored_shapes images) and 10 of its 100 classes. The adapter (persoma: shared context + resampler
of the user's example features) is trained episodically over users of 7 training styles (train split);
it is evaluated on users of 3 held-out styles (test split), each giving 5 unlabelled example images, and
(a diagnostic) on new users of 2 training styles.
Compared: zero-shot, the adapter's shared context alone (no examples), the adapter with the user's
examples (no gradient step), and CoOp trained per user on 2 labelled shots per class; time per user.

With ``random=N`` the adapter trains over N random styles (colour casts, sizes, backgrounds drawn from a
continuous family) plus the two diagnostic styles, 4 train images per class each.

Run: PYTHONPATH=. python docs/results/seed_systems_b/study_persoma.py [seeds] [random=N]  (~5 min per seed)
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vlprompt import api
from vlprompt.data.images import load_image
from vlprompt.methods import build_method
from vlprompt.prompts.handcrafted import text_classifier


@dataclass(frozen=True)
class Style:
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    shrink: float = 1.0
    background: tuple[int, int, int] | None = None

    def __call__(self, image: Image.Image) -> Image.Image:
        arr = np.asarray(image.convert("RGB")).astype(np.float32)
        corner = arr[0, 0].copy()
        if self.background is not None:
            arr[np.abs(arr - corner).sum(-1) < 40] = self.background
            corner = np.asarray(self.background, dtype=np.float32)
        arr = np.clip(arr * np.asarray(self.tint, dtype=np.float32), 0, 255)
        out = Image.fromarray(arr.astype(np.uint8))
        if self.shrink < 1.0:
            w, h = out.size
            small = out.resize((max(1, int(w * self.shrink)), max(1, int(h * self.shrink))))
            fill = tuple(int(v) for v in np.clip(corner * np.asarray(self.tint), 0, 255))
            canvas = Image.new("RGB", (w, h), fill)
            canvas.paste(small, ((w - small.size[0]) // 2, (h - small.size[1]) // 2))
            out = canvas
        return out


TRAIN_STYLES = {
    "plain": Style(), "warm": Style(tint=(1.25, 1.0, 0.6)), "cool": Style(tint=(0.7, 0.9, 1.3)),
    "green": Style(tint=(0.8, 1.25, 0.8)), "dark": Style(tint=(0.55, 0.55, 0.55)), "small": Style(shrink=0.7),
    "navy_background": Style(background=(20, 30, 80)),
}
TEST_STYLES = {
    "magenta_cast": Style(tint=(1.2, 0.7, 1.2)),
    "olive_background_small": Style(background=(90, 95, 40), shrink=0.75),
    "dim_warm": Style(tint=(0.9, 0.75, 0.5)),
}
N_CLASSES, N_EXAMPLES, COOP_SHOTS, EPISODES, USERS_PER_STYLE = 10, 5, 2, 1500, 4
CLIP_NORM = 0.0  # gradient-norm clipping of the episodes (0: none); `clip=X` on the command line
SEEN_STYLES = ["warm", "small"]  # training styles, evaluated on new images and users (a diagnostic)


def random_styles(n: int, seed: int = 100) -> dict[str, Style]:
    """`n` training users' styles drawn from a continuous family: a colour cast, sometimes smaller shapes,
    sometimes a new background (the held-out styles are fixed points outside the draw's seed)."""
    g = np.random.default_rng(seed)
    styles = {}
    for i in range(n):
        tint = tuple(float(v) for v in g.uniform(0.7, 1.3, 3))
        shrink = float(g.uniform(0.6, 1.0)) if g.random() < 0.5 else 1.0
        grey = int(g.integers(20, 200))  # muted backgrounds: a random colour could match a shape's colour
        background = tuple(int(np.clip(grey + v, 0, 255)) for v in g.integers(-20, 21, 3)) if g.random() < 0.3 else None
        styles[f"random_{i}"] = Style(tint=tint, shrink=shrink, background=background)  # type: ignore[arg-type]
    return styles


def encode(backbone, items, style: Style) -> torch.Tensor:
    feats = []
    with torch.inference_mode():
        for i in range(0, len(items), 128):
            pixels = torch.stack([backbone.eval_transform(style(load_image(it.path))) for it in items[i : i + 128]])
            feats.append(F.normalize(backbone.encode_image(pixels).float(), dim=-1))
    return torch.cat(feats).clone()


def per_class(items, k: int, seed: int):
    by_class: dict[int, list] = {}
    for it in items:
        by_class.setdefault(int(it.label), []).append(it)
    g = np.random.default_rng(seed)
    return [it for c in sorted(by_class) for it in g.permutation(np.array(by_class[c], dtype=object))[:k]]


def acc(logits, labels) -> float:
    return float((logits.argmax(-1) == labels).float().mean()) * 100


def fit_coop(backbone, classes, feats, labels, seed: int, epochs: int = 30):
    torch.manual_seed(seed)
    coop = build_method("coop", backbone, classes, {"n_ctx": 4, "ctx_init": "a photo of a"})
    opt = torch.optim.AdamW([coop.ctx], lr=0.01, weight_decay=0.0)
    coop.train()
    for _ in range(epochs):
        opt.zero_grad()
        loss, _ = coop.loss(coop({"features": feats}), {"labels": labels})
        loss.backward()
        opt.step()
    return coop.eval()


def run(seed: int, backbone, dataset, train_feats, test_feats, train_labels, test_labels) -> dict:
    classes = list(dataset.classnames)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    adapter = build_method("persoma", backbone, classes[:N_CLASSES], {"ctx_init": "a photo of a", "init_seed": seed})
    opt = torch.optim.AdamW([p for p in adapter.parameters() if p.requires_grad], lr=0.002, weight_decay=0.0)
    names = list(TRAIN_STYLES)
    start = time.perf_counter()
    last: list[float] = []
    adapter.train()
    for _ in range(EPISODES):
        style = names[int(torch.randint(len(names), (1,), generator=g))]
        picked = torch.randperm(len(classes), generator=g)[:N_CLASSES]
        feats, labels = train_feats[style], train_labels
        mask = torch.isin(labels, picked)
        idx = torch.nonzero(mask).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        support, query = idx[:N_EXAMPLES], idx[N_EXAMPLES:]
        remap = {int(c): i for i, c in enumerate(picked)}
        opt.zero_grad()
        loss, stats = adapter.episode_loss(feats[support], [classes[int(c)] for c in picked], feats[query],
                                       torch.tensor([remap[int(y)] for y in labels[query]]))
        loss.backward()
        if CLIP_NORM:
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), CLIP_NORM)
        opt.step()
        last.append(stats["acc"])
    adapter.eval()
    result = {"seed": seed, "adapter_train_seconds": round(time.perf_counter() - start, 1), "styles": {},
              "train_episode_acc_last100": round(statistics.mean(last[-100:]), 2)}
    print(seed, "train episode acc (last 100)", result["train_episode_acc_last100"], file=sys.stderr, flush=True)
    for style in [*TEST_STYLES, *SEEN_STYLES]:
        rows = {"zero_shot": [], "shared_context": [], "adapter": [], "coop_per_user": [],
                "adapter_seconds": [], "coop_seconds": []}
        feats, labels = test_feats[style], test_labels
        for _ in range(USERS_PER_STYLE):
            picked = torch.randperm(len(classes), generator=g)[:N_CLASSES]
            user_classes = [classes[int(c)] for c in picked]
            remap = {int(c): i for i, c in enumerate(picked)}
            idx = torch.nonzero(torch.isin(labels, picked)).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            y = torch.tensor([remap[int(v)] for v in labels[idx]])
            examples = idx[:N_EXAMPLES]  # the user's unlabelled examples (not scored)
            shots = torch.cat([torch.nonzero(y == c).flatten()[:COOP_SHOTS] for c in range(N_CLASSES)])
            scored = torch.ones(len(idx), dtype=torch.bool)
            scored[:N_EXAMPLES] = False
            scored[shots] = False  # neither method is scored on images it was given
            q, qy = feats[idx][scored], y[scored]
            with torch.no_grad():
                rows["zero_shot"].append(acc(q @ text_classifier(backbone, user_classes, [dataset.template]).t(), qy))
                adapter.set_classnames(user_classes)
                adapter.set_user_examples(None)
                rows["shared_context"].append(acc(q @ adapter.class_features().t(), qy))
                t0 = time.perf_counter()
                adapter.set_user_examples(feats[examples])
                text = adapter.class_features()
                rows["adapter_seconds"].append(time.perf_counter() - t0)
                rows["adapter"].append(acc(q @ text.t(), qy))
            t0 = time.perf_counter()
            coop = fit_coop(backbone, user_classes, feats[idx][shots], y[shots], seed)
            rows["coop_seconds"].append(time.perf_counter() - t0)
            with torch.no_grad():
                rows["coop_per_user"].append(acc(q @ coop.class_features().t(), qy))
        result["styles"][style] = {k: round(statistics.mean(v), 3) for k, v in rows.items()}
        print(seed, style, result["styles"][style], file=sys.stderr, flush=True)
    return result


def main() -> None:
    torch.set_num_threads(1)
    args = sys.argv[1:]
    n_random = next((int(a.split("=")[1]) for a in args if a.startswith("random=")), 0)
    seeds = [int(a) for a in args if a.isdigit()] or [1, 2, 3]
    global CLIP_NORM
    CLIP_NORM = next((float(a.split("=")[1]) for a in args if a.startswith("clip=")), 0.0)
    if n_random:  # many users: random styles instead of the 7 named ones (SEEN_STYLES stay as diagnostics)
        global TRAIN_STYLES
        TRAIN_STYLES = {**random_styles(n_random), **{k: TRAIN_STYLES[k] for k in SEEN_STYLES}}
    backbone = api.load_backbone("vlprompt-tiny", "world", "cpu")
    dataset = api.get_dataset("world_colored_shapes")
    train_items = per_class(dataset.split("train"), 4 if n_random else 8, 0)
    test_items = per_class(dataset.split("test"), 12, 0)
    t0 = time.perf_counter()
    cache = Path(os.environ.get("PERSOMA_FEATURE_CACHE", "")) if os.environ.get("PERSOMA_FEATURE_CACHE") else None
    if cache is not None and cache.exists():
        train_feats, test_feats = torch.load(cache)
    else:
        train_feats = {name: encode(backbone, train_items, style) for name, style in TRAIN_STYLES.items()}
        test_feats = {name: encode(backbone, test_items, style) for name, style in TEST_STYLES.items()}
        test_feats.update({name: encode(backbone, test_items, TRAIN_STYLES[name]) for name in SEEN_STYLES})
        if cache is not None:
            torch.save((train_feats, test_feats), cache)
    print(f"encoded styles in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    train_labels = torch.tensor([int(it.label) for it in train_items])
    test_labels = torch.tensor([int(it.label) for it in test_items])
    results = [run(s, backbone, dataset, train_feats, test_feats, train_labels, test_labels) for s in seeds]
    name = f"persoma_random{n_random}.json" if n_random else "persoma.json"
    Path(__file__).with_name(name).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
