"""The zoo: named prompt checkpoints, where to get them, and how to check them.

``vlprompt/zoo/registry.json`` (shipped in the package) holds::

    {"format_version": 1,
     "entries": [
        {"name": "coop-world_shapes-16shot",
         "filename": "coop-world_shapes-16shot.safetensors",
         "sources": ["package:vlprompt/zoo/bundled/coop-world_shapes-16shot.safetensors",
                     "hf://org/repo/vlprompt_model.safetensors@<commit>",
                     "https://example.org/coop-world_shapes-16shot-1a2b3c4d.safetensors"],
         "sha256": "<64 hex>", "size": 12345,
         "description": "...", "method": "coop", "backbone": {...}, "training": {...}, "metrics": {...}}]}

A source is ``package:<pkg>/<path>`` (a file shipped in an installed package: works offline),
``file:<path>`` (relative to the registry file), ``hf://<org>/<repo>/<file>[@revision]`` (Hugging Face
Hub, through huggingface_hub's cache) or an ``http(s)://`` URL. Sources are tried in order; every
file is checked against ``sha256`` before use. Downloads are cached content-addressed under
``<cache>/zoo/<sha256[:16]>/<filename>`` (``$VLPROMPT_CACHE`` moves the cache).
``$VLPROMPT_ZOO`` names extra registry files (``os.pathsep``-separated) whose entries are added to,
or replace, the shipped ones. ``VLPROMPT_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``: cache and bundled files only.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.errors import VLPromptError
from vlprompt.paths import atomic_path, cache_dir, read_json
from vlprompt.registry import unknown_name_message
from vlprompt.zoo.download import DownloadError, copy_verified, download_url, offline_reason, verify_file

# Reading the registry (`vlprompt zoo list`, `zoo info`) imports no torch: this module and
# vlprompt.zoo.download need only the standard library and tqdm. Checkpoints (torch) are in
# vlprompt.zoo.checkpoint, which imports this module, never the reverse.

REGISTRY_FILE = Path(__file__).with_name("registry.json")
BUNDLED_DIR = Path(__file__).with_name("bundled")
REGISTRY_ENV = "VLPROMPT_ZOO"
REGISTRY_FORMAT = 1
SCHEMES = ("package:", "file:", "hf://", "https://", "http://")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
ENTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_CORE_KEYS = ("name", "filename", "sources", "source", "sha256", "size")


@dataclass(frozen=True)
class ZooEntry:
    """One published prompt: a single self-contained ``.safetensors`` file, its sources and hash."""

    name: str
    sources: tuple[str, ...]
    sha256: str
    filename: str
    size: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # description, method, backbone, ...
    registry: Path | None = field(default=None, compare=False)  # the file that declared it

    @classmethod
    def from_dict(cls, values: dict[str, Any], registry: Path | None = None) -> ZooEntry:
        where = f"zoo registry {registry}" if registry else "zoo entry"
        name = values.get("name")
        if not isinstance(name, str) or not ENTRY_NAME.match(name):
            raise VLPromptError(f"{where}: entry name {name!r} must be letters, digits, '.', '_', '+' or '-'")
        sources = values.get("sources", values.get("source"))
        sources = [sources] if isinstance(sources, str) else list(sources or [])
        if not sources:
            raise VLPromptError(f"{where}: entry {name!r} has no 'source'/'sources'")
        for source in sources:
            if not isinstance(source, str) or not source.startswith(SCHEMES):
                raise VLPromptError(f"{where}: entry {name!r} source {source!r} must start with one of {', '.join(SCHEMES)}")
        sha256 = str(values.get("sha256", "")).lower()
        if not _SHA256.match(sha256):
            raise VLPromptError(f"{where}: entry {name!r} needs 'sha256' (64 hex digits), got {values.get('sha256')!r}")
        size = values.get("size")
        if size is not None and (not isinstance(size, int) or size < 0):
            raise VLPromptError(f"{where}: entry {name!r} 'size' must be a byte count, got {size!r}")
        filename = values.get("filename") or f"{name}.safetensors"
        meta = {k: v for k, v in values.items() if k not in _CORE_KEYS}
        return cls(name, tuple(sources), sha256, filename, size, meta, registry)

    def to_dict(self) -> dict[str, Any]:
        core: dict[str, Any] = {"name": self.name, "filename": self.filename, "sources": list(self.sources)}
        core.update({"sha256": self.sha256, "size": self.size})
        return {**core, **self.meta}

    @property
    def cache_path(self) -> Path:
        """Where a downloaded copy lives (content-addressed: a new hash never meets an old file)."""
        return cache_dir("zoo", self.sha256[:16]) / self.filename


# -- reading the registry -----------------------------------------------------------------------


def read_registry_file(path: str | os.PathLike) -> list[ZooEntry]:
    path = Path(path)
    if not path.is_file():
        raise VLPromptError(f"zoo registry not found: {path}")
    data = read_json(path, "zoo registry")
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise VLPromptError(f"zoo registry {path}: expected {{'format_version': 1, 'entries': [...]}}")
    parsed = [ZooEntry.from_dict(values, path) for values in entries]
    names = [e.name for e in parsed]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VLPromptError(f"zoo registry {path}: entry {duplicates[0]!r} is listed twice")
    return parsed


def registry_files() -> list[Path]:
    """The shipped registry, then every file in ``$VLPROMPT_ZOO``."""
    extra = [Path(p) for p in os.environ.get(REGISTRY_ENV, "").split(os.pathsep) if p]
    return [REGISTRY_FILE, *extra]


def load_registry(paths: list[str | os.PathLike] | None = None) -> dict[str, ZooEntry]:
    """name -> entry over the registry files (later files replace earlier entries of the same name)."""
    entries: dict[str, ZooEntry] = {}
    for path in paths if paths is not None else registry_files():
        for entry in read_registry_file(path):
            entries[entry.name] = entry
    return dict(sorted(entries.items()))


def get_entry(name: str, registry: dict[str, ZooEntry] | None = None) -> ZooEntry:
    registry = load_registry() if registry is None else registry
    if name not in registry:
        raise VLPromptError(unknown_name_message("zoo entry", name, list(registry) or ["(the zoo is empty)"]))
    return registry[name]


# -- sources ------------------------------------------------------------------------------------


def local_source_path(source: str, entry: ZooEntry) -> Path:
    """The file a ``package:`` or ``file:`` source names."""
    if source.startswith("package:"):
        package, _, rel = source[len("package:") :].partition("/")
        try:
            root = importlib.resources.files(package)
        except ModuleNotFoundError:
            raise VLPromptError(f"zoo entry {entry.name!r}: package {package!r} of source {source!r} is not installed") from None
        return Path(str(root.joinpath(rel)))
    rel = source[len("file:") :]
    base = entry.registry.parent if entry.registry else Path.cwd()
    return (base / rel).resolve() if not os.path.isabs(rel) else Path(rel)


def parse_hf_source(source: str) -> tuple[str, str, str | None]:
    """``hf://org/repo/path/file@rev`` -> (repo id, filename, revision)."""
    spec, _, revision = source[len("hf://") :].partition("@")
    parts = spec.split("/")
    if len(parts) < 3:
        raise VLPromptError(f"hub source {source!r} must look like hf://<org>/<repo>/<file>[@revision]")
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None


