"""A trained prompt on disk: ``<name>.safetensors`` (trainable tensors) + ``<name>.json`` (what they mean).

Readable without vlprompt: plain safetensors and JSON. The JSON names the method and its config,
the backbone identity (with its weights hash), the class names and their hash, the templates, a
summary of the training data, the metrics and a content hash of the tensors, so a prompt is never
applied to the wrong model silently.

The same JSON is also stored in the safetensors header (metadata key ``vlprompt_config``), so the
``.safetensors`` file alone is a complete checkpoint: that single file is what the zoo publishes,
hashes and downloads. When both exist, the ``.json`` beside the tensors wins.

Layouts read by `load_prompt`: ``x.safetensors`` / ``x.json`` / ``x`` (a pair or a lone
self-contained ``.safetensors``), a folder in Hub layout (``vlprompt_model.safetensors`` +
``vlprompt_config.json``), or a zoo entry name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

import vlprompt
from vlprompt.backbones.base import Backbone, describe_identity
from vlprompt.errors import VLPromptError
from vlprompt.hashing import file_sha256  # noqa: F401  (full digest; the zoo modules import it from here)
from vlprompt.methods.base import PromptMethod, build_method
from vlprompt.methods.label_space import ClassLabels, LabelSpace, label_space_from_dict
from vlprompt.paths import atomic_path, read_json
from vlprompt.registry import unknown_name_message
from vlprompt.zoo.card import card_is_ours, model_card
from vlprompt.zoo.download import is_offline
from vlprompt.zoo.registry import fetch, load_registry

FORMAT_VERSION = 2
HEADER_KEY = "vlprompt_config"  # safetensors header metadata key holding the JSON config
HUB_TENSORS = "vlprompt_model.safetensors"  # file names in a Hub repo / folder layout
HUB_CONFIG = "vlprompt_config.json"


# -- hashes -------------------------------------------------------------------------------------


def classnames_hash(classnames: Sequence[str]) -> str:
    """sha256 of the class names joined by newlines (order matters: it is the label order)."""
    return hashlib.sha256("\n".join(classnames).encode()).hexdigest()


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """Content hash of trained tensors (names, dtypes, shapes, bytes): independent of the file wrapping."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# what a prompt's predictions depend on besides its tensors: hashed as config_sha256, checked on load
CONFIG_HASH_KEYS = ("method", "method_config", "class_agnostic", "task", "backbone", "label_space", "classnames",
                    "templates")


def config_hash(meta: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the metadata entries that decide what the prompt predicts."""
    picked = {key: meta.get(key) for key in CONFIG_HASH_KEYS}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()


# -- paths --------------------------------------------------------------------------------------


def prompt_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """(tensors, config) paths of a checkpoint given as a stem, either file, or a Hub-layout folder."""
    path = Path(path)
    if path.is_dir():
        return path / HUB_TENSORS, path / HUB_CONFIG
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def is_prompt_path(path: str | os.PathLike) -> bool:
    tensors, config = prompt_files(path)
    return tensors.is_file() or config.is_file()


# -- writing ------------------------------------------------------------------------------------


def _templates_of(method: PromptMethod) -> list[str]:
    """Templates the method builds its prompts from: its assembler's layout and/or configured templates."""
    found: list[str] = []
    assembler = getattr(method, "prompts", None)
    if isinstance(getattr(assembler, "template", None), str):
        found.append(assembler.template)
    configured = getattr(method.config, "templates", None)
    if isinstance(configured, (list, tuple)):
        found.extend(str(t) for t in configured)
    return found


def _summary_from_result(result: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training, metrics) from the result summary `api.run_experiment` passes as ``extra={"result": ...}``."""
    protocol = result.get("protocol") or {}
    training = {
        "dataset": result.get("dataset"),
        "protocol": protocol.get("name"),
        "shots": protocol.get("shots"),
        "seed": protocol.get("seed"),
        "num_train_items": result.get("num_train_items"),
    }
    return {k: v for k, v in training.items() if v is not None}, result.get("metrics") or {}


def prompt_metadata(
    method: PromptMethod,
    tensors: dict[str, torch.Tensor],
    templates: Sequence[str] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON config of a checkpoint (see the module docstring)."""
    from dataclasses import asdict

    extra = dict(extra or {})
    if isinstance(extra.get("result"), dict) and (training is None or metrics is None):
        found_training, found_metrics = _summary_from_result(extra["result"])
        training = found_training if training is None else training
        metrics = found_metrics if metrics is None else metrics
    meta = {
        "format_version": FORMAT_VERSION,
        "vlprompt_version": vlprompt.__version__,
        "method": method.name,
        "method_config": asdict(method.config),
        "class_agnostic": bool(method.class_agnostic),
        "task": method.task,
        "backbone": method.backbone.identity.to_dict(),
        "label_space": method.label_space.to_dict(),  # classes, or attributes + objects + pairs (CZSL)
        "classnames": list(method.classnames),
        "classnames_sha256": classnames_hash(method.classnames),
        "templates": list(templates) if templates is not None else _templates_of(method),
        "training": dict(training or {}),  # dataset, shots, seed, split_file_sha256, ...
        "metrics": dict(metrics or {}),
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()},
        "tensors_sha256": tensors_hash(tensors),
        **extra,
    }
    meta["config_sha256"] = config_hash(meta)
    return meta


