"""Prompt checkpoints (safetensors + JSON), the registry of published prompts, verified downloads."""

from vlprompt.zoo.checkpoint import (
    export_classifier,
    load_prompt,
    read_prompt,
    read_prompt_meta,
    save_prompt,
)
from vlprompt.zoo.download import download_url, is_offline
from vlprompt.zoo.predict import predict
from vlprompt.zoo.registry import ZooEntry, add_bundled_entry, fetch, get_entry, load_registry, verify_entry

__all__ = [
    "ZooEntry",
    "add_bundled_entry",
    "download_url",
    "export_classifier",
    "fetch",
    "get_entry",
    "is_offline",
    "load_prompt",
    "load_registry",
    "predict",
    "read_prompt",
    "read_prompt_meta",
    "save_prompt",
    "verify_entry",
]
