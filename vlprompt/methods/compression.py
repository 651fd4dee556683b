"""Soft prompt compression: a long hand-written context distilled into n soft tokens, with no images.

The "long context" on CLIP is a template ensemble (CLIP's 80 ImageNet templates: 80 text passes per
class) or per-class long descriptions. Its class features (each prompt encoded and L2-normalised,
averaged per class, re-normalised: `text_classifier`) are the target; an ordinary CoOp prompt of n
learned tokens (``"{ctx} {class}."``) is trained so that its class features reproduce them:

- cosine loss: ``mean_c (1 - cos(f_c, t_c))``;
- text-to-text classification (LASP's direction): each target feature ``t_c`` is classified by the
  learned class features, ``CE(t @ f.T / temperature, c)``, so the compressed classifier keeps the
  ensemble's class geometry, not only each class's direction.

The result is a plain ``coop`` method, saved as every prompt is (`save_prompt`), so ``vlprompt eval
--prompt``, ``predict`` and the zoo take it unchanged. Counterpart of SoftPromptComp (Wang et al., 2024)
on CLIP; see docs/results/seed_systems_b.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.coop import CoOp, CoOpConfig
from vlprompt.paths import read_json
from vlprompt.prompts.handcrafted import text_classifier
from vlprompt.prompts.templates import ClassDescriptions, prompt_classname
from vlprompt.typed_config import from_dict


@dataclass
class CompressConfig:
    """How a context is compressed (`compress`); also recorded in the checkpoint's metadata."""

    n_ctx: int = 4
    ctx_init: str = ""  # words such as "a photo of a" (sets n_ctx), or "" for N(0, 0.02)
    steps: int = 300
    lr: float = 0.01  # AdamW, cosine decay, no weight decay
    cosine_weight: float = 1.0
    classify_weight: float = 1.0
    temperature: float = 0.01  # text-to-text logits = cos / temperature (CLIP's scale 100)
    seed: int = 1

    @classmethod
    def from_dict(cls, values: dict | None, where: str = "compress") -> CompressConfig:
        config = from_dict(cls, values, where)
        config.check(where)
        return config

    def check(self, where: str) -> None:
        if self.n_ctx < 1 and not self.ctx_init:
            raise VLPromptError(f"{where}: n_ctx must be at least 1, got {self.n_ctx}")
        if self.steps < 1:
            raise VLPromptError(f"{where}: steps must be at least 1, got {self.steps}")
        if self.lr <= 0 or self.temperature <= 0:
            raise VLPromptError(f"{where}: lr and temperature must be positive, got {self.lr} and {self.temperature}")
        if self.cosine_weight < 0 or self.classify_weight < 0 or self.cosine_weight + self.classify_weight == 0:
            raise VLPromptError(f"{where}: cosine_weight and classify_weight must be >= 0 and not both 0")


# -- the target -------------------------------------------------------------------------------


def read_descriptions(path: str | Path) -> dict[str, list[str]]:
    """Per-class descriptions: JSON ``{class: [text, ...]}`` (or ``{class: text}``), or text lines
    ``class: description`` (a class may have several lines). Blank lines and ``#`` comments skipped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VLPromptError(f"descriptions file not found: {path}")
    found: dict[str, list[str]] = {}
    if path.suffix == ".json":
        data = read_json(path, "descriptions file")
        if not isinstance(data, dict):
            raise VLPromptError(f"descriptions file {path} must map class names to descriptions")
        for name, value in data.items():
            found[str(name)] = [value] if isinstance(value, str) else [str(v) for v in value]
    else:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, description = line.partition(":")
            if not sep or not name.strip() or not description.strip():
                raise VLPromptError(f"descriptions file {path}, line {number}: expected 'class: description', got {line!r}")
            found.setdefault(name.strip(), []).append(description.strip())
    empty = [name for name, texts in found.items() if not texts]
    if not found or empty:
        raise VLPromptError(f"descriptions file {path} has no descriptions{f' for {empty}' if empty else ''}")
    return found


def description_features(backbone: Backbone, classnames: Sequence[str], descriptions: dict[str, list[str]]) -> torch.Tensor:
    """``[C, D]``: each class's descriptions encoded, L2-normalised, averaged, re-normalised (`text_classifier`
    on `ClassDescriptions`). Every class needs at least one description."""
    missing = [c for c in classnames if c not in descriptions]
    if missing:
        raise VLPromptError(
            f"no descriptions for {len(missing)} classes, e.g. {missing[:3]} (described: {sorted(descriptions)[:5]}...)"
        )
    return text_classifier(backbone, classnames, ClassDescriptions({c: descriptions[c] for c in classnames}))


def compression_target(
    backbone: Backbone,
    classnames: Sequence[str],
    templates: Sequence[str] | None = None,
    descriptions: dict[str, list[str]] | None = None,
) -> torch.Tensor:
    """``[C, D]`` normalised class features of the long context: the template ensemble's zero-shot
    classifier (exactly `text_classifier`), or the class descriptions' mean features."""
    if (templates is None) == (descriptions is None):
        raise VLPromptError("compression needs either templates or class descriptions (exactly one)")
    if descriptions is not None:
        return description_features(backbone, classnames, descriptions)
    return text_classifier(backbone, classnames, list(templates))  # type: ignore[arg-type]