def write_prompt_files(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], tensors_path: str | os.PathLike, config_path: str | os.PathLike | None
) -> Path:
    """Write the self-contained safetensors (config in its header) and, if given, the JSON beside it."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(meta, indent=2, default=str)
    header = {"format": "pt", "method": str(meta.get("method")), HEADER_KEY: json.dumps(meta, default=str)}
    with atomic_path(tensors_path) as tmp:
        tmp.write_bytes(save(tensors, metadata=header))  # in memory, then a plain write (see atomic_path)
    if config_path is not None:
        with atomic_path(config_path) as tmp:
            tmp.write_text(text)
    return Path(tensors_path)


def save_prompt(
    path: str | os.PathLike,
    method: PromptMethod,
    extra: dict[str, Any] | None = None,
    *,
    templates: Sequence[str] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write tensors and metadata atomically; returns the .safetensors path.

    `training` summarises the data (``dataset``, ``shots``, ``seed``, ``split_file_sha256``...),
    `metrics` the evaluation; both default to what ``extra["result"]`` holds (run_experiment's summary).
    `templates` default to the method's own. Other `extra` keys are stored as they are.
    """
    tensors_path, config_path = prompt_files(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in method.trainable_state().items()}
    meta = prompt_metadata(method, tensors, templates, training, metrics, extra)
    written = write_prompt_files(tensors, meta, tensors_path, config_path)
    write_model_card(meta, tensors_path, config_path)
    return written


def write_model_card(meta: dict[str, Any], tensors_path: Path, config_path: Path) -> Path | None:
    """``README.md`` beside a saved prompt: a model card with the Hub's metadata (`vlprompt.zoo.card`),
    so the folder can be uploaded as it is. A README the user wrote is left alone (None returned); one
    vlprompt wrote is replaced (the last prompt saved in a folder owns it)."""
    readme = tensors_path.parent / "README.md"
    if readme.is_file() and not card_is_ours(readme.read_text(encoding="utf-8", errors="replace")):
        return None
    training = meta.get("training") or {}
    parts = [str(meta.get("method")), training.get("dataset"), f"{training['shots']}shot" if training.get("shots") else None]
    name = "-".join(str(p) for p in parts if p) if training.get("dataset") else tensors_path.parent.name or tensors_path.stem
    with atomic_path(readme) as tmp:
        tmp.write_text(model_card(meta, name, tensors_path.name, config_path.name), encoding="utf-8")
    return readme


# -- reading ------------------------------------------------------------------------------------


