"""A vlprompt backbone as a plain open_clip checkpoint, for tools that know only open_clip
(CLIP_benchmark, open_clip's own scripts). The world CLIP's weights ship in a compact form
(`vlprompt.embedded.compact`: fp16, used token rows only) that open_clip cannot read; this writes

    <out>/open_clip_model.safetensors   the full fp32 state dict (open_clip's key names)
    <out>/open_clip_config.json         {"model_cfg": ..., "preprocess_cfg": ...}: ``local-dir:<out>``
    <out>/<architecture>.json           the model config, for ``open_clip.add_model_config``

so both ``open_clip.create_model_and_transforms("local-dir:<out>")`` and, after
``open_clip.add_model_config("<out>/<architecture>.json")``,
``open_clip.create_model_and_transforms("<architecture>", pretrained="<out>/open_clip_model.safetensors")``
give the same model. Features are those of the vlprompt backbone (tests/test_interop_export.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
from safetensors.torch import save_file

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.paths import atomic_path

WEIGHTS_FILE = "open_clip_model.safetensors"
CONFIG_FILE = "open_clip_config.json"


def export_open_clip(backbone: Backbone, out: str | Path) -> dict[str, Path]:
    """Write `backbone` (an open_clip model with a known architecture) under `out`; returns the files."""
    model = getattr(backbone, "model", None)
    name = backbone.identity.name
    if not isinstance(model, open_clip.CLIP):
        raise VLPromptError(
            f"export-backbone writes open_clip CLIP models; {name} ({backbone.identity.source}) is "
            f"{type(model).__name__ if model is not None else 'not one'}"
        )
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise VLPromptError(f"export-backbone: open_clip has no architecture config named {name!r}")
    out = Path(out).expanduser()
    state = {k: v.detach().float().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    files = {"weights": out / WEIGHTS_FILE, "config": out / CONFIG_FILE, "model_config": out / f"{name}.json"}
    with atomic_path(files["weights"]) as tmp:
        metadata = {"format": "pt", "architecture": name, "pretrained": str(backbone.identity.pretrained)}
        save_file(state, str(tmp), metadata=metadata)
    hub_config = {"model_cfg": model_cfg, "preprocess_cfg": open_clip.get_model_preprocess_cfg(model)}
    with atomic_path(files["config"]) as tmp:
        tmp.write_text(json.dumps(hub_config, indent=2) + "\n")
    with atomic_path(files["model_config"]) as tmp:
        tmp.write_text(json.dumps(model_cfg, indent=2) + "\n")
    return files
