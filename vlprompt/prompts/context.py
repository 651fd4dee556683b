"""Initial values for learned context vectors.

Strategies (``initial_context(..., strategy=...)``):

- ``normal``: N(0, std), CoOp's default (std 0.02);
- ``word``: the token embeddings of given words ("a photo of a"; n = their token count);
- ``uniform``: U(-r, r) with r = 0.5, Lester et al.'s random-uniform init;
- ``vocab``: copies of the embeddings of tokens drawn (without replacement) from the `VOCAB_POPULATION`
  most frequent vocabulary entries (Lester et al.'s ``population_size = 5000``). CLIP's BPE stores no
  counts, so the first word tokens by BPE merge rank stand in for "most frequent" (earlier merges are
  more frequent pairs in the tokenizer's training text); other tokenizers use their first ids
  (sentencepiece and WordPiece vocabularies are roughly frequency ordered). See `frequent_token_ids`.
- ``class_label``: position i takes the embedding of class name i (multi-token names averaged, as
  Lester et al.), the remaining positions sampled vocabulary; with ``class_label_fill="cycle"`` the class
  names repeat instead (class i mod C).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlprompt.backbones.base import Backbone
from vlprompt.errors import VLPromptError
from vlprompt.prompts.assembler import PromptAssembler
from vlprompt.prompts.templates import prompt_classname

INIT_STRATEGIES = ("normal", "word", "uniform", "vocab", "class_label")
CLASS_LABEL_FILLS = ("vocab", "cycle")
VOCAB_POPULATION = 5000


def word_embeddings(backbone: Backbone, words: str) -> torch.Tensor:
    """Token embeddings [k, W] of `words` (no SOS/EOT): the prompt they start from is exactly them."""
    ids = backbone.tokenize([words])
    eot = int(backbone.eot_index(ids)[0])
    with torch.no_grad():
        return backbone.embed_tokens(ids[:, backbone.start_length : eot])[0].detach().float().cpu().clone()


def frequent_token_ids(backbone: Backbone, n: int = VOCAB_POPULATION) -> torch.Tensor:
    """Ids of the `n` "most frequent" vocabulary tokens (a proxy where no counts exist).

    open_clip's BPE (``SimpleTokenizer``): ids 0-511 are single bytes; merges follow in rank order, so the
    first `n` merged tokens that end a word (``</w>``: "the", "ing", "on", ...) are taken. Other tokenizers:
    the first `n` ids that are not special tokens.
    """
    tokenizer = getattr(backbone, "_tokenizer", None)
    decoder = getattr(tokenizer, "decoder", None)
    if isinstance(decoder, dict) and hasattr(tokenizer, "bpe_ranks"):
        special = set(getattr(tokenizer, "all_special_ids", ()))
        ids = [i for i in range(512, len(decoder)) if i not in special and str(decoder[i]).endswith("</w>")]
    else:
        special = set(backbone.tokenize([""]).flatten().tolist())
        ids = [i for i in range(_vocab_size(backbone)) if i not in special]
    if len(ids) < 1:
        raise VLPromptError(f"{backbone.identity.name}: no vocabulary tokens to sample an initial context from")
    return torch.tensor(ids[:n], dtype=torch.long)


def _vocab_size(backbone: Backbone) -> int:
    for module in backbone.modules():
        if isinstance(module, torch.nn.Embedding) and module.embedding_dim == backbone.identity.width:
            return int(module.num_embeddings)
    raise VLPromptError(f"{backbone.identity.name}: cannot find the token embedding to sample a vocabulary init from")


def _generator(seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(seed) if seed is not None else None


def sampled_vocab(backbone: Backbone, n: int, seed: int | None = None, population: int = VOCAB_POPULATION) -> torch.Tensor:
    """[n, W] embeddings of tokens drawn without replacement from the `population` most frequent ones."""
    ids = frequent_token_ids(backbone, population)
    if n > len(ids):
        raise VLPromptError(f"vocab init: {n} tokens asked from a population of {len(ids)}")
    pick = ids[torch.randperm(len(ids), generator=_generator(seed))[:n]]
    with torch.no_grad():
        return backbone.embed_tokens(pick.unsqueeze(0).to(backbone.device))[0].detach().float().cpu().clone()


def class_label_context(
    backbone: Backbone, n: int, classnames: Sequence[str], seed: int | None = None, fill: str = "vocab"
) -> torch.Tensor:
    """[n, W]: position i is class name i's mean token embedding; the rest sampled vocab (or cycled names)."""
    if not classnames:
        raise VLPromptError("class_label init needs the class names")
    if fill not in CLASS_LABEL_FILLS:
        raise VLPromptError(f"class_label_fill {fill!r} is not one of {list(CLASS_LABEL_FILLS)}")
    labels = [word_embeddings(backbone, name.replace("_", " ")).mean(dim=0) for name in classnames[:n]]
    rows = [labels[i % len(labels)] for i in range(n)] if fill == "cycle" else labels[:n]
    if len(rows) < n:
        rows += list(sampled_vocab(backbone, n - len(rows), seed))
    return torch.stack(rows)


