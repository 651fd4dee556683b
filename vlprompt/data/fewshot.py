"""Few-shot sampling (CoOp's K images per class) and split files that make a sample repeatable.

CoOp draws its few-shot set with the global ``random`` state, so the images a seed selects depend on
the order classes and items were listed in and on every earlier draw. Here each class gets its own
generator derived from ``(seed, salt, classname)`` and its items are sorted by path first: the images
picked for a class depend only on the seed and that class's own items. The sample is then written
to a JSON split file (relative paths) so a later run, on this machine or another, reads back exactly
the same images instead of re-sampling.

``sampler="dassl"`` instead draws exactly as Dassl's ``DatasetBase.generate_fewshot_dataset`` does in
the CoOp-family repositories (`sample_dassl`): the same seed then selects the same images as the
papers' runs, given the same split file (CoOp's ``split_zhou_*.json``, read in its order).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlprompt.data.classification import ClassificationDataset, Item, parse_split_entry
from vlprompt.errors import VLPromptError
from vlprompt.paths import atomic_path, read_json

logger = logging.getLogger(__name__)

SPLIT_FILE_VERSION = 1
VAL_SHOTS_CAP = 4  # CoOp: val set is min(shots, 4) images per class
SAMPLERS = ("vlprompt", "dassl")


def _check_shots(shots: int) -> None:
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise VLPromptError(f"shots must be a positive integer (e.g. 1, 2, 4, 8, 16), got {shots!r}")


def _class_rng(seed: int, salt: str, classname: str) -> random.Random:
    """A generator for one class, independent of every other class and of Python's hash seed."""
    digest = hashlib.sha256(f"{seed}\x00{salt}\x00{classname}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _by_class(items: Sequence[Item]) -> dict[int, list[Item]]:
    groups: dict[int, list[Item]] = {}
    for item in items:
        group = groups.setdefault(item.label, [])
        if group and group[0].classname != item.classname:
            raise VLPromptError(
                f"label {item.label} has two class names, {group[0].classname!r} and {item.classname!r} "
                f"(at {item.path}); each label must name one class"
            )
        group.append(item)
    return groups


def short_classes(items: Sequence[Item], shots: int) -> dict[str, int]:
    """Classes with fewer than `shots` items, as ``{classname: count}`` (they contribute all they have)."""
    _check_shots(shots)
    return {group[0].classname: len(group) for _, group in sorted(_by_class(items).items()) if len(group) < shots}


def sample_few_shot(items: Sequence[Item], shots: int, seed: int, salt: str = "train") -> list[Item]:
    """K items per class, chosen reproducibly from `seed`; classes with fewer than K give all of theirs.

    The result is ordered by label, then path. `salt` separates independent draws with the same seed
    (the train and val samples). Short classes are logged as a warning; `short_classes` lists them.
    """
    _check_shots(shots)
    chosen: list[Item] = []
    short: dict[str, int] = {}
    for _, group in sorted(_by_class(items).items()):
        group = sorted(group, key=lambda item: str(item.path))
        if len(group) > shots:
            rng = _class_rng(seed, salt, group[0].classname)
            group = sorted(rng.sample(group, shots), key=lambda item: str(item.path))
        elif len(group) < shots:
            short[group[0].classname] = len(group)
        chosen.extend(group)
    if short:
        listed = ", ".join(f"{name!r} ({n})" for name, n in list(short.items())[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        logger.warning("%d classes have fewer than %d items; using all of them: %s%s", len(short), shots, listed, more)
    return chosen


def val_shots(shots: int) -> int:
    """CoOp's validation size per class for a K-shot run: min(K, 4)."""
    _check_shots(shots)
    return min(shots, VAL_SHOTS_CAP)


def sample_few_shot_val(items: Sequence[Item], shots: int, seed: int) -> list[Item]:
    """CoOp's few-shot validation set: min(K, 4) items per class, drawn independently of the train sample."""
    return sample_few_shot(items, val_shots(shots), seed, salt="val")


def _dassl_fewshot(items: Sequence[Item], shots: int, rng: random.Random) -> list[Item]:
    """Dassl's ``generate_fewshot_dataset(items, num_shots=shots)`` (repeat=True) with `rng` as the global
    ``random``: classes in order of first appearance, ``rng.sample(items, K)`` per class in listed order,
    ``rng.choices(items, k=K)`` (with repeats) for a class with fewer than K items."""
    tracker: dict[int, list[Item]] = {}
    for item in items:
        tracker.setdefault(item.label, []).append(item)
    chosen: list[Item] = []
    for group in tracker.values():
        chosen.extend(rng.sample(group, shots) if len(group) >= shots else rng.choices(group, k=shots))
    return chosen


def sample_dassl(train: Sequence[Item], val: Sequence[Item], shots: int, seed: int) -> tuple[list[Item], list[Item]]:
    """The (train, val) few-shot sets of a CoOp / CoCoOp / KgCoOp run with ``--seed seed``: Dassl's
    ``set_random_seed`` seeds the global ``random``, then the dataset class draws
    ``generate_fewshot_dataset(train, num_shots=K)`` and ``generate_fewshot_dataset(val, num_shots=min(K, 4))``
    from that one stream, in that order (``random.seed(s)`` and ``random.Random(s)`` give the same stream)."""
    _check_shots(shots)
    rng = random.Random(seed)
    return _dassl_fewshot(train, shots, rng), _dassl_fewshot(val, val_shots(shots), rng)


def write_split_file(path: str | Path, items: Sequence[Item], root: str | Path, meta: Mapping[str, Any]) -> Path:
    """Write items as JSON ``{"version", "meta", "items": [[relpath, label, classname]]}``, atomically.

    Paths are stored relative to `root` (POSIX style) so the file is valid wherever the dataset lives.
    """
    path, root = Path(path), Path(root)
    entries = []
    for item in items:
        try:
            relative = Path(item.path).relative_to(root)
        except ValueError:
            raise VLPromptError(f"cannot write split file {path}: item {item.path} is not under root {root}") from None
        entries.append([relative.as_posix(), item.label, item.classname])
    payload = {"version": SPLIT_FILE_VERSION, "meta": dict(meta), "items": entries}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return path


def read_split_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` object of a split file (shots, seed, dataset, ...)."""
    return dict(_load_split_file(Path(path))["meta"])


def _load_split_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise VLPromptError(f"split file not found: {path}")
    data = read_json(path, "split file")
    if not isinstance(data, dict) or not isinstance(data.get("items"), list) or not isinstance(data.get("meta"), dict):
        raise VLPromptError(f"split file {path}: expected an object with 'version', 'meta' and 'items'")
    if data.get("version") != SPLIT_FILE_VERSION:
        raise VLPromptError(f"split file {path}: version {data.get('version')!r} is not supported (valid: {SPLIT_FILE_VERSION})")
    return data


def read_split_file(path: str | Path, root: str | Path) -> list[Item]:
    """Items of a split file written by `write_split_file`, with paths resolved under `root`."""
    path, root = Path(path), Path(root)
    items = []
    for i, entry in enumerate(_load_split_file(path)["items"]):
        items.append(parse_split_entry(entry, root, f"split file {path}, entry {i}"))
    return items


def split_file_path(cache_dir: str | Path, dataset: str, shots: int, seed: int, split: str, sampler: str = "vlprompt") -> Path:
    """Where `few_shot_split` keeps one sample: ``<cache_dir>/<dataset>/shot_<K>-seed_<S>.<split>.json``
    (``...seed_<S>.dassl.<split>.json`` for Dassl's sampler)."""
    tag = "" if sampler == "vlprompt" else f".{sampler}"
    return Path(cache_dir) / dataset / f"shot_{shots}-seed_{seed}{tag}.{split}.json"


def _cached_or_sampled(path: Path, dataset: ClassificationDataset, meta: dict[str, Any], sample: list[Item] | None) -> list[Item]:
    if path.is_file():
        found = read_split_meta(path)
        found.setdefault("sampler", "vlprompt")  # split files written before there was a choice
        for key in ("dataset", "shots", "seed", "split", "sampler"):
            if found.get(key) != meta[key]:
                raise VLPromptError(
                    f"split file {path} has {key}={found.get(key)!r} but this run needs {key}={meta[key]!r}; "
                    "delete the file or point cache_dir elsewhere"
                )
        return read_split_file(path, dataset.root)
    assert sample is not None
    write_split_file(path, sample, dataset.root, meta)
    return sample


def few_shot_split(
    dataset: ClassificationDataset, shots: int, seed: int, cache_dir: str | Path, sampler: str = "vlprompt"
) -> tuple[list[Item], list[Item]]:
    """The (train, val) few-shot sample for `(dataset, shots, seed)`, read from cache_dir if already drawn.

    Train has K per class from the ``train`` split; val has min(K, 4) per class from the ``val`` split,
    or, for a dataset without one, from train items not in the train sample. Both are saved as split
    files so the run can be repeated exactly. `sampler`: ``vlprompt`` (per-class generators, see the
    module docstring) or ``dassl`` (the CoOp-family repositories' draw, `sample_dassl`).
    """
    _check_shots(shots)
    if sampler not in SAMPLERS:
        raise VLPromptError(f"few-shot sampler {sampler!r} is not one of {list(SAMPLERS)}")
    train_path = split_file_path(cache_dir, dataset.name, shots, seed, "train", sampler)
    val_path = split_file_path(cache_dir, dataset.name, shots, seed, "val", sampler)
    base_meta: dict[str, Any] = {"dataset": dataset.name, "shots": shots, "seed": seed, "sampler": sampler}
    train_pool = dataset.split("train")
    val_source = "val" if "val" in dataset.splits else "train (held out)"
    train_meta = {**base_meta, "split": "train", "short_classes": short_classes(train_pool, shots)}
    val_meta = {**base_meta, "split": "val", "val_shots": val_shots(shots), "source": val_source}

    if sampler == "dassl":
        drawn: tuple[list[Item], list[Item]] | None = None
        if not (train_path.is_file() and val_path.is_file()):
            val_pool = dataset.split("val") if "val" in dataset.splits else []
            drawn = sample_dassl(train_pool, val_pool, shots, seed)
            if not val_pool:  # CoOp's ImageNet validates on test; here: held-out train items, drawn after
                taken = set(drawn[0])
                drawn = (drawn[0], sample_few_shot_val([i for i in train_pool if i not in taken], shots, seed))
        train = _cached_or_sampled(train_path, dataset, train_meta, drawn[0] if drawn else None)
        val = _cached_or_sampled(val_path, dataset, val_meta, drawn[1] if drawn else None)
        return train, val

    train_sample = None if train_path.is_file() else sample_few_shot(train_pool, shots, seed)
    train = _cached_or_sampled(train_path, dataset, train_meta, train_sample)

    val_sample = None
    if not val_path.is_file():
        if "val" in dataset.splits:
            val_pool = dataset.split("val")
        else:
            taken = set(train)
            val_pool = [item for item in train_pool if item not in taken]
        val_sample = sample_few_shot_val(val_pool, shots, seed)
    val = _cached_or_sampled(val_path, dataset, val_meta, val_sample)
    return train, val