# -- the loss and the loop --------------------------------------------------------------------


def compression_loss(
    features: torch.Tensor, target: torch.Tensor, config: CompressConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cosine + text-to-text classification loss of normalised class features ``[C, D]`` against the target."""
    cosine = (features * target).sum(dim=-1)
    logits = target @ features.t() / config.temperature
    labels = torch.arange(len(target), device=target.device)
    classify = F.cross_entropy(logits, labels)
    loss = config.cosine_weight * (1 - cosine).mean() + config.classify_weight * classify
    acc = (logits.argmax(dim=-1) == labels).float().mean()
    return loss, {
        "loss": float(loss.detach()), "cosine": float(cosine.detach().mean()), "min_cosine": float(cosine.detach().min()),
        "t2t_acc": float(acc) * 100,
    }


def compress(
    backbone: Backbone,
    classnames: Sequence[str],
    target: torch.Tensor,
    config: CompressConfig | None = None,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[CoOp, dict[str, float]]:
    """Train an n-token CoOp prompt over `classnames` whose class features reproduce `target` ``[C, D]``.

    Returns the method (eval mode) and the final stats (cosine to the target, text-to-text accuracy,
    seconds). No images are read.
    """
    config = config or CompressConfig()
    if target.shape[0] != len(classnames):
        raise VLPromptError(f"compression target has {target.shape[0]} rows for {len(classnames)} classes")
    torch.manual_seed(config.seed)
    method = CoOp(backbone, list(classnames), CoOpConfig(n_ctx=config.n_ctx, ctx_init=config.ctx_init, init_seed=config.seed))
    method.to(backbone.device)
    target = F.normalize(target.to(backbone.device).float(), dim=-1)
    optimizer = torch.optim.AdamW([method.ctx], lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    start = time.perf_counter()
    method.train()
    for step in range(config.steps):
        optimizer.zero_grad()
        loss, stats = compression_loss(method.class_features().float(), target, config)
        loss.backward()
        optimizer.step()
        schedule.step()
        if log is not None:
            log(step, stats)
    method.eval()
    with torch.no_grad():
        _, stats = compression_loss(method.class_features().float(), target, config)
    stats["seconds"] = round(time.perf_counter() - start, 3)
    return method, stats


# -- cost -------------------------------------------------------------------------------------


def text_encoding_cost(backbone: Backbone, prompts: Sequence[str]) -> dict[str, int]:
    """Text-tower work of encoding `prompts` once each: passes, and positions run (each prompt up to its
    pooled token, what a causal tower truncated to its EOT computes; the whole context otherwise)."""
    ids = backbone.tokenize(list(prompts))
    eot = backbone.eot_index(ids)
    positions = int((eot + 1).sum()) if backbone.causal else int(ids.numel())
    return {"passes": len(prompts), "positions": positions}


def ensemble_cost(backbone: Backbone, classnames: Sequence[str], templates: Sequence[str]) -> dict[str, int]:
    return text_encoding_cost(backbone, [t.format(prompt_classname(c)) for t in templates for c in classnames])


def prompt_cost(method: CoOp) -> dict[str, int]:
    """Cost of a learned prompt's classifier: one pass per class, its assembled length each."""
    eot = method.prompts.eot_index
    positions = int((eot + 1).sum()) if method.backbone.causal else int(method.prompts.token_ids.numel())
    return {"passes": int(eot.shape[0]), "positions": positions}


__all__ = [
    "CompressConfig", "compress", "compression_loss", "compression_target", "description_features", "ensemble_cost",
    "prompt_cost", "read_descriptions", "text_encoding_cost",
]
