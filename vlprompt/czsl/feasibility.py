"""Open-world feasibility scores (Mancini et al., CompCos CVPR'21, as CSP/DFSP compute them).

For an unseen pair (a, o):

- ``f_obj  = max_{o' != o, (a, o') in train} cos(E(o), E(o'))``,
- ``f_attr = max_{a' != a, (a', o) in train} cos(E(a), E(a'))``,
- ``f = (f_obj + f_attr) / 2`` where each term is -1 when no such pair exists; seen pairs get 0.

``E`` is a word-vector table: a GloVe-format text file (``glove.6B.300d.txt``, as published; names
are lower-cased, mapped through the UT-Zappos/C-GQA custom map and multi-word names (``_``, ``.``,
space) averaged) or the backbone's own text features of the names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt.errors import VLPromptError

# CSP `datasets/feasibility.py` / czsl `load_glove_embeddings` custom map (UT-Zappos and some C-GQA names).
CUSTOM_MAP = {
    "faux.fur": "faux_fur",
    "faux.leather": "faux_leather",
    "full.grain.leather": "full_grain_leather",
    "hair.calf": "hair_calf_leather",
    "patent.leather": "patent_leather",
    "boots.ankle": "ankle_boots",
    "boots.knee.high": "knee_high_boots",
    "boots.mid-calf": "midcalf_boots",
    "shoes.boat.shoes": "boat_shoes",
    "shoes.clogs.and.mules": "clogs_shoes",
    "shoes.flats": "flats_shoes",
    "shoes.heels": "heels",
    "shoes.loafers": "loafers",
    "shoes.oxfords": "oxford_shoes",
    "shoes.sneakers.and.athletic.shoes": "sneakers",
    "traffic_light": "traffic_light",
    "trash_can": "trashcan",
    "dry-erase_board": "dry_erase_board",
    "black_and_white": "black_white",
    "eiffel_tower": "tower",
    "nubuck": "grainy_leather",
}


def _words(name: str) -> list[str]:
    key = name.lower()
    key = CUSTOM_MAP.get(key, key)
    return [w for w in key.replace(" ", "_").split("_") if w]


def glove_vectors(path: str | Path, names: Sequence[str]) -> torch.Tensor:
    """``[len(names), dim]`` vectors from a GloVe-format text file (``word v1 v2 ...`` per line)."""
    path = Path(path)
    if not path.is_file():
        raise VLPromptError(f"word-vector file not found: {path}")
    wanted = {w for name in names for w in _words(name)}
    table: dict[str, torch.Tensor] = {}
    with path.open("r", encoding="utf8", errors="replace") as handle:
        for line in handle:
            word, _, rest = line.rstrip("\n").partition(" ")
            if word in wanted and word not in table:
                table[word] = torch.tensor([float(v) for v in rest.split()], dtype=torch.float32)
    out = []
    for name in names:
        words = _words(name)
        missing = [w for w in words if w not in table]
        if missing or not words:
            raise VLPromptError(f"{path}: no vector for {missing or [name]} (from name {name!r}); "
                                f"add it to the file or use feasibility_source=backbone")
        out.append(torch.stack([table[w] for w in words]).mean(0))
    return torch.stack(out)


@torch.no_grad()
def backbone_vectors(backbone, names: Sequence[str], template: str = "{}", batch: int = 256) -> torch.Tensor:
    """The backbone's own (normalised) text features of the names, e.g. as "a photo of {}"-free words."""
    texts = [template.format(n.replace("_", " ").replace(".", " ").lower()) for n in names]
    feats = [F.normalize(backbone.encode_text(texts[i : i + batch]).float(), dim=-1).cpu()
             for i in range(0, len(texts), batch)]
    return torch.cat(feats)


def feasibility_scores(attr_vecs: torch.Tensor, obj_vecs: torch.Tensor, train_pair_index: torch.Tensor,
                       pair_index: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Feasibility ``[P]`` of the pairs in `pair_index` ``[P, 2]`` (seen pairs -> 0), vectorised."""
    A, O = attr_vecs.shape[0], obj_vecs.shape[0]
    ca = F.normalize(attr_vecs.float(), dim=-1) @ F.normalize(attr_vecs.float(), dim=-1).t()  # [A, A]
    co = F.normalize(obj_vecs.float(), dim=-1) @ F.normalize(obj_vecs.float(), dim=-1).t()  # [O, O]
    train = torch.zeros(A, O, dtype=torch.bool)
    train[train_pair_index[:, 0], train_pair_index[:, 1]] = True
    eye_o = torch.eye(O, dtype=torch.bool)
    eye_a = torch.eye(A, dtype=torch.bool)
    f_obj = torch.empty(A, O)
    for start in range(0, A, chunk):  # f_obj[a, o] = max_{o' != o, train[a, o']} co[o, o']
        t = train[start : start + chunk]  # [a, O']
        ok = t[:, None, :] & ~eye_o[None]  # [a, O, O']
        vals = torch.where(ok, co[None].expand(len(t), O, O), torch.tensor(float("-inf")))
        f_obj[start : start + chunk] = vals.max(dim=2).values.clamp(min=-1.0)
    f_attr = torch.empty(A, O)
    train_t = train.t()  # [O, A]
    for start in range(0, O, chunk):  # f_attr[a, o] = max_{a' != a, train[a', o]} ca[a, a']
        t = train_t[start : start + chunk]  # [o, A']
        ok = t[:, None, :] & ~eye_a[None]  # [o, A, A']
        vals = torch.where(ok, ca[None].expand(len(t), A, A), torch.tensor(float("-inf")))
        f_attr[:, start : start + chunk] = vals.max(dim=2).values.clamp(min=-1.0).t()
    f = (f_obj + f_attr) / 2
    f[train] = 0.0
    return f[pair_index[:, 0], pair_index[:, 1]]
