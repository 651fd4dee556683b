"""One prompt-assembly mechanism for every method.

A template such as ``"{ctx} {class}."`` or ``"a photo of {attr} {obj}"`` names slots. Slots given
text per prompt (class names, attribute words) are tokenized once; slots given a length are *learned*:
they hold placeholder tokens whose embeddings are replaced at forward time by vectors the method
passes in. The frozen word embeddings, every slot's positions and each prompt's EOT index are derived
once here, so methods only decide which vectors go where.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import DeepPrompts
from vlprompt.errors import VLPromptError

log = logging.getLogger(__name__)
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class _Piece:
    text: str | None = None  # literal text (after filling text slots)
    slot: str | None = None  # learned slot name


def _split_template(template: str) -> list[tuple[str, str]]:
    """["a photo of ", "{attr}", ...] -> [("text", "a photo of "), ("slot", "attr"), ...]."""
    parts: list[tuple[str, str]] = []
    cursor = 0
    for match in _SLOT.finditer(template):
        if match.start() > cursor:
            parts.append(("text", template[cursor : match.start()]))
        parts.append(("slot", match.group(1)))
        cursor = match.end()
    if cursor < len(template):
        parts.append(("text", template[cursor:]))
    return parts


def untruncated_length(backbone: Backbone, text: str, words: int = 12) -> int:
    """Tokens of `text` without the context-length cut (SOS/EOT excluded): the text is tokenized in
    chunks of `words` words (BPE tokenizers split at whitespace first, so the counts add up)."""
    start = backbone.start_length
    parts = text.split(" ")
    chunks = [" ".join(parts[i:i + words]) for i in range(0, len(parts), words)]
    chunks = [chunk if i == 0 else " " + chunk for i, chunk in enumerate(chunks)]
    tokens = backbone.tokenize(chunks)
    return int(sum(int(eot) - start for eot in backbone.eot_index(tokens)))


class PromptAssembler(nn.Module):
    """Tokenized prompts with learned slots; `assemble` fills them, `encode` runs the text tower.

    Attributes:
        use_shared_prefix: let `encode` encode the shared leading positions once when that is exact
            (default True; the backbone's ``shared_prefix`` flag switches it off for every assembler).
        min_shared_prefix: shortest shared prefix worth the split path (default 2: more than [SOS]).

    Args:
        backbone: the frozen backbone whose tokenizer and token embedding are used.
        template: text with ``{name}`` slots.
        texts: text slot name -> one string per prompt (all lists the same length P).
        learned: learned slot name -> number of tokens it occupies.
    """

    use_shared_prefix: bool = True
    min_shared_prefix: int = 2

    def __init__(
        self,
        backbone: Backbone,
        template: str,
        texts: Mapping[str, Sequence[str]],
        learned: Mapping[str, int],
    ) -> None:
        super().__init__()
        parts = _split_template(template)
        named = {name for kind, name in parts if kind == "slot"}
        unknown = named - set(texts) - set(learned)
        if unknown:
            raise VLPromptError(
                f"template {template!r} has slots {sorted(unknown)} with neither text nor a learned length "
                f"(text slots: {sorted(texts)}, learned slots: {sorted(learned)})"
            )
        counts = {len(v) for v in texts.values()}
        if len(counts) > 1:
            raise VLPromptError(f"text slots have different numbers of prompts: { {k: len(v) for k, v in texts.items()} }")
        n_prompts = counts.pop() if counts else 1
        self.template = template
        self.learned_lengths = dict(learned)
        self.n_prompts = n_prompts
        self._backbone = [backbone]  # not a submodule: the assembler must not own the backbone's weights

        # Each prompt as pieces: literal text with text slots filled in, and learned slots.
        prompts: list[list[_Piece]] = []
        for p in range(n_prompts):
            pieces: list[_Piece] = []
            buffer = ""
            for kind, value in parts:
                if kind == "text":
                    buffer += value
                elif value in texts:
                    buffer += texts[value][p]
                else:
                    if buffer:
                        pieces.append(_Piece(text=buffer))
                    buffer = ""
                    pieces.append(_Piece(slot=value))
            if buffer:
                pieces.append(_Piece(text=buffer))
            prompts.append(pieces)

        ids, positions = self._tokenize(backbone, prompts)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("eot_index", backbone.eot_index(ids), persistent=False)
        with torch.no_grad():
            base = backbone.embed_tokens(ids.to(backbone.device)).detach().float()
        self.register_buffer("base_embeds", base, persistent=False)
        for name, pos in positions.items():
            self.register_buffer(f"pos_{name}", pos, persistent=False)
        self.shared_prefix_length = self._shared_prefix_length(ids, positions)
        eot = self.eot_index.tolist()
        self._min_eot, self._max_eot = min(eot), max(eot)
        self._slot_span = {name: (int(pos.min()), int(pos.max())) for name, pos in positions.items()}
        self.path_counts = {"shared": 0, "plain": 0}  # how many `encode` calls took each path

    # -- construction ------------------------------------------------------------------------

    def _tokenize(
        self, backbone: Backbone, prompts: list[list[_Piece]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token ids [P, L] with placeholders at learned slots, and slot positions {name: [P, k]}.

        Literal pieces are tokenized on their own (SOS/EOT stripped), as they read in the whole
        prompt: a piece after a learned slot that starts with a space is tokenized after a
        placeholder word ("X dog." -> drop "X"), CoOp's "X X X X dog." form. CLIP's BPE splits at
        whitespace first, so there it makes no difference; byte-level BPE (RoBERTa) marks the space
        in the word's own token ("Ġdog"), which a tokenizer that strips its input would lose.
        """
        start = backbone.start_length  # [SOS] (CLIP) or nothing (T5) before the text
        x_ids = backbone.tokenize(["X"])
        placeholder = int(x_ids[0, start])
        n_x = int(backbone.eot_index(x_ids)[0]) - start
        keys = sorted({(piece.text, index > 0 and piece.text[:1].isspace())
                       for pieces in prompts for index, piece in enumerate(pieces) if piece.text is not None})
        frag_ids: dict[tuple[str, bool], list[int]] = {}
        if keys:
            tokens = backbone.tokenize([("X" + text) if after_slot else text for text, after_slot in keys])
            eots = backbone.eot_index(tokens)
            for key, row, eot in zip(keys, tokens, eots):
                frag_ids[key] = row[start + (n_x if key[1] else 0) : int(eot)].tolist()
        empty = backbone.tokenize([""])[0]
        head, eot_id = empty[:start].tolist(), int(empty[start])
        pad = int(empty[-1]) if empty.shape[0] > start + 1 else 0
        length = empty.shape[0]

        rows: list[list[int]] = []
        positions: dict[str, list[list[int]]] = {name: [] for name in self.learned_lengths}
        for pieces in prompts:
            row = list(head)
            slot_pos: dict[str, list[int]] = {name: [] for name in self.learned_lengths}
            for index, piece in enumerate(pieces):
                if piece.text is not None:
                    row += frag_ids[(piece.text, index > 0 and piece.text[:1].isspace())]
                else:
                    k = self.learned_lengths[piece.slot]  # type: ignore[index]
                    slot_pos[piece.slot] += list(range(len(row), len(row) + k))  # type: ignore[index]
                    row += [placeholder] * k
            row.append(eot_id)
            if len(row) > length or (len(row) == length and any(
                    len(frag_ids[(p.text, i > 0 and p.text[:1].isspace())]) >= length - len(head) - 1
                    for i, p in enumerate(pieces) if p.text is not None)):
                text = "".join(p.text if p.text is not None else "{" + str(p.slot) + "}" for p in pieces)
                # the fragments were cut to the context length when tokenized: count the whole text
                full = len(head) + 1 + sum(self.learned_lengths[p.slot] if p.text is None else  # type: ignore[index]
                                           untruncated_length(backbone, p.text) for p in pieces)
                if full > length:
                    raise VLPromptError(
                        f"prompt {text!r:.200} is {full} tokens with its learned slots; the text tower takes {length}"
                    )
            rows.append(row + [pad] * (length - len(row)))
            for name in self.learned_lengths:
                positions[name].append(slot_pos[name])
        for name, pos in positions.items():
            if any(len(p) != self.learned_lengths[name] for p in pos):
                raise VLPromptError(f"learned slot {{{name}}} must appear exactly once in template {self.template!r}")
        ids = torch.tensor(rows, dtype=torch.long)
        return ids, {name: torch.tensor(pos, dtype=torch.long) for name, pos in positions.items()}

    @staticmethod
    def _shared_prefix_length(ids: torch.Tensor, positions: dict[str, torch.Tensor]) -> int:
        """Leading positions identical in every prompt (tokens and learned-slot layout)."""
        same = (ids == ids[:1]).all(dim=0)
        for pos in positions.values():
            if not (pos == pos[:1]).all():
                first_diff = int(pos.min())
                same[first_diff:] = False
        differing = (~same).nonzero()
        return int(differing[0]) if len(differing) else ids.shape[1]

    # -- forward -----------------------------------------------------------------------------

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    def positions(self, slot: str) -> torch.Tensor:
        return getattr(self, f"pos_{slot}")

    def assemble(self, **vectors: torch.Tensor) -> torch.Tensor:
        """Fill learned slots. Each value is ``[k, W]`` (shared by all prompts), ``[P, k, W]``
        (per prompt) or ``[B, P, k, W]`` (per image and prompt); returns ``[P, L, W]`` or
        ``[B, P, L, W]`` when any value carries a batch dimension."""
        missing = set(self.learned_lengths) - set(vectors)
        extra = set(vectors) - set(self.learned_lengths)
        if missing or extra:
            raise VLPromptError(f"assemble() needs vectors for {sorted(self.learned_lengths)}, got {sorted(vectors)}")
        batch = None
        for value in vectors.values():
            if value.dim() == 4:
                batch = value.shape[0]
        P, L, W = self.base_embeds.shape
        dtype = next(iter(vectors.values())).dtype if vectors else self.base_embeds.dtype
        out = self.base_embeds.to(dtype)
        if batch is not None:
            out = out.unsqueeze(0).expand(batch, P, L, W)
        for name, value in vectors.items():
            k = self.learned_lengths[name]
            if value.shape[-2:] != (k, W):
                raise VLPromptError(f"slot {{{name}}} takes [..., {k}, {W}] vectors, got {tuple(value.shape)}")
            if value.dim() == 2:
                value = value.unsqueeze(0).expand(P, k, W)
            if batch is not None and value.dim() == 3:
                value = value.unsqueeze(0).expand(batch, P, k, W)
            index = self.positions(name).unsqueeze(-1).expand(P, k, W)
            if batch is not None:
                index = index.unsqueeze(0).expand(batch, P, k, W)
            out = out.scatter(-2, index, value.to(out.dtype))
        return out

    def _check_vectors(self, vectors: Mapping[str, torch.Tensor]) -> int | None:
        """Validate slot vectors; the batch size when any carries one."""
        missing = set(self.learned_lengths) - set(vectors)
        extra = set(vectors) - set(self.learned_lengths)
        if missing or extra:
            raise VLPromptError(f"assemble() needs vectors for {sorted(self.learned_lengths)}, got {sorted(vectors)}")
        W = self.base_embeds.shape[-1]
        batch = None
        for name, value in vectors.items():
            k = self.learned_lengths[name]
            if value.shape[-2:] != (k, W) or value.dim() not in (2, 3, 4):
                raise VLPromptError(f"slot {{{name}}} takes [..., {k}, {W}] vectors, got {tuple(value.shape)}")
            if value.dim() == 4:
                batch = value.shape[0]
        return batch

    @staticmethod
    def _shared_value(value: torch.Tensor, across_images: bool) -> bool:
        """A slot value that every prompt (of an image, or of every image) shares *as a tensor*, not
        merely in value: ``[k, W]``, or ``[P, k, W]`` / ``[B, P, k, W]`` expanded (or of size 1) along P
        (and along B for ``across_images``). Equal but separate per-prompt values need per-prompt
        gradients, which one shared prefix cannot give."""
        dims = {2: [], 3: [0], 4: [0, 1] if across_images else [1]}[value.dim()]
        return all(value.shape[d] == 1 or value.stride(d) == 0 for d in dims)

    def _plan(
        self, vectors: Mapping[str, torch.Tensor], deep: DeepPrompts | None = None
    ) -> tuple[int, bool] | None:
        """(prefix length S, one prefix per image?) for the shared path, or None for the plain path."""
        return self._plan_and_reason(vectors, deep)[0]

    def _plan_and_reason(
        self, vectors: Mapping[str, torch.Tensor], deep: DeepPrompts | None = None
    ) -> tuple[tuple[int, bool] | None, str]:
        """The plan and, in words, why this path."""
        batch = self._check_vectors(vectors)
        backbone = self.backbone
        if not self.use_shared_prefix:
            return None, "switched off for this prompt (use_shared_prefix = False)"
        if not getattr(backbone, "shared_prefix", False):
            return None, "switched off for the backbone (backbone.shared_prefix = False)"
        unsupported = getattr(backbone, "shared_prefix_unsupported", None)
        reason = f"{type(backbone).__name__} has no shared-prefix encoding" if unsupported is None else unsupported()
        if reason is not None:
            return None, reason
        end = self._max_eot + 1
        n_prompts = self.n_prompts * (batch or 1)
        deep_end = None
        if deep is not None and deep.layers:
            if any(t.dim() != 2 for t in deep.layers):
                return None, "per-prompt deep tokens cannot be shared"
            deep_end = deep.start + deep.n_tokens
        options = []
        for per_image in (False, True) if batch is not None else (False,):
            S = min(self.shared_prefix_length, self._min_eot)
            if deep_end is not None and deep_end > S:
                return None, "deep tokens past the shared prefix (the plain path replaces them per prompt)"
            for name, value in vectors.items():
                first, last = self._slot_span[name]
                if first < S and (last >= S or not self._shared_value(value, across_images=not per_image)):
                    S = first  # per-prompt values (or a slot across the boundary): not shared from here on
            if S >= max(1, self.min_shared_prefix):
                positions_run = (batch if per_image else 1) * S + n_prompts * (end - S)
                options.append((positions_run, per_image, S))
        if not options:
            return None, (f"the positions all prompts share end before position {max(1, self.min_shared_prefix)} "
                          "(class name at the front, or per-prompt / class-specific context at the start)")
        _, per_image, S = min(options)
        return (S, per_image), f"{S} leading positions encoded once" + (" per image" if per_image else "")

    def shared_prefix_plan(self, deep: DeepPrompts | None = None, **vectors: torch.Tensor) -> int | None:
        """How many leading positions `encode` computes once (once in all, or once per image when
        batched: whichever runs fewer positions), or None when it takes the plain path: switched off, a
        tower where reuse is not exact, or a prefix shorter than `min_shared_prefix` (the class token at
        the front, per-prompt context at the start...)."""
        plan = self._plan(vectors, deep)
        return None if plan is None else plan[0]

    def _assemble_split(
        self, vectors: Mapping[str, torch.Tensor], S: int, batch: int | None, per_image: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix [G, S, W] and suffixes [G, N, T, W], T up to the last EOT: G = B and N = P with one
        prefix per image, else G = 1 and N = B * P (or P)."""
        P, L, W = self.base_embeds.shape
        B = batch or 1
        G = B if per_image else 1
        end = self._max_eot + 1
        dtype = next(iter(vectors.values())).dtype if vectors else self.base_embeds.dtype
        prefix = self.base_embeds[0, :S].to(dtype).expand(G, S, W)
        suffix = self.base_embeds[:, S:end].to(dtype).expand(B, P, end - S, W)
        for name, value in vectors.items():
            k = self.learned_lengths[name]
            value = value.to(dtype)
            if self._slot_span[name][0] < S:  # shared: the first prompt's value is everyone's
                if value.dim() == 4:
                    value = value[:, 0] if per_image else value[0, 0]
                elif value.dim() == 3:
                    value = value[0]
                index = self.positions(name)[0].view(1, k, 1).expand(G, k, W)
                prefix = prefix.scatter(1, index, value.expand(G, k, W))
            else:
                value = value.expand(B, P, k, W)
                index = (self.positions(name) - S).view(1, P, k, 1).expand(B, P, k, W)
                suffix = suffix.scatter(2, index, value)
        return prefix, suffix.reshape(G, B * P // G, end - S, W)

    def _log_path(self, path: str, reason: str) -> None:
        """Say once per assembler (and reason) which text path `encode` takes and why (info level)."""
        logged = self.__dict__.setdefault("_logged_paths", set())
        if (path, reason) not in logged:
            logged.add((path, reason))
            log.info("prompt %r: %s path (%s)", self.template, "shared-prefix" if path == "shared" else "plain", reason)

    def encode(self, deep: DeepPrompts | None = None, **vectors: torch.Tensor) -> torch.Tensor:
        """Text features ``[P, D]`` (or ``[B, P, D]``) of the filled prompts, not normalised.

        In a causal tower the positions every prompt shares ([SOS] + shared context...) are encoded once
        (per image when the context depends on the image) and only the class-dependent suffixes run
        through the tower; the result equals the plain path. `shared_prefix_plan` tells which path a call
        takes; set ``use_shared_prefix = False`` (or ``backbone.shared_prefix = False``) to force the
        plain path. `deep` prompts (`DeepPrompts`: per-layer tokens replacing the states of their positions at
        the input of blocks 1..J-1) take the shared path too when their tokens are shared and lie in the prefix.
        """
        if deep is not None and not deep.layers:
            deep = None
        plan, reason = self._plan_and_reason(vectors, deep)
        self._log_path("shared" if plan is not None else "plain", reason)
        if plan is not None:
            S, per_image = plan
            batch = self._check_vectors(vectors)
            prefix, suffix = self._assemble_split(vectors, S, batch, per_image)
            self.path_counts["shared"] += 1
            eot = self.eot_index if per_image or batch is None else self.eot_index.repeat(batch)
            feats = self.backbone.encode_text_embeds_shared(prefix, suffix, eot, deep=deep)
            return feats.reshape(batch, self.n_prompts, -1) if batch is not None else feats[0]
        self.path_counts["plain"] += 1
        embeds = self.assemble(**vectors)
        if embeds.dim() == 4:
            B, P = embeds.shape[:2]
            eot = self.eot_index.repeat(B)
            if deep is not None:
                raise VLPromptError("deep prompts with per-image slot vectors are not supported")
            feats = self.backbone.encode_text_embeds(embeds.reshape(B * P, *embeds.shape[2:]), eot)
            return feats.reshape(B, P, -1)
        if deep is not None:
            return self.backbone.encode_text_embeds(embeds, self.eot_index, deep=deep)
        return self.backbone.encode_text_embeds(embeds, self.eot_index)
