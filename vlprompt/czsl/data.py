"""Reader for the standard CZSL layout (``compositional-split-natural``), with the reference ordering.

Layout (TMN / ExplainableML-czsl / CSP / DFSP)::

    <root>/images/<relative image path>
    <root>/<split_dir>/{train,val,test}_pairs.txt      # one "attr obj" per line
    <root>/metadata_<split_dir>.t7                      # torch.save'd list of {image, attr, obj, set}

Ordering rules (exactly those of ``CompositionDataset``):

- ``attrs`` / ``objs``: sorted sets of the names in the three pair files;
- ``pairs``: sorted set of train ∪ val ∪ test pairs (closed world) or ``product(attrs, objs)``
  (open world), ``pair2idx`` follows that order;
- ``train_pairs``: train pair file order (not sorted); training labels index into it;
- metadata entries with ``attr == 'NA'`` / ``set == 'NA'`` or a pair not in ``pairs`` are skipped;
  ``set == 'train'`` -> train, ``'val'`` -> val, anything else -> test.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vlprompt.errors import VLPromptError
from vlprompt.paths import atomic_path

PHASES = ("train", "val", "test")


@dataclass(frozen=True)
class CZSLItem:
    """One image. ``label`` is what the trainer sees: the index into train pairs for training
    items, into ``dataset.pairs`` otherwise; ``pair`` is always the index into ``dataset.pairs``."""

    path: Path
    attr: int
    obj: int
    pair: int
    label: int


def read_pair_file(path: Path) -> list[tuple[str, str]]:
    """``attr obj`` per line (whitespace-separated, blank lines ignored)."""
    if not path.is_file():
        raise VLPromptError(f"pair file not found: {path} (regenerate it with `vlprompt czsl make-pairs`)")
    pairs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise VLPromptError(f"{path}:{n}: expected 'attr obj', got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def load_metadata(path: Path) -> list[dict]:
    """The per-image metadata list (``.t7`` torch file; ``.json`` also accepted)."""
    if not path.is_file():
        raise VLPromptError(f"metadata file not found: {path}")
    if path.suffix == ".json":
        import json

        data = json.loads(path.read_text())
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - reported with the file name
            raise VLPromptError(f"cannot read CZSL metadata {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(data, list) or (data and not isinstance(data[0], dict)):
        raise VLPromptError(f"{path}: expected a list of {{image, attr, obj, set}} dicts, got {type(data).__name__}")
    for i, entry in enumerate(data[:1]):
        missing = {"image", "attr", "obj", "set"} - set(entry)
        if missing:
            raise VLPromptError(f"{path}: entry {i} lacks keys {sorted(missing)}")
    return data


def make_pair_files(root: str | Path, split_dir: str = "compositional-split-natural", metadata: str | None = None,
                    overwrite: bool = False) -> dict[str, int]:
    """Regenerate ``{train,val,test}_pairs.txt`` from the metadata (the split downloads keep dying).

    A pair goes to a phase's file when at least one image of that phase has it (``set`` other than
    train/val counts as test; ``NA`` entries are skipped). Lines are written in sorted order.
    Returns the number of pairs per phase.
    """
    root = Path(root)
    meta_path = root / (metadata or f"metadata_{split_dir}.t7")
    entries = load_metadata(meta_path)
    per_phase: dict[str, set[tuple[str, str]]] = {p: set() for p in PHASES}
    for entry in entries:
        if entry["attr"] == "NA" or entry["set"] == "NA":
            continue
        phase = entry["set"] if entry["set"] in ("train", "val") else "test"
        per_phase[phase].add((str(entry["attr"]), str(entry["obj"])))
    out_dir = root / split_dir
    for phase in PHASES:
        target = out_dir / f"{phase}_pairs.txt"
        if target.exists() and not overwrite:
            raise VLPromptError(f"{target} exists (pass overwrite=True / --overwrite to replace it)")
    for phase in PHASES:
        with atomic_path(out_dir / f"{phase}_pairs.txt") as tmp:
            tmp.write_text("".join(f"{a} {o}\n" for a, o in sorted(per_phase[phase])))
    return {p: len(v) for p, v in per_phase.items()}


@dataclass
class CZSLDataset:
    """A CZSL benchmark read with the reference protocol's ordering rules."""

    root: Path
    split_dir: str
    open_world: bool
    attrs: list[str]
    objs: list[str]
    pairs: list[tuple[str, str]]
    train_pairs: list[tuple[str, str]]
    val_pairs: list[tuple[str, str]]
    test_pairs: list[tuple[str, str]]
    items: dict[str, list[CZSLItem]] = field(default_factory=dict)
    name: str = "czsl"

    @classmethod
    def load(cls, root: str | Path, split_dir: str = "compositional-split-natural", open_world: bool = False,
             image_dir: str = "images", metadata: str | None = None, name: str = "czsl",
             check_images: bool = False) -> CZSLDataset:
        root = Path(root)
        if not root.is_dir():
            raise VLPromptError(f"CZSL dataset folder not found: {root}")
        split_path = root / split_dir
        train = read_pair_file(split_path / "train_pairs.txt")
        val = read_pair_file(split_path / "val_pairs.txt")
        test = read_pair_file(split_path / "test_pairs.txt")
        all_pairs = train + val + test
        attrs = sorted({a for a, _ in all_pairs})
        objs = sorted({o for _, o in all_pairs})
        pairs = list(itertools.product(attrs, objs)) if open_world else sorted(set(all_pairs))
        ds = cls(root, split_dir, open_world, attrs, objs, pairs, train, val, test, name=name)
        ds._read_items(root / (metadata or f"metadata_{split_dir}.t7"), root / image_dir, check_images)
        return ds

    # -- indices ---------------------------------------------------------------------------

    @property
    def attr2idx(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.attrs)}

    @property
    def obj2idx(self) -> dict[str, int]:
        return {o: i for i, o in enumerate(self.objs)}

    @property
    def pair2idx(self) -> dict[tuple[str, str], int]:
        return {p: i for i, p in enumerate(self.pairs)}

    def pair_index(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """``[P, 2]`` (attr index, obj index) of named pairs."""
        a2i, o2i = self.attr2idx, self.obj2idx
        return torch.tensor([[a2i[a], o2i[o]] for a, o in pairs], dtype=torch.long).reshape(-1, 2)

    @property
    def all_pair_index(self) -> torch.Tensor:
        return self.pair_index(self.pairs)

    @property
    def train_pair_index(self) -> torch.Tensor:
        return self.pair_index(self.train_pairs)

    def seen_mask(self) -> torch.Tensor:
        """``[len(pairs)]`` bool: the pair is a train pair."""
        train = set(self.train_pairs)
        return torch.tensor([p in train for p in self.pairs], dtype=torch.bool)

    def closed_mask(self, phase: str) -> torch.Tensor:
        """Candidates of a phase: train ∪ phase pairs (closed world), every pair (open world)."""
        if self.open_world:
            return torch.ones(len(self.pairs), dtype=torch.bool)
        allowed = set(self.train_pairs) | set(self.phase_pairs(phase))
        return torch.tensor([p in allowed for p in self.pairs], dtype=torch.bool)

    def phase_pairs(self, phase: str) -> list[tuple[str, str]]:
        if phase not in PHASES:
            raise VLPromptError(f"CZSL phase {phase!r} is not one of {list(PHASES)}")
        return {"train": self.train_pairs, "val": self.val_pairs, "test": self.test_pairs}[phase]

    def labels(self, phase: str) -> dict[str, torch.Tensor]:
        """Ground truth of a phase: ``attr``, ``obj``, ``pair`` (index into ``pairs``) [N] each."""
        items = self.items[phase]
        return {
            "attr": torch.tensor([i.attr for i in items], dtype=torch.long),
            "obj": torch.tensor([i.obj for i in items], dtype=torch.long),
            "pair": torch.tensor([i.pair for i in items], dtype=torch.long),
        }

    def summary(self) -> dict[str, int]:
        out = {"attrs": len(self.attrs), "objs": len(self.objs), "pairs": len(self.pairs)}
        for phase in PHASES:
            out[f"{phase}_pairs"] = len(self.phase_pairs(phase))
            out[f"{phase}_images"] = len(self.items.get(phase, []))
        return out

    # -- images ----------------------------------------------------------------------------

    def _read_items(self, meta_path: Path, image_root: Path, check_images: bool) -> None:
        entries = load_metadata(meta_path)
        a2i, o2i, p2i = self.attr2idx, self.obj2idx, self.pair2idx
        train_idx = {p: i for i, p in enumerate(self.train_pairs)}
        self.items = {p: [] for p in PHASES}
        for entry in entries:
            attr, obj, split = entry["attr"], entry["obj"], entry["set"]
            if attr == "NA" or split == "NA" or (attr, obj) not in p2i:
                continue
            phase = split if split in ("train", "val") else "test"
            pair = p2i[(attr, obj)]
            if phase == "train":
                if (attr, obj) not in train_idx:  # the reference would crash here; say why instead
                    raise VLPromptError(f"{meta_path}: train image {entry['image']} has pair ({attr}, {obj}) "
                                        f"that is not in train_pairs.txt")
                label = train_idx[(attr, obj)]
            else:
                label = pair
            path = image_root / str(entry["image"])
            if check_images and not path.is_file():
                raise VLPromptError(f"image not found: {path} (listed in {meta_path})")
            self.items[phase].append(CZSLItem(path, a2i[attr], o2i[obj], pair, label))
