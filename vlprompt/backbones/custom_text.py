"""open_clip's `CustomTextCLIP` (separate ``model.text`` tower; image tower often timm) behind `Backbone`.

``create_backbone("ViT-B-16-SigLIP", "webli")`` (any open_clip name that open_clip builds as CustomTextCLIP
comes here; ``open_clip_custom:`` names this source explicitly). Two kinds of text tower take soft prompts,
each run exactly as its own forward:

- open_clip's `TextTransformer` (SigLIP, ``"custom_text": true`` configs): positional embedding, the tower's
  causal mask (or none), blocks, final LayerNorm, its pooling (argmax / eos / last / first) and projection.
  Truncation only where exact: causal mask and an EOT-style pooling.
- a Hugging Face model in open_clip's `HFTextEncoder` (``text_cfg.hf_model_name``: roberta-, xlm-roberta-,
  nllb-clip...; encoder-decoder models run their encoder): token embeddings as ``inputs_embeds``, the padding
  mask open_clip builds from the ids (here: every position up to the last real token, learned ones included),
  then the encoder's own pooler module (mean_pooler, cls_pooler, cls_last_hidden_state_pooler) and ``proj``
  (linear / mlp / identity). Bidirectional, so never truncated.

Tokenizers may write ``<start> text <end> <pad>...`` (BERT, RoBERTa) or ``text <end> <pad>...`` (T5/mT5:
no start token; prompt assembly reads `Backbone.start_length`). Refused with a one-line reason: CoCa's
appended CLS token, pad-masked `TextTransformer` towers, open_clip's max_pooler (it fails in open_clip
itself), and tokenizers that write anything else for the empty text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import open_clip
import torch
from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, HFTextEncoder, MeanPooler
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH
from open_clip.transformer import TextTransformer

from vlprompt.backbones.base import Backbone, BackboneIdentity
from vlprompt.backbones.capabilities import Capability
from vlprompt.backbones.deep_prompts import DeepPrompts
from vlprompt.backbones.open_clip_backbone import (
    TextTowerParts,
    _check_architecture,
    pool_text_states,
    text_capabilities,
    text_tower_states,
)
from vlprompt.backbones.open_clip_vision import OpenClipImageSide, vision_capabilities
from vlprompt.backbones.pretrained import build_open_clip
from vlprompt.backbones.registry import BACKBONE_SOURCES
from vlprompt.backbones.text_layout import TextLayout
from vlprompt.errors import VLPromptError

_EOT_RULES: dict[str, Callable[[torch.Tensor, TextTransformer], torch.Tensor]] = {
    "argmax": lambda ids, text: ids.argmax(dim=-1),  # CLIP's EOT has the largest id
    "eos": lambda ids, text: (ids == text.eos_id).int().argmax(dim=-1),
    "last": lambda ids, text: torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device),
    "first": lambda ids, text: torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device),
}

# hf_pooler_type -> open_clip pooler class whose output depends only on the padding mask and the hidden states
EXACT_HF_POOLERS: dict[str, type] = {
    "mean_pooler": MeanPooler,
    "cls_pooler": ClsPooler,
    "cls_last_hidden_state_pooler": ClsLastHiddenStatePooler,
}


class OpenClipTextTower:
    """open_clip's own `TextTransformer`: soft prompts run as ``TextTransformer.forward``."""

    def __init__(self, text: TextTransformer, name: str) -> None:
        self.text = text
        self.causal = text.attn_mask is not None
        self.context_length = int(text.context_length)
        self.width = int(text.width)
        self.embed_dim = int(text.output_dim if text.text_projection is not None else text.width)
        self.parts = TextTowerParts(
            text.transformer, text.positional_embedding, text.attn_mask, text.ln_final, text.text_projection, text.pool_type
        )
        self.capabilities = text_capabilities(self.parts)

    @staticmethod
    def unsupported(text: TextTransformer) -> str | None:
        if text.cls_emb is not None:
            return "text tower appends a CLS embedding (CoCa), not supported for soft prompts"
        if text.use_pad_mask:
            return "text tower masks padding from the token ids, not supported for soft prompts"
        if text.pool_type not in _EOT_RULES:
            return f"text pooling {text.pool_type!r} is not supported; supported: {', '.join(_EOT_RULES)}"
        return None

    def tokenizer_problem(self, tokenize: Callable[[Sequence[str]], torch.Tensor]) -> str | None:
        return None

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        return _EOT_RULES[self.text.pool_type](ids, self.text)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text.token_embedding(ids)

    def states(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        return text_tower_states(self.parts, embeds, eot_index, truncate and self.causal, deep)

    def states_with_layout(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, layout: TextLayout, truncate: bool
    ) -> torch.Tensor:
        return text_tower_states(self.parts, embeds, eot_index, truncate and self.causal, layout=layout)

    def pool(self, states: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        return pool_text_states(self.parts, states, eot_index)

    def encode(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        return self.pool(self.states(embeds, eot_index, truncate, deep), eot_index)


class HFTextTower:
    """A Hugging Face model inside open_clip's `HFTextEncoder`, run as ``HFTextEncoder.forward`` does but from
    ``inputs_embeds``. Its attention mask, ``ids != pad_token_id``, is rebuilt from `eot_index` (the last real
    token; ids are right-padded), so learned vectors at placeholder positions count as real tokens."""

    causal = False  # bidirectional: no truncation, no shared prefix
    capabilities: set[Capability] = set()  # neither token states nor deep prompts (yet)

    def __init__(self, text: HFTextEncoder, name: str) -> None:
        self.text = text
        self.pad_id = int(text.config.pad_token_id)
        self.embedding = text.transformer.get_input_embeddings()
        text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
        self.context_length = int(text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH))
        self.width = int(self.embedding.weight.shape[1])
        self.embed_dim = int(text.output_dim)

    @staticmethod
    def unsupported(text: HFTextEncoder) -> str | None:
        pooler = type(text.pooler)
        if pooler not in EXACT_HF_POOLERS.values():
            return (
                f"text pooler {pooler.__name__} is not supported for soft prompts (open_clip's max_pooler fails in "
                f"open_clip itself); supported hf_pooler_type: {', '.join(EXACT_HF_POOLERS)}"
            )
        if not hasattr(text, "proj"):
            return "text tower has no projection (hf_proj_type is none but the width differs from embed_dim)"
        if getattr(text.config, "pad_token_id", None) is None:
            return "Hugging Face text config has no pad_token_id (open_clip builds the attention mask from it)"
        return None

    def tokenizer_problem(self, tokenize: Callable[[Sequence[str]], torch.Tensor]) -> str | None:
        """Prompt assembly needs ``[<start>] text <end>`` followed by this tower's padding."""
        empty = tokenize([""])
        try:
            if int(self.eot_index(empty)[0]) in (0, 1):
                return None
        except VLPromptError:
            pass
        return (
            f"its tokenizer writes {empty[0, :4].tolist()}... for the empty text; soft prompts need [<start>] <end> "
            f"then padding with the text config's pad_token_id {self.pad_id}"
        )

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids != self.pad_id
        last = ids.shape[1] - 1 - real.flip(-1).int().argmax(dim=-1)
        inside = torch.arange(ids.shape[1], device=ids.device)[None] <= last[:, None]
        if bool((inside & ~real).any()):
            raise VLPromptError(
                f"token ids hold padding ({self.pad_id}) before their last real token; this Hugging Face text tower "
                "takes right-padded ids only"
            )
        return last.long()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids)

    def encode(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        text = self.text
        embeds = embeds.to(self.embedding.weight.device, self.embedding.weight.dtype)
        positions = torch.arange(embeds.shape[1], device=embeds.device)
        mask = (positions[None] <= eot_index.to(embeds.device)[:, None]).long()
        out = text.transformer(inputs_embeds=embeds, attention_mask=mask)
        return text.proj(text.pooler(out, mask))


TEXT_TOWERS: dict[type, type] = {TextTransformer: OpenClipTextTower, HFTextEncoder: HFTextTower}


def _tower_class(text: torch.nn.Module) -> type | None:
    return next((tower for cls, tower in TEXT_TOWERS.items() if isinstance(text, cls)), None)


def unsupported_text_tower(model: torch.nn.Module) -> str | None:
    """Why this model's text tower cannot take soft prompts exactly here (None: it can)."""
    text = getattr(model, "text", None)
    if text is None:
        return f"{type(model).__name__} has no separate text tower (use the open_clip source)"
    tower = _tower_class(text)
    if tower is None:
        return (
            f"text tower {type(text).__name__} is not supported for soft prompts; supported: "
            f"{', '.join(cls.__name__ for cls in TEXT_TOWERS)}"
        )
    return tower.unsupported(text)


def text_tower(model: torch.nn.Module, name: str) -> OpenClipTextTower | HFTextTower:
    """The soft-prompt runner for `model.text`, or a one-line VLPromptError saying why there is none."""
    reason = unsupported_text_tower(model)
    if reason is not None:
        raise VLPromptError(f"{name}: {reason}")
    return _tower_class(model.text)(model.text, name)


class CustomTextClipBackbone(OpenClipImageSide, Backbone):
    """Frozen open_clip `CustomTextCLIP` whose ``text`` is a `TextTransformer` or an `HFTextEncoder`."""

    def __init__(self, model: torch.nn.Module, identity: BackboneIdentity) -> None:
        super().__init__()
        tower = text_tower(model, identity.name)
        self.model = model.eval().requires_grad_(False)
        self.identity = identity
        self.text = model.text
        self.tower = tower  # plain object holding references into self.text
        self.causal = tower.causal
        try:
            self._tokenizer = open_clip.get_tokenizer(identity.name, context_length=tower.context_length)
        except Exception as error:  # SigLIP / HF tokenizers fetch vocabulary files on first use
            raise VLPromptError(
                f"{identity.name}: cannot build its tokenizer ({type(error).__name__}: {str(error)[:200]}). "
                "open_clip downloads SigLIP / Hugging Face tokenizer files on first use: run once on a machine "
                "with network so they land in the Hugging Face cache (HF_HOME), then copy that cache here"
            ) from None
        problem = tower.tokenizer_problem(self.tokenize)
        if problem is not None:
            raise VLPromptError(f"{identity.name}: {problem}")
        cfg = open_clip.transform.PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
        self.train_transform: Callable = open_clip.transform.image_transform_v2(cfg, is_train=True)
        self.eval_transform: Callable = open_clip.transform.image_transform_v2(cfg, is_train=False)
        size = cfg.size if isinstance(cfg.size, (tuple, list)) else (cfg.size, cfg.size)
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        caps = set(tower.capabilities) | vision_capabilities(model.visual)
        if hasattr(model.visual, "forward_intermediates"):
            caps.add(Capability.IMAGE_TOKENS)
        self.capabilities = frozenset(caps)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled position (TextTransformer) or last real token, the end of the padding mask (HF towers)."""
        return self.tower.eot_index(ids)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tower.embed(ids.to(self.device))

    def encode_text_embeds(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        self._refuse_deep(deep)
        return self.tower.encode(embeds, eot_index, truncate, deep)

    def text_token_states(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        self.require(Capability.TEXT_TOKEN_STATES, "text_token_states")
        self._refuse_deep(deep)
        return self.tower.states(embeds, eot_index, truncate, deep)

    def pool_text_states(self, states: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        self.require(Capability.TEXT_TOKEN_STATES, "pool_text_states")
        return self.tower.pool(states, eot_index)

    def text_block_count(self) -> int:
        self.require(Capability.DEEP_TEXT_PROMPTS, "text_block_count")
        return len(self.tower.parts.transformer.resblocks)

    def text_states_with_layout(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, layout: TextLayout, truncate: bool = True
    ) -> torch.Tensor:
        self.require(Capability.TEXT_LAYOUT, "text_states_with_layout")
        return self.tower.states_with_layout(embeds, eot_index, layout, truncate)

    def shared_prefix_unsupported(self) -> str | None:
        return "CustomTextCLIP towers have no shared-prefix encoding in vlprompt (whole prompts are encoded)"

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        self.require(Capability.IMAGE_TOKENS, "image_tokens")
        out = self.model.visual.forward_intermediates(images.to(self.device, self.dtype), indices=1, intermediates_only=True)
        tokens = out["image_intermediates"][-1] if isinstance(out, dict) else out[-1]
        return tokens.flatten(2).transpose(1, 2) if tokens.dim() == 4 else tokens

    @property
    def logit_scale(self) -> torch.Tensor:
        # SigLIP models also carry a logit_bias (sigmoid loss); a softmax over classes ignores it.
        return self.model.logit_scale.exp().clamp(max=100.0).reshape(())


def _create(name: str, pretrained: str | None, device: str) -> torch.nn.Module:
    """open_clip's model; without an open_clip tag, Hugging Face text towers start from their config only
    (``pretrained_text=False``): vlprompt loads the weights itself, or was asked for random ones."""
    try:
        if pretrained is None:
            return open_clip.create_model(name, pretrained=None, device=device, pretrained_text=False)
        return open_clip.create_model(name, pretrained=pretrained, device=device)
    except OSError as error:  # transformers: a Hugging Face config or weights not in the cache and no network
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise VLPromptError(
            f"{name}: cannot build its Hugging Face text tower ({first[:200]}). Its config is read from the "
            "Hugging Face hub on first use: run once on a machine with network (HF_HOME cache), then copy the cache here"
        ) from None


@BACKBONE_SOURCES.register("open_clip_custom")
def create_custom_text_backbone(name: str, pretrained: str | None = None, device: str = "cpu") -> CustomTextClipBackbone:
    """An open_clip architecture built as `CustomTextCLIP`; `pretrained` as for the open_clip source:
    None (random), a local checkpoint file, or an open_clip tag (downloaded on first use)."""
    _check_architecture(name)
    model, pretrained, weights_hash = build_open_clip(name, pretrained, lambda tag: _create(name, tag, device))
    from open_clip.model import CLIP

    if isinstance(model, CLIP):
        raise VLPromptError(f"{name} is a plain open_clip CLIP, not CustomTextCLIP: use --backbone {name} (the open_clip source)")
    return wrap_custom_text(model, name, pretrained, weights_hash, device, source="open_clip_custom")


def wrap_custom_text(
    model: torch.nn.Module, name: str, pretrained: str | None, weights_hash: str | None, device: str, source: str
) -> CustomTextClipBackbone:
    """A built `CustomTextCLIP` as a backbone, its identity read from its text tower."""
    from open_clip.model import CustomTextCLIP

    if not isinstance(model, CustomTextCLIP):
        raise VLPromptError(f"{name} builds an open_clip {type(model).__name__}; this source takes CustomTextCLIP models only")
    tower = text_tower(model, name)
    identity = BackboneIdentity(
        source=source,
        name=name,
        pretrained=pretrained,
        embed_dim=tower.embed_dim,
        width=tower.width,
        context_length=tower.context_length,
        weights_hash=weights_hash,
    )
    return CustomTextClipBackbone(model.to(device), identity)
