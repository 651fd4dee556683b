"""Frozen image features, computed once and reused across epochs, runs and methods.

An entry is keyed by (backbone identity, transform description + augmentation seed, image file
path + mtime + size, view index). Entries live in safetensors shards under
``<root>/<backbone key>/<transform key>/``; each shard is written atomically and lists its entry
keys in its metadata. A shard that cannot be read is deleted and its entries are recomputed.

View ``v`` of an item is the transform applied under a seed derived from the item and ``v``, so the
same views come back whichever call, batch or worker computes them, and asking for more views later
only computes the new ones.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.weights import state_dict_hash
from vlprompt.engine import distributed as dist_utils
from vlprompt.engine.distributed import DistEnv
from vlprompt.engine.features import encode_normalized, image_batches, image_precision
from vlprompt.engine.views import (
    ItemLike,
    SeededImages,
    augmentation_identity,
    describe_transform,
    item_fingerprint,
    stable_seed,
)
from vlprompt.errors import VLPromptError
from vlprompt.paths import atomic_path, cache_dir

_WEIGHT_PRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# How augmented views are seeded (`augmentation_identity`: folder/name + size, the same in every copy of
# the data); part of the key of augmented entries, so views seeded the old way (absolute path + mtime)
# are not mixed with new ones.
SEED_SCHEME = "name-size"


def backbone_key(backbone: Backbone) -> str:
    """identity.cache_key(), plus a hash of the weights when the identity cannot tell them apart.

    Random-weight backbones (``pretrained=None`` and no weights hash) share one identity although
    their weights differ from build to build, so their key also covers the weights themselves.
    """
    identity = backbone.identity
    key = identity.cache_key()
    if identity.pretrained is None and identity.weights_hash is None:
        if backbone not in _WEIGHT_PRINTS:
            _WEIGHT_PRINTS[backbone] = state_dict_hash(backbone.state_dict())
        key = f"{key}-w{_WEIGHT_PRINTS[backbone]}"
    return key


def features_sha256(features: torch.Tensor) -> str:
    """Checksum of a shard's feature bytes (recorded in its metadata, checked when it is read)."""
    return hashlib.sha256(features.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


class _ViewSeed:
    """Picklable seed function for DataLoader workers: seed of (item fingerprint, view)."""

    def __init__(self, fingerprints: Sequence[str], views: Sequence[int], base: int) -> None:
        self.fingerprints = list(fingerprints)
        self.views = list(views)
        self.base = base

    def __call__(self, index: int) -> int:
        return stable_seed("view", self.base, self.fingerprints[index], self.views[index])


class FeatureCache:
    """Cached L2-normalised fp32 image features; ``get`` returns ``[V, N, D]`` on the CPU.

    Args:
        root: cache folder (default: ``cache_dir("features")``).
        seed: augmentation seed; part of the key, so other seeds give other views.
        batch_size, num_workers: how missing features are computed.
        progress: show a tqdm bar while computing (None: only on a terminal).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        seed: int = 0,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool | None = None,
    ) -> None:
        self.root = Path(root) if root is not None else cache_dir("features")
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        self._indexes: dict[Path, dict[str, tuple[Path, int]]] = {}
        self._seen: dict[Path, set[Path]] = {}
        self._verified: set[tuple[Path, int, int]] = set()  # (shard, size, mtime): checked once, not every read
        self.computed = 0  # entries computed by this object (the rest were cache hits)
        self.rebuilt = 0  # entries found damaged (checksum, non-finite, unreadable) and recomputed

    # -- keys ---------------------------------------------------------------------------------

    def folder(self, backbone: Backbone, transform: Callable) -> Path:
        """Where entries of this backbone and transform live."""
        text = f"{describe_transform(transform)}|seed={self.seed}"
        if text.split("|seed=")[0] != describe_transform(backbone.eval_transform):
            text += f"|seeds={SEED_SCHEME}"  # augmented views: keyed by how their seeds are made
        precision = image_precision(backbone.device)
        if precision != "fp32":  # fp32 keys stay as they were
            text += f"|precision={precision}"
        return self.root / backbone_key(backbone) / hashlib.sha256(text.encode()).hexdigest()[:16]

    @staticmethod
    def entry_key(item: ItemLike, view: int) -> str:
        """Key of one view of one image file inside a folder."""
        return hashlib.sha256(f"{item_fingerprint(item.path)}|{view}".encode()).hexdigest()[:32]

    def key(self, backbone: Backbone, transform: Callable, item: ItemLike, view: int) -> str:
        """Full key of one entry: changes with backbone, transform, seed, file and view."""
        return f"{self.folder(backbone, transform).relative_to(self.root)}/{self.entry_key(item, view)}"

    # -- reading and writing ------------------------------------------------------------------

    def get(
        self, backbone: Backbone, items: Sequence[ItemLike], transform: Callable, views: int = 1,
        across_ranks: bool = False,
    ) -> torch.Tensor:
        """Features of `views` views of every item: ``[views, len(items), D]``, computed if missing.

        `across_ranks` (under torchrun; a collective: every rank calls it with the same items):
        the missing entries are split over the ranks, each encodes its share, the shares are
        gathered, and rank 0 writes them, so a W-rank job builds the cache about W times faster
        and needs no shared file system.
        """
        if views < 1:
            raise VLPromptError(f"feature cache: views must be >= 1, got {views}")
        items = list(items)
        folder = self.folder(backbone, transform)
        dim = backbone.identity.embed_dim
        out = torch.empty(views, len(items), dim, dtype=torch.float32)
        keys = [[self.entry_key(item, v) for item in items] for v in range(views)]
        filled = torch.zeros(views, len(items), dtype=torch.bool)
        self._read(folder, keys, out, filled, dim)
        missing = (~filled).nonzero().tolist()
        env = dist_utils.current()
        if across_ranks and env.enabled:
            # rank 0's view of what is missing, so every rank splits the same list
            self._compute(backbone, items, transform, folder, keys, dist_utils.broadcast_object(missing), out, env)
        elif missing:
            self._compute(backbone, items, transform, folder, keys, missing, out, DistEnv())
        return out

    def _index(self, folder: Path) -> dict[str, tuple[Path, int]]:
        """entry key -> (shard, row), scanning shards written since the last look."""
        index = self._indexes.setdefault(folder, {})
        seen = self._seen.setdefault(folder, set())
        if not folder.is_dir():
            return index
        for shard in sorted(folder.glob("*.safetensors")):
            if shard in seen:
                continue
            seen.add(shard)
            try:
                with safe_open(str(shard), framework="pt") as handle:
                    names = json.loads((handle.metadata() or {})["keys"])
                    rows = handle.get_slice("features").get_shape()[0]
                if len(names) != rows:
                    raise ValueError("key count does not match rows")
            except Exception:  # noqa: BLE001  a corrupt or foreign file: recompute its entries
                warnings.warn(f"feature cache shard {shard} cannot be read: removed, its entries are recomputed",
                              stacklevel=2)
                self._discard(folder, shard)
                continue
            for row, name in enumerate(names):
                index[name] = (shard, row)
        return index

    @staticmethod
    def _stamp(shard: Path) -> tuple[Path, int, int]:
        info = shard.stat()
        return shard, info.st_size, info.st_mtime_ns

    def _content_problem(self, shard: Path, features: torch.Tensor) -> str | None:
        """What is wrong with a shard's features: a checksum that does not match (bytes overwritten,
        zeroed, bit rot) or, in shards written before checksums, values that are not finite. A shard is
        checked once per object (and again if its size or mtime change), not on every evaluation."""
        stamp = self._stamp(shard)
        if stamp in self._verified:
            return None
        problem = self._check_content(shard, features)
        if problem is None:
            self._verified.add(stamp)
        return problem

    @staticmethod
    def _check_content(shard: Path, features: torch.Tensor) -> str | None:
        with safe_open(str(shard), framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("sha256")
        if recorded is not None:
            return None if features_sha256(features) == recorded else "fails its checksum (damaged)"
        return None if bool(torch.isfinite(features).all()) else "holds non-finite values (damaged)"

    def _discard(self, folder: Path, shard: Path) -> None:
        index = self._indexes.get(folder, {})
        for name in [k for k, (s, _) in index.items() if s == shard]:
            del index[name]
        shard.unlink(missing_ok=True)

    def _read(
        self, folder: Path, keys: list[list[str]], out: torch.Tensor, filled: torch.Tensor, dim: int
    ) -> None:
        index = self._index(folder)
        wanted: dict[Path, list[tuple[int, int, int]]] = {}
        for v, row_keys in enumerate(keys):
            for n, key in enumerate(row_keys):
                if key in index:
                    shard, row = index[key]
                    wanted.setdefault(shard, []).append((v, n, row))
        for shard, places in wanted.items():
            try:
                features = load_file(str(shard))["features"]
                if features.ndim != 2 or features.shape[1] != dim:
                    raise ValueError(f"shape {tuple(features.shape)}")
                problem = self._content_problem(shard, features)
            except Exception as error:  # noqa: BLE001  truncated data behind a valid header, wrong shape...
                problem = f"cannot be read ({type(error).__name__})"
            if problem:
                warnings.warn(f"feature cache shard {shard} {problem}: removed, its {len(places)} entries are "
                              "recomputed", stacklevel=2)
                self.rebuilt += len(places)
                self._discard(folder, shard)
                continue
            v_idx, n_idx, rows = (torch.tensor(col) for col in zip(*places))
            out[v_idx, n_idx] = features[rows].float()
            filled[v_idx, n_idx] = True

    @torch.no_grad()
    def _compute(
        self,
        backbone: Backbone,
        items: list[ItemLike],
        transform: Callable,
        folder: Path,
        keys: list[list[str]],
        missing: list[list[int]],
        out: torch.Tensor,
        env: DistEnv,
    ) -> None:
        # Duplicate items (the same file listed twice) are computed once.
        unique: dict[str, tuple[int, int]] = {}
        for v, n in missing:
            unique.setdefault(keys[v][n], (v, n))
        todo = list(unique.values())
        mine = todo[env.rank :: env.world_size]
        features = self._encode(backbone, items, transform, mine)
        if env.enabled:
            features = dist_utils.gather_strided(features.to(backbone.device), len(todo)).cpu()
        names = [keys[v][n] for v, n in todo]
        by_key = dict(zip(names, range(len(names))))
        for v, n in missing:
            out[v, n] = features[by_key[keys[v][n]]]
        self.computed += len(mine)
        if names and env.is_main:
            self._write(folder, names, features)

    def _encode(
        self, backbone: Backbone, items: list[ItemLike], transform: Callable, todo: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Features ``[len(todo), D]`` of the (view, item) pairs in `todo`, streamed like an evaluation
        (`image_batches`: prefetch thread or workers, ToTensor/Normalize per batch, pinned memory)."""
        if not todo:
            return torch.empty(0, backbone.identity.embed_dim)
        seeds = _ViewSeed([augmentation_identity(items[n].path) for _, n in todo], [v for v, _ in todo], self.seed)

        def make_dataset(head: Callable) -> SeededImages:
            return SeededImages([items[n] for _, n in todo], head, seeds)

        was_training = backbone.training
        backbone.eval()
        chunks = []
        try:
            batches = image_batches(backbone, make_dataset, transform, self.batch_size, self.num_workers,
                                    progress=self.progress is not False)
            for images, _ in batches:
                chunks.append(encode_normalized(backbone, images).cpu())
        finally:
            backbone.train(was_training)
        return torch.cat(chunks)

    def _write(self, folder: Path, names: list[str], features: torch.Tensor) -> None:
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
        shard = folder / f"shard-{digest}.safetensors"
        with atomic_path(shard) as tmp:
            features = features.contiguous()
            # serialised in memory, then one plain write: a full disk is an OSError that atomic_path
            # reports as one line (safetensors' own writer raises its own error type)
            tmp.write_bytes(save({"features": features},
                                 metadata={"keys": json.dumps(names), "sha256": features_sha256(features)}))
        self._verified.add(self._stamp(shard))  # its checksum was just computed from these features
        index = self._indexes.setdefault(folder, {})
        self._seen.setdefault(folder, set()).add(shard)
        for row, name in enumerate(names):
            index[name] = (shard, row)
