"""What a learned prompt "says": the vocabulary words nearest to each learned vector, as CoOp's
``interpret_prompt.py`` reports them (Euclidean distance between a context vector and every row of the
text tower's token-embedding table, the `top_k` closest).

Any method with context vectors works (``ctx`` of CoOp, CoCoOp, KgCoOp, LASP and the CZSL prefixes:
``[n, W]``, class-specific ``[C, n, W]``, LASP's groups ``[G, n, W]``), plus CSP/DFSP's per-primitive
``vocab`` rows. Token rows that are all zero (never trained: the world CLIP keeps only the rows its
captions use) are skipped, or every small vector would be "nearest" to them.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import PromptMethod
from vlprompt.zoo.checkpoint import load_prompt


def token_embedding_table(backbone: Backbone) -> torch.Tensor:
    """The text tower's ``[V, W]`` token-embedding matrix (the largest embedding of width W)."""
    width = backbone.identity.width
    tables = [m.weight for m in backbone.modules() if isinstance(m, nn.Embedding) and m.embedding_dim == width]
    if not tables:
        raise VLPromptError(f"{backbone.identity.name}: no token-embedding table of width {width} found")
    return max(tables, key=lambda w: w.shape[0]).detach().float()


def decode_token(backbone: Backbone, index: int) -> str:
    """One vocabulary entry as text (open_clip's BPE without its ``</w>`` marker, or a HF token)."""
    tokenizer = getattr(backbone, "_tokenizer", None)
    decoder = getattr(tokenizer, "decoder", None)
    if isinstance(decoder, dict) and index in decoder:
        token = decoder[index]
        byte_decoder = getattr(tokenizer, "byte_decoder", None)
        if byte_decoder:
            token = bytearray(byte_decoder.get(c, ord("?")) for c in token).decode("utf-8", errors="replace")
        return token.replace("</w>", "")
    inner = getattr(tokenizer, "tokenizer", tokenizer)
    convert = getattr(inner, "convert_ids_to_tokens", None)
    return str(convert(int(index))) if convert else f"<{index}>"


def _named_vectors(method: PromptMethod, width: int) -> list[tuple[str, torch.Tensor]]:
    """(label, [W] vector) for every learned vector: context positions and CSP-style primitives."""
    found: list[tuple[str, torch.Tensor]] = []
    for name, tensor in method.trainable_state().items():
        leaf = name.rsplit(".", 1)[-1]
        if tensor.shape[-1] != width or leaf not in ("ctx", "vocab"):
            continue
        if leaf == "vocab":
            names = list(getattr(method, "attrs", [])) + list(getattr(method, "objs", []))
            for i, row in enumerate(tensor.reshape(-1, width)):
                found.append((f"{name}[{names[i] if i < len(names) else i}]", row))
            continue
        vectors = tensor.reshape(-1, tensor.shape[-2], width) if tensor.ndim >= 2 else tensor.reshape(1, 1, width)
        outer = tensor.shape[0] if tensor.ndim == 3 else None
        for g, block in enumerate(vectors):
            prefix = name
            if outer is not None:
                classes = getattr(method, "classnames", [])
                per_class = bool(getattr(method.config, "class_specific", False)) and len(classes) == outer
                prefix = f"{name}[class {classes[g]}]" if per_class else f"{name}[group {g}]"
            for i, row in enumerate(block):
                found.append((f"{prefix}[{i}]", row))
    if not found:
        raise VLPromptError(f"{method.name}: has no learned context vectors to interpret")
    return found


@torch.no_grad()
def interpret_method(method: PromptMethod, top_k: int = 3) -> list[dict[str, Any]]:
    """For each learned vector: its label and the `top_k` nearest words with their distances."""
    if top_k < 1:
        raise VLPromptError(f"--top-k must be at least 1, got {top_k}")
    backbone = method.backbone
    table = token_embedding_table(backbone)
    used = torch.nonzero(table.abs().sum(dim=1)).flatten()
    table = table[used]
    results = []
    for label, vector in _named_vectors(method, table.shape[1]):
        distance = torch.cdist(vector.float().to(table.device)[None], table)[0]
        values, order = distance.topk(min(top_k, len(used)), largest=False)
        words = [
            {"word": decode_token(backbone, int(used[i])), "token_id": int(used[i]), "distance": round(float(d), 4)}
            for d, i in zip(values, order)
        ]
        results.append({"vector": label, "norm": round(float(vector.float().norm()), 4), "nearest": words})
    return results


def interpret_prompt(prompt: str | os.PathLike | PromptMethod, top_k: int = 3, device: str = "cpu") -> list[dict[str, Any]]:
    """`interpret_method` of a saved prompt (path or zoo name), rebuilt on its recorded backbone."""
    method = prompt if isinstance(prompt, PromptMethod) else load_prompt(prompt, device=device)
    return interpret_method(method, top_k)


def format_interpretation(found: list[dict[str, Any]]) -> str:
    lines = []
    for entry in found:
        words = ", ".join(f"{w['word']!r} ({w['distance']:.3f})" for w in entry["nearest"])
        lines.append(f"{entry['vector']:<28} |v|={entry['norm']:.3f}  {words}")
    return "\n".join(lines)
