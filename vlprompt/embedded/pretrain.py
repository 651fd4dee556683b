"""Recipe: contrastively pretrain the tiny `vlprompt-tiny` CLIP on the embedded world, on CPU.

The recipe (all deterministic from `RECIPE_SEED`):
- batches of 64 are rendered on the fly (`PRETRAIN_STYLE`), one random caption per scene, each
  batch drawing from only 5 of the 10 colours (otherwise the model settles on colour alone and
  never learns shapes);
- CLIP loss with a learnable logit scale, where a caption that truthfully describes another image
  in the batch (e.g. "a photo of a red star." for two red stars) counts as a positive for it too;
- AdamW, linear warmup then cosine decay;
- only the token embeddings of words captions can contain are trained (a compact table stands in
  for the 49408-row embedding during training); afterwards every other row is zero. This is part of
  the recipe: it keeps the optimizer cheap and lets the bundled weights store only the used rows.

Run ``python -m vlprompt.embedded.pretrain --out PATH`` to regenerate the bundled weights file.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vlprompt.embedded.architecture import WORLD_ARCH, register_world_architecture
from vlprompt.embedded.batches import caption_batch, normalize_images, positives_matrix, render_batch
from vlprompt.embedded.captions import caption_words
from vlprompt.embedded.compact import save_compact_weights
from vlprompt.embedded.render import render_scene
from vlprompt.embedded.scene import sample_scene
from vlprompt.embedded.vocab import COLOUR_NAMES, SHAPES

MODEL_NAME = WORLD_ARCH
RECIPE_SEED = 20240607
EVAL_SEED = 12345


@dataclass(frozen=True)
class PretrainConfig:
    """Hyperparameters of the world-CLIP recipe (the defaults produce the bundled weights)."""

    steps: int = 1500
    batch_size: int = 64
    batch_colours: int = 5
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 40
    seed: int = RECIPE_SEED
    threads: int = 2


def create_world_model() -> nn.Module:
    """A randomly initialised `vlprompt-tiny` open_clip model (seed the torch RNG first)."""
    register_world_architecture()
    import logging

    logging.getLogger().disabled = True  # open_clip warns that no pretrained weights were loaded
    try:
        return open_clip.create_model(MODEL_NAME)
    finally:
        logging.getLogger().disabled = False


def tokenizer():
    """The real CLIP BPE tokenizer at vlprompt-tiny's context length (32)."""
    register_world_architecture()
    return open_clip.get_tokenizer(MODEL_NAME)


def used_token_ids() -> torch.Tensor:
    """Sorted ids of every token a caption can contain (words, '.', start and end of text)."""
    tok = tokenizer()
    ids = tok(caption_words() + ["."])
    return torch.unique(ids[ids != 0])


class _CompactText(nn.Module):
    """Trainable rows for the used tokens only, plus the remap from token id to row."""

    def __init__(self, model: nn.Module, ids: torch.Tensor):
        super().__init__()
        self.rows = nn.Parameter(model.token_embedding.weight.detach()[ids].clone())
        remap = torch.full((model.token_embedding.num_embeddings,), len(ids), dtype=torch.long)
        remap[ids] = torch.arange(len(ids))
        self.register_buffer("remap", remap)
        self.ids = ids

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.rows, self.rows.new_zeros(1, self.rows.shape[1])])
        return F.embedding(self.remap[tokens], table)

    def write_back(self, model: nn.Module) -> None:
        """Put the trained rows into the model's full embedding; every other row becomes zero."""
        with torch.no_grad():
            weight = model.token_embedding.weight
            weight.zero_()
            weight[self.ids] = self.rows.detach()