def init_strategy(strategy: str, init_words: str) -> str:
    """The strategy a config means: "" is words when given, else normal."""
    return strategy or ("word" if init_words else "normal")


def initial_context(
    backbone: Backbone,
    n_ctx: int,
    init_words: str = "",
    std: float = 0.02,
    seed: int | None = None,
    strategy: str = "",
    classnames: Sequence[str] = (),
    uniform_range: float = 0.5,
    class_label_fill: str = "vocab",
    n_classes: int | None = None,
) -> torch.Tensor:
    """[n, W] context by `strategy` (see the module docstring); "" keeps the old rule: words when given
    (n = their token count), else N(0, std). With `n_classes`, the random strategies (normal, uniform)
    give ``[n_classes, n, W]``, every class drawn independently (the released CoOp's class-specific init);
    the other strategies stay ``[n, W]`` (the caller copies them per class)."""
    strategy = init_strategy(strategy, init_words)
    if strategy not in INIT_STRATEGIES:
        raise VLPromptError(f"context init {strategy!r} is not one of {list(INIT_STRATEGIES)}")
    if strategy == "word":
        if not init_words:
            raise VLPromptError("context init 'word' needs words (ctx_init: \"a photo of a\")")
        return word_embeddings(backbone, init_words)
    shape = (n_ctx, backbone.identity.width) if n_classes is None else (n_classes, n_ctx, backbone.identity.width)
    if strategy == "normal":
        return torch.randn(*shape, generator=_generator(seed)) * std
    if strategy == "uniform":
        return (torch.rand(*shape, generator=_generator(seed)) * 2 - 1) * uniform_range
    if strategy == "vocab":
        return sampled_vocab(backbone, n_ctx, seed)
    return class_label_context(backbone, n_ctx, classnames, seed, class_label_fill)


def check_init(strategy: str, ctx_init: str, where: str) -> None:
    """Config-time check of a strategy name and its words."""
    if strategy and strategy not in INIT_STRATEGIES:
        raise VLPromptError(f"{where}: init {strategy!r} is not one of {list(INIT_STRATEGIES)} (or \"\" for the default)")
    if strategy and strategy != "word" and ctx_init:
        raise VLPromptError(
            f"{where}: ctx_init words are only used by init 'word' (got init {strategy!r}); set ctx_init: \"\""
        )


def context_class_prompts(backbone: Backbone, classnames: Sequence[str], n_ctx: int) -> PromptAssembler:
    """CoOp's unified-context prompt ``"{ctx} {class}."`` over `classnames` (n_ctx learned tokens in slot ``ctx``)."""
    return PromptAssembler(backbone, "{ctx} {class}.", {"class": [prompt_classname(c) for c in classnames]}, {"ctx": n_ctx})
