"""Publishing a prompt to a Hugging Face Hub repo (open_clip / peft-style file names)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from vlprompt.errors import VLPromptError
from vlprompt.zoo.card import model_card
from vlprompt.zoo.checkpoint import HUB_CONFIG, HUB_TENSORS, file_sha256, read_prompt, resolve_prompt, write_prompt_files
from vlprompt.zoo.registry import entry_metadata


def push_prompt(
    prompt: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
) -> dict[str, Any]:
    """Upload a checkpoint (path or zoo name) to `repo_id` as ``vlprompt_model.safetensors`` +
    ``vlprompt_config.json`` + a model card; returns a registry entry for it (``hf://`` source at the
    new commit, sha256, size), ready for a registry file."""
    if api is None:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise VLPromptError("pushing needs huggingface_hub (pip install huggingface_hub)") from None
        api = HfApi()
    tensors, meta = read_prompt(resolve_prompt(prompt))
    with tempfile.TemporaryDirectory(prefix="vlprompt-push-") as folder:
        folder_path = Path(folder)
        model_path = write_prompt_files(tensors, meta, folder_path / HUB_TENSORS, folder_path / HUB_CONFIG)
        (folder_path / "README.md").write_text(model_card(meta, repo_id, HUB_TENSORS, HUB_CONFIG))
        sha256, size = file_sha256(model_path), model_path.stat().st_size
        try:
            api.create_repo(repo_id, token=token, private=private, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                token=token,
                commit_message=commit_message or f"Upload {meta.get('method')} prompt with vlprompt",
            )
        except Exception as error:  # noqa: BLE001  (network, auth, permissions: one clear line)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise VLPromptError(f"push to {repo_id} failed: {type(error).__name__}: {first}") from None
    commit = getattr(info, "oid", None) or revision
    source = f"hf://{repo_id}/{HUB_TENSORS}" + (f"@{commit}" if commit else "")
    name = repo_id.split("/")[-1]
    return {
        "name": name,
        "filename": f"{name}.safetensors",
        "sources": [source],
        "sha256": sha256,
        "size": size,
        "url": getattr(info, "commit_url", None),
        **entry_metadata(meta),
    }