def _header_meta(tensors_path: Path) -> dict[str, Any] | None:
    try:
        with safe_open(str(tensors_path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # noqa: BLE001  (safetensors raises several types on bad files)
        raise VLPromptError(f"cannot read prompt tensors {tensors_path}: {error}") from None
    text = header.get(HEADER_KEY)
    try:
        return json.loads(text) if text else None
    except ValueError as error:
        raise VLPromptError(f"prompt tensors {tensors_path}: the metadata in the header is not valid JSON ({error})") from None


def read_prompt_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config: the ``.json`` beside the tensors, else the one in the safetensors header."""
    tensors_path, config_path = prompt_files(path)
    if config_path.is_file():
        return read_json(config_path, "prompt metadata")
    if tensors_path.is_file():
        meta = _header_meta(tensors_path)
        if meta is not None:
            return meta
        raise VLPromptError(
            f"prompt metadata not found: neither {config_path} nor a '{HEADER_KEY}' entry in {tensors_path}'s header"
        )
    raise VLPromptError(f"prompt metadata not found: {config_path} (a prompt is a .safetensors + .json pair)")


def read_prompt(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, config) of a checkpoint on disk, with the tensors checked against the recorded hash."""
    tensors_path, _ = prompt_files(path)
    meta = read_prompt_meta(path)
    if not tensors_path.is_file():
        raise VLPromptError(f"prompt tensors not found: {tensors_path}")
    check_meta(meta, path)
    try:
        tensors = load_file(str(tensors_path))
    except Exception as error:  # noqa: BLE001  (safetensors raises its own error type on bad files)
        raise VLPromptError(
            f"cannot read prompt tensors {tensors_path}: the file is truncated or damaged ({error})"
        ) from None
    expected = meta.get("tensors_sha256")
    if expected and tensors_hash(tensors) != expected:
        raise VLPromptError(
            f"prompt tensors {tensors_path} do not match the hash in their config "
            f"({expected[:16]}...): the file was changed or belongs to another config"
        )
    return tensors, meta


REQUIRED_META = ("method", "method_config", "backbone")


def check_meta(meta: Any, path: str | os.PathLike) -> None:
    """The metadata has what loading needs, and matches every hash it records (an edited prompt.json
    would otherwise load and mislabel predictions, or predict with another config)."""
    if not isinstance(meta, dict):
        raise VLPromptError(f"prompt metadata of {path} must be a JSON object, got {type(meta).__name__}")
    missing = [key for key in REQUIRED_META if key not in meta]
    if "classnames" not in meta and "label_space" not in meta:
        missing.append("classnames")
    if missing:
        raise VLPromptError(f"prompt metadata of {path} lacks {', '.join(missing)}: not a prompt written by vlprompt")
    recorded = meta.get("classnames_sha256")
    if recorded and "classnames" in meta and classnames_hash(meta["classnames"]) != recorded:
        raise VLPromptError(
            f"prompt {path}: its classnames do not match the recorded classnames_sha256 ({recorded[:16]}...): "
            "the metadata was edited; restore it or save the prompt again"
        )
    recorded = meta.get("config_sha256")
    if recorded and config_hash(meta) != recorded:
        raise VLPromptError(
            f"prompt {path}: its metadata ({', '.join(CONFIG_HASH_KEYS)}) does not match the recorded config_sha256 "
            f"({recorded[:16]}...): it was edited; restore it or save the prompt again"
        )


def check_split_file(meta: dict[str, Any], path: str | os.PathLike) -> None:
    """The few-shot split file beside a prompt in its run folder must match the recorded
    ``split_file_sha256``; a mismatch does not change the predictions, so it is a warning."""
    training = meta.get("training") or {}
    recorded = training.get("split_file_sha256")
    if not recorded or not all(training.get(k) is not None for k in ("dataset", "shots", "seed")):
        return
    split = (Path(path).parent / "splits" / str(training["dataset"])
             / f"shot_{training['shots']}-seed_{training['seed']}.train.json")
    if split.is_file() and file_sha256(split) != recorded:
        warnings.warn(f"prompt {path}: its split file {split} does not match the recorded split_file_sha256 "
                      f"({recorded[:16]}...): the training data on record was changed", stacklevel=3)


def describe_file(path: Path) -> str:
    """What a file that is not a prompt looks like, from its first bytes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
        size = path.stat().st_size
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    kinds = [
        (head[:1] == b"\x80" and head[1:2] in bytes(range(2, 6)), "a Python pickle (a torch.save .pt/.pth file?)"),
        (head[:4] == b"PK\x03\x04", "a zip archive (a torch.save checkpoint?)"),
        (head[:8] == b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (head[:3] == b"\xff\xd8\xff", "a JPEG image"),
        (head.lstrip()[:1] in (b"{", b"["), "a JSON file"),
        (len(head) >= 9 and head[8:9] == b"{", "a safetensors file"),
        (size == 0, "empty (0 bytes)"),
    ]
    return next((text for hit, text in kinds if hit), f"{size} bytes of unknown content")


def resolve_prompt(path_or_name: str | os.PathLike, offline: bool | None = None, progress: bool = True) -> Path:
    """A checkpoint path on disk: the path itself when it exists, else the zoo entry of that name (fetched)."""
    if is_prompt_path(path_or_name):
        return Path(path_or_name)
    if Path(path_or_name).is_file():  # a file, but no prompt: say what it is (never unpickled)
        path = Path(path_or_name)
        raise VLPromptError(
            f"{path} is {describe_file(path)}, not a prompt checkpoint (a prompt is the .safetensors + .json "
            "pair that vlprompt train writes, or a zoo name); it was not loaded"
        )
    if str(path_or_name).startswith("hf://"):
        return _download_hub_prompt(str(path_or_name), offline)
    registry = load_registry()
    name = str(path_or_name)
    if name in registry:
        return fetch(registry[name], offline=offline, progress=progress)
    hint = unknown_name_message("zoo entry", name, list(registry) or ["(the zoo is empty)"])
    raise VLPromptError(f"no prompt checkpoint at {name!r}, and {hint}")


def _download_hub_prompt(spec: str, offline: bool | None) -> Path:
    """``hf://org/repo[/file][@revision]``: the self-contained safetensors file, through the HF cache."""
    body, _, revision = spec[len("hf://") :].partition("@")
    parts = body.split("/")
    if len(parts) < 2:
        raise VLPromptError(f"hub prompt {spec!r} must look like hf://<org>/<repo>[/<file>][@revision]")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or HUB_TENSORS
    try:
        from huggingface_hub import hf_hub_download

        local_only = is_offline() if offline is None else offline
        return Path(hf_hub_download(repo_id, filename, revision=revision or None, local_files_only=local_only))
    except Exception as error:  # noqa: BLE001  (network, auth, offline: one clear line)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VLPromptError(f"cannot get {filename} from hub repo {repo_id}: {type(error).__name__}: {first}") from None


def backbone_for(meta: dict[str, Any], device: str = "cpu") -> Backbone:
    """Build the backbone a checkpoint was trained on, from its recorded identity."""
    from vlprompt.backbones import backbone_from_identity

    return backbone_from_identity(meta["backbone"], device)


def _describe(ident: dict[str, Any]) -> str:
    text = describe_identity(ident)
    return text + (f" weights {ident['weights_hash'][:12]}" if ident.get("weights_hash") and "weights" not in text else "")


def load_prompt(
    path_or_name: str | os.PathLike,
    backbone: Backbone | None = None,
    classnames: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    offline: bool | None = None,
) -> PromptMethod:
    """A ready classifier (in eval mode) from a checkpoint path or a zoo entry name.

    `backbone` defaults to the one recorded in the checkpoint, built on `device`. A checkpoint for
    another backbone is refused with an error naming both. `classnames` replaces the trained class
    names for methods whose context does not depend on the class; the others refuse.
    """
    path = resolve_prompt(path_or_name, offline=offline)
    tensors, meta = read_prompt(path)
    if backbone is None:
        backbone = backbone_for(meta, device)
    if not backbone.identity.same_model(meta["backbone"]):
        raise VLPromptError(
            f"prompt {path} was trained on backbone {_describe(meta['backbone'])}, "
            f"not {_describe(backbone.identity.to_dict())}"
        )
    check_split_file(meta, path)
    labels = recorded_labels(meta, path)
    method = build_method(meta["method"], backbone, labels, meta["method_config"])
    method.load_trainable_state(tensors)
    method.to(backbone.device)
    method.eval()
    if classnames is not None and list(classnames) != list(meta["classnames"]):
        if not method.class_agnostic:
            raise VLPromptError(
                f"prompt {path} ({meta['method']}) is tied to its {len(meta['classnames'])} training classes: "
                "its learned parameters depend on the class, so it cannot take new class names "
                "(class-agnostic methods such as unified CoOp or CoCoOp can)"
            )
        method.set_label_space(list(classnames))
    return method


def recorded_labels(meta: dict[str, Any], path: str | os.PathLike) -> LabelSpace:
    """The label space a checkpoint records (older prompts: their class names), checked against its hash."""
    labels = label_space_from_dict(meta["label_space"]) if "label_space" in meta else ClassLabels(tuple(meta["classnames"]))
    recorded = meta.get("classnames_sha256")
    if recorded and classnames_hash(labels.names) != recorded:
        raise VLPromptError(
            f"prompt {path}: its labels do not match the recorded classnames_sha256 ({recorded[:16]}...): "
            "the metadata was edited; restore it or save the prompt again"
        )
    return labels


# -- export -------------------------------------------------------------------------------------


@torch.no_grad()
def export_classifier(
    prompt: str | os.PathLike | PromptMethod,
    out: str | os.PathLike | None = None,
    backbone: Backbone | None = None,
    classnames: Sequence[str] | None = None,
    device: str = "cpu",
    check_classnames: str | os.PathLike | None = None,
) -> torch.Tensor:
    """The class text-feature matrix ``[D, C]`` (fp32, L2-normalised columns) as a fixed linear classifier.

    Saved with ``torch.save`` as a plain tensor, the form CLIP_benchmark's ``--load_clfs`` reads
    (``logits = 100 * image_features @ classifier``); a ``.json`` beside it lists the class order, and
    ``<out>.classnames.txt`` too, one per line (CLIP_benchmark's ``classnames.txt`` layout).
    `check_classnames`: a ``classnames.txt`` (e.g. a webdataset's) the columns must follow, compared
    with underscores as spaces and case ignored; a different order or class is an error (nothing written).
    Methods whose text depends on the image (CoCoOp) or that are not text classifiers (linear probe)
    are refused.
    """
    method = prompt if isinstance(prompt, PromptMethod) else load_prompt(prompt, backbone, classnames, device=device)
    if isinstance(prompt, PromptMethod) and classnames is not None and list(classnames) != method.classnames:
        method.set_label_space(list(classnames))
    features = method.class_features()
    if features is None:
        raise VLPromptError(
            f"{method.name}: has no fixed class text features (its text side depends on the image, or it is not "
            "a text classifier), so it cannot be exported as a linear classifier"
        )
    classifier = features.detach().float().cpu().t().contiguous()  # [D, C]
    if check_classnames is not None:
        check_class_order(method.classnames, check_classnames)
    if out is not None:
        out = Path(out)
        with atomic_path(out) as tmp:
            buffer = io.BytesIO()
            torch.save(classifier, buffer)
            tmp.write_bytes(buffer.getbuffer())
        with atomic_path(out.with_suffix(".classnames.txt")) as tmp:
            tmp.write_text("".join(f"{name}\n" for name in method.classnames), encoding="utf-8")
        info = {
            "shape": list(classifier.shape),
            "layout": "[embed_dim, num_classes]; logits = image_features @ classifier",
            "classnames": list(method.classnames),
            "method": method.name,
            "backbone": method.backbone.identity.to_dict(),
            "source": None if isinstance(prompt, PromptMethod) else str(prompt),
        }
        with atomic_path(out.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(info, indent=2))
    return classifier


def _class_key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def check_class_order(classnames: Sequence[str], path: str | os.PathLike) -> None:
    """`classnames` must be the lines of `path` in order (underscores as spaces, case ignored)."""
    path = Path(path)
    try:
        expected = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise VLPromptError(f"classnames file not found: {path}") from None
    if len(expected) != len(classnames):
        raise VLPromptError(
            f"{path} lists {len(expected)} classes, the classifier has {len(classnames)}; "
            "pass --classes FILE to build the classifier for that file's classes"
        )
    for index, (ours, theirs) in enumerate(zip(classnames, expected)):
        if _class_key(ours) != _class_key(theirs):
            raise VLPromptError(
                f"class order differs from {path} at line {index + 1}: classifier column {index} is {ours!r}, "
                f"the file says {theirs!r}; pass --classes FILE to build the classifier in that order"
            )