def _fetch_hf(source: str, entry: ZooEntry, offline: bool) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DownloadError("huggingface_hub is not installed (pip install huggingface_hub)") from None
    repo_id, filename, revision = parse_hf_source(source)
    try:
        path = hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline, library_name="vlprompt")
    except Exception as error:  # noqa: BLE001  (the hub raises many types; the message is what matters)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DownloadError(f"{type(error).__name__}: {first}") from None
    return copy_verified(path, entry.cache_path, entry.sha256)


def fetch(
    entry: ZooEntry | str,
    *,
    offline: bool | None = None,
    progress: bool = True,
    retries: int = 3,
    backoff: float = 0.5,
    timeout: float = 30.0,
) -> Path:
    """A verified local copy of a zoo entry: the cache, else a bundled file, else its sources in order.

    `offline` defaults to the environment (``VLPROMPT_OFFLINE`` / ``HF_HUB_OFFLINE``): then only the
    cache, package/file sources and the Hugging Face cache are used.
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    reason = offline_reason() if offline is None else ("offline=True" if offline else None)
    cached = entry.cache_path
    if cached.is_file():
        if verify_file(cached, entry.sha256, entry.size):
            return cached
        cached.unlink()  # a corrupted cache copy: fetch it again
    failures: list[str] = []
    for source in entry.sources:
        try:
            if source.startswith(("package:", "file:")):
                path = local_source_path(source, entry)
                if not path.is_file():
                    raise DownloadError(f"file not found: {path}")
                if not verify_file(path, entry.sha256, entry.size):
                    raise DownloadError(f"sha256 mismatch in {path}")
                return path
            if source.startswith("hf://"):
                return _fetch_hf(source, entry, offline=reason is not None)
            if reason:
                failures.append(f"{source}: skipped (offline)")
                continue
            return download_url(
                source, cached, entry.sha256, entry.size, retries=retries, backoff=backoff, timeout=timeout, progress=progress
            )
        except DownloadError as error:
            failures.append(f"{source}: {error}")
    if reason:
        raise VLPromptError(
            f"offline mode ({reason}): zoo entry {entry.name!r} is not in the cache ({cached}) and no local source has it "
            f"({'; '.join(failures)}). Run `vlprompt zoo download {entry.name}` where there is network, or unset "
            "VLPROMPT_OFFLINE / HF_HUB_OFFLINE"
        )
    raise VLPromptError(f"could not fetch zoo entry {entry.name!r} from any source: {'; '.join(failures)}")


def local_copy(entry: ZooEntry) -> Path | None:
    """The copy `fetch` would use without network (cache or bundled), whether or not it verifies."""
    if entry.cache_path.is_file():
        return entry.cache_path
    for source in entry.sources:
        if source.startswith(("package:", "file:")):
            path = local_source_path(source, entry)
            if path.is_file():
                return path
    return None


def verify_entry(entry: ZooEntry) -> tuple[str, Path | None]:
    """("ok" | "missing" | "mismatch", path) for the local copy of an entry."""
    path = local_copy(entry)
    if path is None:
        return "missing", None
    return ("ok" if verify_file(path, entry.sha256, entry.size) else "mismatch"), path


# -- registering prompts ------------------------------------------------------------------------


def entry_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """What a registry entry repeats from a checkpoint's config (enough for `zoo list` / `zoo info`)."""
    ident = meta.get("backbone") or {}
    return {
        "method": meta.get("method"),
        "method_config": meta.get("method_config"),
        "class_agnostic": meta.get("class_agnostic"),
        "backbone": {k: ident.get(k) for k in ("source", "name", "pretrained", "weights_hash")},
        "num_classes": len(meta.get("classnames") or []),
        "classnames_sha256": meta.get("classnames_sha256"),
        "templates": meta.get("templates", []),
        "training": meta.get("training", {}),
        "metrics": meta.get("metrics", {}),
        "tensors_sha256": meta.get("tensors_sha256"),
        "vlprompt_version": meta.get("vlprompt_version"),
    }


def write_registry_file(path: str | os.PathLike, entries: list[ZooEntry]) -> None:
    payload = {"format_version": REGISTRY_FORMAT, "entries": [e.to_dict() for e in sorted(entries, key=lambda e: e.name)]}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