def encode_text_compact(model: nn.Module, compact: _CompactText, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's causal text tower, truncated at the last EOT (identical output, less work)."""
    eot = tokens.argmax(dim=-1)
    n = int(eot.max()) + 1
    x = compact.embed(tokens[:, :n]) + model.positional_embedding[:n]
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), eot]
    proj = model.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def _param_groups(params: dict[str, nn.Parameter], weight_decay: float) -> list[dict]:
    def no_decay(n: str, p: nn.Parameter) -> bool:
        return p.ndim < 2 or "ln" in n or "bias" in n or "logit_scale" in n

    decay = [p for n, p in params.items() if not no_decay(n, p)]
    rest = [p for n, p in params.items() if no_decay(n, p)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor, positives: torch.Tensor
) -> torch.Tensor:
    """Symmetric CLIP loss with multi-positive targets (`positives[caption, image]`)."""
    logits = scale * image_features @ text_features.T  # [image, caption]
    pos = positives.T.float()
    img_targets = pos / pos.sum(1, keepdim=True)
    txt_targets = pos.T / pos.T.sum(1, keepdim=True)
    loss_i = -(img_targets * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(txt_targets * logits.T.log_softmax(1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


def train_world_clip(cfg: PretrainConfig = PretrainConfig(), progress: bool = True, log_every: int = 0) -> nn.Module:
    """Run the recipe and return the trained model (eval mode, unused token rows zeroed)."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        torch.manual_seed(cfg.seed)
        model = create_world_model()
        model.train()
        tok = tokenizer()
        compact = _CompactText(model, used_token_ids())
        params = {n: p for n, p in model.named_parameters() if n != "token_embedding.weight"}
        params["compact.rows"] = compact.rows
        model.token_embedding.weight.requires_grad_(False)
        opt = torch.optim.AdamW(_param_groups(params, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
        rng = np.random.default_rng(cfg.seed)
        bar = tqdm(range(cfg.steps), desc="pretraining world CLIP", disable=not progress)
        for step in bar:
            # Few colours per batch: colour alone cannot separate most negatives, so shape must.
            colours = [COLOUR_NAMES[i] for i in rng.choice(len(COLOUR_NAMES), cfg.batch_colours, replace=False)]
            scenes, images = render_batch(rng, cfg.batch_size, colours=colours)
            captions = caption_batch(rng, scenes)
            tokens = tok([c.text for c in captions])
            positives = positives_matrix(captions, scenes)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            img = F.normalize(model.encode_image(normalize_images(images)), dim=-1)
            txt = F.normalize(encode_text_compact(model, compact, tokens), dim=-1)
            loss = contrastive_loss(img, txt, model.logit_scale.exp(), positives)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if progress:
                bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
            if log_every and (step + 1) % log_every == 0:
                compact.write_back(model)
                model.eval()
                acc = evaluate_pretraining_zero_shot(model, n_images=500)
                model.train()
                print(f"step {step + 1} loss {loss.item():.3f} zero-shot {acc:.3f}", flush=True)
        model.token_embedding.weight.requires_grad_(True)
        compact.write_back(model)
        return model.eval()
    finally:
        torch.set_num_threads(old_threads)


@torch.no_grad()
def evaluate_pretraining_zero_shot(model: nn.Module, n_images: int = 1000, seed: int = EVAL_SEED) -> float:
    """Top-1 of "a photo of a {colour} {shape}." over 100 classes, on pretraining-style scenes."""
    classes = [(c, s) for c in COLOUR_NAMES for s in SHAPES]
    tok = tokenizer()
    text = F.normalize(model.encode_text(tok([f"a photo of a {c} {s}." for c, s in classes])), dim=-1)
    rng = np.random.default_rng(seed)
    correct = 0
    for start in range(0, n_images, 250):
        idx = [i % len(classes) for i in range(start, min(n_images, start + 250))]
        images = []
        for i in idx:
            c, s = classes[i]
            images.append(render_scene(sample_scene(rng, colour=c, shape=s), rng))
        feats = F.normalize(model.encode_image(normalize_images(np.stack(images))), dim=-1)
        pred = (feats @ text.T).argmax(1)
        correct += int((pred == torch.tensor(idx)).sum())
    return correct / n_images


def main(argv: list[str] | None = None) -> None:
    """CLI: train with the recipe and write the compact weights file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="where to write the .safetensors file")
    ap.add_argument("--steps", type=int, default=PretrainConfig.steps)
    ap.add_argument("--log-every", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = PretrainConfig(steps=args.steps)
    t0 = time.time()
    model = train_world_clip(cfg, log_every=args.log_every)
    seconds = time.time() - t0
    acc = evaluate_pretraining_zero_shot(model)
    save_compact_weights(
        model.state_dict(), args.out, metadata={**{k: str(v) for k, v in asdict(cfg).items()}, "zero_shot_100way": f"{acc:.4f}"}
    )
    print(f"trained in {seconds:.0f}s; zero-shot 100-way top-1 {acc:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
