"""Model cards with the Hugging Face Hub's metadata, for `zoo push` and beside every saved prompt.

The YAML front matter carries what the Hub indexes: ``library_name``, ``pipeline_tag``
(``zero-shot-image-classification``), ``base_model`` (the backbone's Hub repo when it has one: a
``hf:``/``hf-hub:`` backbone, or open_clip's pretrained config for an architecture + tag),
``datasets`` (the training dataset) and ``model-index`` (one result per evaluated phase: all, base,
new..., with accuracy, top-5 and mean per-class recall in percent, or the CZSL metrics).
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

PIPELINE_TAG = "zero-shot-image-classification"
_METRIC_NAMES = {  # vlprompt's metric key -> (Hub metric type, display name)
    "top1": ("accuracy", "top-1 accuracy"),
    "top5": ("top_5_accuracy", "top-5 accuracy"),
    "mean_per_class_recall": ("mean_per_class_recall", "mean per-class recall"),
    "hm": ("harmonic_mean", "harmonic mean (base, new)"),
    "auc": ("auc", "AUC (seen-unseen)"),
    "best_hm": ("harmonic_mean", "best harmonic mean (seen, unseen)"),
}


def base_model(backbone: dict[str, Any]) -> str | None:
    """The backbone's Hub repo id, when it has one."""
    source, name, tag = backbone.get("source"), str(backbone.get("name") or ""), backbone.get("pretrained")
    if name.startswith("hf-hub:"):
        return name.removeprefix("hf-hub:")
    if source == "hf" and not name.startswith(("/", ".", "~")):
        return name.removeprefix("hf:")
    if source == "open_clip" and tag:
        try:
            import open_clip  # only to read its pretrained table (no weights are touched)

            hub = (open_clip.get_pretrained_cfg(name, str(tag)) or {}).get("hf_hub", "")
        except Exception:  # noqa: BLE001  (an architecture open_clip does not know: no base model)
            hub = ""
        return hub.strip("/") or None
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return round(float(value), 4)
    return None


def model_index(meta: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The ``model-index`` entry: one result per evaluated phase that has Hub-reportable metrics."""
    dataset = (meta.get("training") or {}).get("dataset")
    metrics = meta.get("metrics") or {}
    phases = metrics if all(isinstance(v, dict) for v in metrics.values()) else {"all": metrics}
    results = []
    for phase, values in phases.items():
        reported = [
            {"type": kind, "name": label, "value": _number(values[key])}
            for key, (kind, label) in _METRIC_NAMES.items()
            if key in values and _number(values[key]) is not None
        ]
        if not reported or not dataset:
            continue
        split = "test" if phase == "all" else f"test ({phase})"
        results.append(
            {
                "task": {"type": PIPELINE_TAG, "name": "Zero-shot image classification with a learned prompt"},
                "dataset": {"type": str(dataset), "name": str(dataset), "split": split},
                "metrics": reported,
            }
        )
    return [{"name": name, "results": results}] if results else []


def card_metadata(meta: dict[str, Any], name: str) -> dict[str, Any]:
    ident = meta.get("backbone") or {}
    dataset = (meta.get("training") or {}).get("dataset")
    front: dict[str, Any] = {"library_name": "vlprompt", "pipeline_tag": PIPELINE_TAG}
    parent = base_model(ident)
    if parent:
        front["base_model"] = parent
    front["tags"] = ["vlprompt", "prompt-learning", "clip", str(meta.get("method"))]
    if dataset:
        front["datasets"] = [str(dataset)]
    index = model_index(meta, name)
    if index:
        front["model-index"] = index
    return front


def model_card(meta: dict[str, Any], repo_id: str, tensors_file: str, config_file: str) -> str:
    """README.md text: Hub metadata front matter, then what the prompt is and how to load it."""
    ident = meta.get("backbone") or {}
    training = {k: v for k, v in (meta.get("training") or {}).items() if k != "loss_classnames"}
    front = yaml.safe_dump(card_metadata(meta, repo_id.split("/")[-1]), sort_keys=False, allow_unicode=True)
    load = f'vlprompt.load_prompt("hf://{repo_id}")' if "/" in repo_id else f'vlprompt.load_prompt("{tensors_file}")'
    lines = [
        "---",
        front.rstrip(),
        "---",
        "",
        f"# {repo_id}",
        "",
        f"A `{meta.get('method')}` soft prompt for `{ident.get('name')}` (pretrained `{ident.get('pretrained')}`), "
        f"{len(meta.get('classnames') or [])} classes, trained with vlprompt.",
        "",
        f"- training data: `{json.dumps(training, default=str)}`",
        f"- metrics: `{json.dumps(meta.get('metrics') or {}, default=str)}`",
        "",
        "```python",
        "import vlprompt",
        f"method = {load}  # a ready classifier: method(images) -> logits",
        "```",
        "",
        f"Files: `{tensors_file}` (trained tensors; the config is also in its header) and `{config_file}`.",
    ]
    return "\n".join(lines) + "\n"


def read_card_metadata(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card (empty when it has none, or none that is a YAML mapping: a
    user's README may open with a ``---`` rule)."""
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    try:
        front = yaml.safe_load(text[4:end]) if end > 0 else {}
    except yaml.YAMLError:
        return {}
    return front if isinstance(front, dict) else {}


def card_is_ours(text: str) -> bool:
    """A README written by vlprompt (it may be rewritten); any other README is the user's."""
    return read_card_metadata(text).get("library_name") == "vlprompt"
