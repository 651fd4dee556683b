"""DFSP (Lu et al., CVPR'23) as the official code (Forest-art/DFSP) builds it: a learned prefix and
primitive vocabulary (CSP's), the pairs' last-layer text token states decomposed into attribute / object
primitives, and the cross-modal fusion: ``txt2img`` (the image tower's own token sequence attends to
pseudo-tokens made from the primitives; MIT-States, C-GQA) or ``img2txt`` (the decomposed primitive
states attend to tokens made from the image sequence, then recompose pairs; UT-Zappos).

Released details kept by default (each has an option restoring the earlier vlprompt behaviour):
- ``context_length: 8``: the text tower runs on the config's context length and the fusion sees the
  token states of all 8 positions, the padding position after the end token included
  (``context_length: 0`` cuts the states after the end token, 7 positions);
- ``fusion_act: quick_gelu``: the fusion blocks' MLPs use QuickGELU (``gelu``: ``nn.GELU``);
- ``text_sa_layers``: self-attention blocks on the text side (released: ``SA_K``, as on the image side).
Deliberate deviation: a primitive absent from the current pair set decomposes to 0 (states) or
``empty_logit`` (logits); the released code takes the mean of an empty set there, which is NaN.
Pooled-feature variants remain as options (``decompose``, ``image_side``). The released ``img2txt``
branch of ``ft_to_logit`` pools its text into ``txt_ft`` but returns ``txt_tf`` (unbound there, so the
released UT-Zappos run stops with an error as committed); vlprompt computes what the names intend.

Weight layout: ``txt2img_2`` (the released ``txt2img_transform_layer2``) is a linear over the flattened
(primitive, position) axis. vlprompt flattens primitive-major (column ``p * L + t``), the released code
position-major (``t * (A + O) + p``); `convert_released_state_dict` permutes the columns (and renames
every fusion weight), so a released checkpoint loads into vlprompt's DFSP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.capabilities import Capability
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import register_method
from vlprompt.methods.label_space import PairLabels
from vlprompt.methods.pairs import PairMethod, PairMethodConfig, SlotPrompt, group_mean, mean_token_embeddings
from vlprompt.prompts.context import word_embeddings


class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)``, which the released DFSP fusion blocks use."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def _blank_image(backbone: Backbone) -> torch.Tensor:
    size = getattr(backbone, "image_size", (224, 224))
    return torch.zeros(1, 3, *size, device=backbone.device, dtype=backbone.dtype)


def image_probe(backbone: Backbone) -> tuple[int, int, bool]:
    """(output tokens, width, whether the tower exposes its token states), from one blank-image pass."""
    if not backbone.supports(Capability.IMAGE_TOKEN_STATES):
        return (*image_token_count(backbone), False)
    with torch.no_grad():
        states = backbone.image_token_states(_blank_image(backbone))  # [1, 1 + T, W]: class token first
    return int(states.shape[1]) - 1, int(states.shape[2]), True


def image_token_count(backbone: Backbone) -> tuple[int, int]:
    """(tokens, width) of the backbone's image tokens, probed once with a blank image."""
    with torch.no_grad():
        tokens = backbone.image_tokens(_blank_image(backbone))
    return int(tokens.shape[1]), int(tokens.shape[2])


FUSIONS = ("txt2img", "img2txt", "none")
ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


@dataclass
class DFSPConfig(PairMethodConfig):
    ctx_init: str = "a photo of"  # learned prefix init
    attr_dropout: float = 0.3
    # txt2img (MIT-States, C-GQA configs) | img2txt (UT-Zappos config) | none (soft prompt only, OnlySPM)
    fusion: str = "txt2img"
    res_w: float = 0.8  # weight of the CLIP features in the residual mix
    att_obj_w: float = 0.01
    sp_w: float = 0.1
    sa_layers: int = 1  # self-attention blocks on the image side after the fusion (SA_K)
    text_sa_layers: int | None = None  # on the text side; None: sa_layers (the released code uses SA_K for both)
    fusion_dropout: float = 0.3
    fusion_act: str = "quick_gelu"  # the fusion MLPs' activation, as released; gelu: nn.GELU (earlier vlprompt)
    # positions of the text token states the fusion sees: the released configs' context_length (8: the
    # prompt "[SOS] a photo of x x [EOT]" plus one padding position); 0: cut after the end token (7)
    context_length: int = 8
    empty_logit: float = -1e4  # decomposed logit of a primitive with no pair in the current set
    # what is decomposed: "tokens" (the pairs' last-layer token states, as the official code), "pooled"
    # (their pooled features), "auto" (tokens when the backbone exposes token states)
    decompose: str = "auto"
    # image queries of the fusion: "tokens" (the image tower's last-block sequence, class token first,
    # fused feature = the tower's own norm + pooling + projection, as the official code), "features"
    # (a query from the CLIP feature + the output tokens, own output layers), "auto" (tokens when exposed)
    image_side: str = "auto"


class _CrossBlock(nn.Module):
    """x + MHA(LN(x), LN(y), LN(y)), then x + MLP(LN(x)) (DFSP's CrossResidualAttentionBlock; with
    ``y=None`` its ResidualAttentionBlock). MLP: Linear, activation, dropout, Linear."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0, act: str = "quick_gelu") -> None:
        super().__init__()
        self.ln_x, self.ln_y, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), ACTIVATIONS[act](), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        q = self.ln_x(x)
        kv = q if y is None else self.ln_y(y)
        x = x + self.attn(q, kv, kv, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TextToImageFusion(nn.Module):
    """DFSP's ``txt2img`` fusion on what the Backbone interface exposes.

    - decomposed primitive text ``[A+O, L, W_txt]`` (token states, L per prompt; or pooled features,
      L = 1 and W_txt = D) -> ``txt2img_1`` (W_txt -> W_img) -> ``txt2img_2`` (a linear over the
      (A+O)·L axis, primitive-major, -> T pseudo-tokens) -> dropout: pseudo-tokens ``[T, W_img]``
      shared by all images, T = the backbone's image-token count + 1;
    - image queries ``[B, T, W_img]``: a query made from the CLIP image feature (the CLS stand-in)
      followed by the backbone's image tokens; they cross-attend to the pseudo-tokens, then pass
      ``sa_layers`` self-attention blocks; the fused image feature is the first token mapped to D;
    - text side: each pair's token states pass ``text_sa_layers`` residual attention blocks (not
      decomposed), then the backbone's own final norm, pooling and projection (pooled: a one-token sequence).

    With ``image_states`` (the official design) the queries are the image tower's own last-block
    sequence (class token first) and the caller pools the fused sequence with the tower's final norm and
    projection; otherwise a query made from the CLIP feature leads the output tokens and the fused
    feature comes from this module's own output layers.
    """

    def __init__(self, n_primitives: int, text_dim: int, n_img_tokens: int, img_width: int, sa_layers: int = 1,
                 dropout: float = 0.3, text_width: int | None = None, seq_len: int = 1,
                 image_states: bool = False, text_sa_layers: int | None = None, act: str = "quick_gelu") -> None:
        super().__init__()
        text_width = text_width or text_dim
        self.n_tokens = n_img_tokens + 1
        self.image_states = image_states
        heads = max(1, img_width // 64)
        self.txt2img_1 = nn.Linear(text_width, img_width)
        self.txt2img_2 = nn.Linear(n_primitives * seq_len, self.n_tokens)
        self.drop = nn.Dropout(dropout)
        self.cross = _CrossBlock(img_width, heads, act=act)
        self.self_blocks = nn.ModuleList(_CrossBlock(img_width, heads, dropout, act) for _ in range(sa_layers))
        if not image_states:
            self.query = nn.Linear(text_dim, img_width)
            self.out_ln = nn.LayerNorm(img_width)
            self.out = nn.Linear(img_width, text_dim)
        n_text = sa_layers if text_sa_layers is None else text_sa_layers
        self.txt_blocks = nn.ModuleList(_CrossBlock(text_width, max(1, text_width // 64), dropout, act)
                                        for _ in range(n_text))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        old = prefix + "txt_block."  # prompts saved before text_sa_layers: one block named txt_block
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[prefix + "txt_blocks.0." + key[len(old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def pseudo_tokens(self, primitives: torch.Tensor) -> torch.Tensor:
        """``[A+O, D]`` or ``[A+O, L, W_txt]`` -> ``[T, W_img]``."""
        x = self.txt2img_1(primitives).reshape(-1, self.txt2img_1.out_features)  # [(A+O)·L, W]
        return self.drop(self.txt2img_2(x.t()).t())  # linear over the primitive(-token) axis -> [T, W]

    def fuse_image(self, clip_feat: torch.Tensor, tokens: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        """Image states ``[B, T, W]`` (`image_states`: the fused sequence, to be pooled by the caller) or
        output tokens ``[B, T-1, W]`` (the fused feature ``[B, D]``) cross-attending to the pseudo-tokens."""
        x = tokens if self.image_states else torch.cat([self.query(clip_feat)[:, None], tokens], dim=1)
        if x.shape[1] != pseudo.shape[0]:
            raise VLPromptError(f"dfsp fusion: {x.shape[1]} image tokens but {pseudo.shape[0]} pseudo-tokens "
                                "(image size differs from the one the fusion was built for)")
        y = pseudo.unsqueeze(0).expand(x.shape[0], -1, -1)
        x = self.cross(x, y)
        for block in self.self_blocks:
            x = block(x)
        return x if self.image_states else self.out(self.out_ln(x[:, 0]))

    def fuse_text(self, text: torch.Tensor) -> torch.Tensor:
        """Pooled ``[P, D]`` -> ``[P, D]``, or token states ``[P, L, W_txt]`` -> ``[P, L, W_txt]``."""
        x = text[:, None] if text.dim() == 2 else text
        for block in self.txt_blocks:
            x = block(x)
        return x[:, 0] if text.dim() == 2 else x


class ImageToTextFusion(nn.Module):
    """DFSP's ``img2txt`` fusion (the released UT-Zappos config), as the released code computes it.

    - image states ``[B, T, W_img]`` -> ``img2txt_1`` (W_img -> W_txt) -> ``img2txt_2`` (a linear over
      the T axis -> L·(A+O) tokens) -> dropout; the released code then reshapes the ``[L·(A+O), B, W]``
      result to ``[L·B, A+O, W]``, so each primitive's keys are L·B rows of that flattened grid (for
      B > 1 rows of different images: the fused text is one function of the whole batch, the same for
      every image in it; reproduced here as released);
    - the decomposed primitive states ``[A+O, L, W_txt]`` cross-attend to those keys (per primitive),
      pass ``text_sa_layers`` self-attention blocks, and pairs are recomposed as attribute ⊙ object
      states through ``compose`` (W_txt -> W_txt): ``[P, L, W_txt]``, pooled by the caller;
    - the image sequence passes ``sa_layers`` self-attention blocks (no cross-attention).
    """

    def __init__(self, n_primitives: int, n_img_tokens: int, img_width: int, text_width: int, seq_len: int,
                 sa_layers: int = 1, dropout: float = 0.3, text_sa_layers: int | None = None,
                 act: str = "quick_gelu") -> None:
        super().__init__()
        self.n_primitives, self.seq_len = n_primitives, seq_len
        self.img2txt_1 = nn.Linear(img_width, text_width)
        self.img2txt_2 = nn.Linear(n_img_tokens + 1, seq_len * n_primitives)
        self.drop = nn.Dropout(dropout)
        # released: crossblock_txt = CrossResidualAttentionBlock(width_txt, width_img // 64), i.e. the image
        # width's head count (16 on ViT-L-14's 768-wide text); the text width's where it does not divide
        heads = max(1, img_width // 64)
        self.cross = _CrossBlock(text_width, heads if text_width % heads == 0 else max(1, text_width // 64), act=act)
        n_text = sa_layers if text_sa_layers is None else text_sa_layers
        self.txt_blocks = nn.ModuleList(_CrossBlock(text_width, max(1, text_width // 64), dropout, act)
                                        for _ in range(n_text))
        self.self_blocks = nn.ModuleList(_CrossBlock(img_width, max(1, img_width // 64), dropout, act)
                                         for _ in range(sa_layers))
        self.compose_proj = nn.Linear(text_width, text_width)

    def keys(self, states: torch.Tensor) -> torch.Tensor:
        """Image states ``[B, T, W_img]`` -> keys ``[A+O, L·B, W_txt]`` (the released reshape)."""
        x = self.img2txt_2(self.img2txt_1(states).transpose(1, 2))  # [B, W, L·(A+O)]
        width = x.shape[1]
        x = x.permute(2, 0, 1).reshape(-1, self.n_primitives, width)  # [L·(A+O), B, W] -> [L·B, A+O, W]
        return self.drop(x).transpose(0, 1)

    def fuse_text(self, primitives: torch.Tensor, keys: torch.Tensor, pairs: torch.Tensor, n_attrs: int) -> torch.Tensor:
        """Primitive states ``[A+O, L, W]`` attending to `keys` -> recomposed pair states ``[P, L, W]``.

        The released code repeats the queries once per image; every copy attends to the same keys, so
        one copy gives the same result."""
        x = self.cross(primitives, keys)
        for block in self.txt_blocks:
            x = block(x)
        return self.compose_proj(x[pairs[:, 0]] * x[n_attrs + pairs[:, 1]])

    def fuse_image(self, states: torch.Tensor) -> torch.Tensor:
        for block in self.self_blocks:
            states = block(states)
        return states


_RELEASED_BLOCK = {"attn.": "attn.", "ln_1.": "ln_x.", "ln_x.": "ln_x.", "ln_y.": "ln_y.", "ln_2.": "ln_2.",
                   "mlp.c_fc.": "mlp.0.", "mlp.c_proj.": "mlp.3."}
_RELEASED_MODULES = {  # released FusionTextImageBlock name -> vlprompt fusion name, per direction
    "txt2img": {"txt2img_transform_layer1.": "txt2img_1.", "txt2img_transform_layer2.": "txt2img_2.",
                "crossblock_img.": "cross.", "resblocks_img.": "self_blocks.", "resblocks_txt.": "txt_blocks."},
    "img2txt": {"img2txt_transform_layer1.": "img2txt_1.", "img2txt_transform_layer2.": "img2txt_2.",
                "crossblock_txt.": "cross.", "resblocks_img.": "self_blocks.", "resblocks_txt.": "txt_blocks.",
                "txt_fine_tune.": "compose_proj."},
}


def released_to_primitive_major(weight: torch.Tensor, n_primitives: int, seq_len: int) -> torch.Tensor:
    """``txt2img_transform_layer2.weight`` ``[T, L·(A+O)]`` (column ``t·(A+O) + p``) -> vlprompt's
    ``txt2img_2.weight`` (column ``p·L + t``)."""
    return weight.reshape(weight.shape[0], seq_len, n_primitives).transpose(1, 2).reshape(weight.shape[0], -1)


def _block_key(rest: str) -> str:
    old = next((k for k in _RELEASED_BLOCK if rest.startswith(k)), None)
    if old is None:
        raise VLPromptError(f"dfsp: unknown released fusion block weight {rest!r}")
    return _RELEASED_BLOCK[old] + rest[len(old):]


def convert_released_state_dict(state: dict[str, torch.Tensor], fusion: str = "txt2img") -> dict[str, torch.Tensor]:
    """A released DFSP state dict (``model.state_dict()`` of Forest-art/DFSP's ``DFSP``) -> the keys
    and layouts of vlprompt's `DFSP` (load with ``strict=False``: the frozen CLIP weights are skipped).

    ``soft_att_obj`` -> ``vocab``, ``soft_prompt`` -> ``ctx``, the fusion blocks renamed (``c_fc`` /
    ``c_proj`` -> ``mlp.0`` / ``mlp.3``, ``ln_1`` -> ``ln_x``), ``txt2img_transform_layer2`` columns
    permuted to primitive-major. The released checkpoints were trained on ViT-L/14 with context length 8:
    load them into a DFSP built on that backbone with the same ``fusion`` and ``context_length``.
    """
    if fusion not in _RELEASED_MODULES:
        raise VLPromptError(f"dfsp: no released weights for fusion {fusion!r} (one of {sorted(_RELEASED_MODULES)})")
    out: dict[str, torch.Tensor] = {}
    if "soft_att_obj" in state:
        out["vocab"] = state["soft_att_obj"].float()
    if "soft_prompt" in state:
        out["ctx"] = state["soft_prompt"].float()
    n_prim = state["soft_att_obj"].shape[0] if "soft_att_obj" in state else None
    for key, value in state.items():
        if not key.startswith("fusion."):
            continue
        name = key[len("fusion."):]
        old = next((o for o in _RELEASED_MODULES[fusion] if name.startswith(o)), None)
        if old is None:  # the other direction's modules, unused by this fusion
            continue
        rest = name[len(old):]
        if old.startswith("resblocks"):
            index, _, rest = rest.partition(".")
            rest = f"{index}.{_block_key(rest)}"
        elif old.startswith("crossblock"):
            rest = _block_key(rest)
        value = value.float()
        if name == "txt2img_transform_layer2.weight":
            if n_prim is None:
                raise VLPromptError("dfsp: converting txt2img weights needs soft_att_obj in the state dict")
            value = released_to_primitive_major(value, n_prim, value.shape[1] // n_prim)
        out["fusion." + _RELEASED_MODULES[fusion][old] + rest] = value
    return out


@register_method("dfsp", tasks=("czsl",))
class DFSP(PairMethod):
    """DFSP (Lu et al., CVPR'23): learned prefix + primitive vocabulary + decomposed fusion.

    Defaults are the released code's computation (context length 8 with the padding state, QuickGELU,
    ``txt2img``); a primitive absent from the current pairs decomposes to 0 / ``empty_logit`` where
    the released code gives NaN. With ``img2txt`` the fused text depends on the image batch (as
    released), so evaluation scores each image batch on its own (`batch_scores`)."""

    config_class = DFSPConfig
    needs_images = True

    def __init__(self, backbone: Backbone, labels: PairLabels, config: DFSPConfig) -> None:
        super().__init__(backbone, labels, config)
        _check_config(config)
        ctx = word_embeddings(backbone, config.ctx_init)
        self.ctx = nn.Parameter(ctx)
        self.vocab = nn.Parameter(mean_token_embeddings(backbone, self.attrs + self.objs,
                                                                config.underscores_as_spaces))
        self.dropout = nn.Dropout(config.attr_dropout)
        self.prompt = SlotPrompt(backbone, None, ctx.shape[0])
        self.text_length = self._text_length(config.context_length)
        probe = self._probe_token_states()
        if config.decompose == "tokens" and probe is None:
            raise VLPromptError(f"dfsp: decompose 'tokens' needs text token states, which {type(backbone).__name__} "
                                "does not expose; use decompose: pooled")
        self.decompose_level = "tokens" if probe is not None and config.decompose != "pooled" else "pooled"
        self.fusion: TextToImageFusion | ImageToTextFusion | None = None
        self.image_level = "features"
        n_prim = len(self.attrs) + len(self.objs)
        if config.fusion != "none":
            n_tokens, width, has_states = image_probe(backbone)
            if config.image_side == "tokens" and not has_states:
                raise VLPromptError(f"dfsp: image_side 'tokens' needs image token states, which "
                                    f"{type(backbone).__name__} does not expose; use image_side: features")
            self.image_level = "tokens" if has_states and config.image_side != "features" else "features"
            text_width, seq_len = (probe[2], probe[1]) if self.decompose_level == "tokens" else (None, 1)
            if config.fusion == "img2txt":
                if self.decompose_level != "tokens" or self.image_level != "tokens":
                    raise VLPromptError("dfsp: fusion img2txt needs text and image token states (decompose and "
                                        f"image_side 'tokens'), which {type(backbone).__name__} does not expose "
                                        "or the config switched off; use fusion: txt2img")
                self.fusion = ImageToTextFusion(n_prim, n_tokens, width, text_width, seq_len, config.sa_layers,
                                                config.fusion_dropout, config.text_sa_layers, config.fusion_act)
            else:
                self.fusion = TextToImageFusion(n_prim, backbone.identity.embed_dim, n_tokens, width,
                                                config.sa_layers, config.fusion_dropout, text_width=text_width,
                                                seq_len=seq_len, image_states=self.image_level == "tokens",
                                                text_sa_layers=config.text_sa_layers, act=config.fusion_act)
        self._aux: dict[str, torch.Tensor] = {}

    @property
    def batch_scores(self) -> bool:
        """True when the fused text depends on the image batch (img2txt): evaluation scores per batch."""
        return isinstance(self.fusion, ImageToTextFusion)

    def _text_length(self, context_length: int) -> int | None:
        """Token positions the text tower runs on: None (cut after the end token) or the config's length."""
        if context_length == 0:
            return None
        eot = int(self.prompt.assembler.eot_index.max())
        limit = self.prompt.assembler.token_ids.shape[1]
        if not eot < context_length <= limit:
            raise VLPromptError(f"dfsp: context_length {context_length} must hold the prompt and its end token "
                                f"({eot + 1} positions) and fit the text tower ({limit}); 0 cuts after the end token")
        return context_length

    @torch.no_grad()
    def _probe_token_states(self) -> tuple[int, ...] | None:
        """Shape ``(1, L, W)`` of one prompt's token states; None when the backbone has none."""
        if not self.backbone.supports(Capability.TEXT_TOKEN_STATES):
            return None
        states, _ = self.prompt.token_states(self.vocab[:1], self.vocab[:1], self.ctx, self.text_length)
        return tuple(states.shape)

    def pair_text_features(self, pairs: torch.Tensor) -> torch.Tensor:
        vocab = self.dropout(self.vocab)
        return self.prompt.encode(vocab[pairs[:, 0]], vocab[self.n_attrs + pairs[:, 1]], self.ctx)

    def pair_token_states(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states ``[P, L, W]`` of the pairs' prompts and their EOT indices (L: ``context_length``,
        or up to the end token with ``context_length: 0``)."""
        vocab = self.dropout(self.vocab)
        return self.prompt.token_states(vocab[pairs[:, 0]], vocab[self.n_attrs + pairs[:, 1]], self.ctx,
                                        self.text_length)

    def decompose(self, text: torch.Tensor, pairs: torch.Tensor, empty: float = 0.0) -> torch.Tensor:
        """Pair rows ``[P, ...]`` -> primitive rows ``[A+O, ...]``: mean over pairs sharing each
        (`empty` for a primitive without pairs; the released code gives NaN there)."""
        groups = torch.cat([pairs[:, 0], self.n_attrs + pairs[:, 1]])
        return group_mean(torch.cat([text, text]), groups, len(self.attrs) + len(self.objs), empty=empty)

    def _text_sides(self, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``text``: pair features [P, D]; with fusion, ``decompose``: what is decomposed, ``eot``, and
        for txt2img ``fused``: fused pair features [P, D]."""
        if self.decompose_level == "tokens":
            states, eot = self.pair_token_states(pairs)
            out = {"text": self.backbone.pool_text_states(states, eot).float()}
            if isinstance(self.fusion, TextToImageFusion):
                out["fused"] = self.backbone.pool_text_states(self.fusion.fuse_text(states), eot).float()
            if self.fusion is not None:
                out.update(decompose=states.float(), eot=eot)
            return out
        text = self.pair_text_features(pairs).float()
        if self.fusion is None:
            return {"text": text}
        return {"text": text, "decompose": text, "fused": self.fusion.fuse_text(text)}

    def _image_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(CLIP image features [B, D], what the fusion takes: image states or output tokens, or None)."""
        images = batch["images"]
        with torch.no_grad():
            if self.image_level == "tokens":  # one pass: the states, pooled by the tower's own head
                states = self.backbone.image_token_states(images).float()
                return self.backbone.pool_image_states(states).float(), states
            clip_feat = self.backbone.encode_image(images).float()
            tokens = self.backbone.image_tokens(images).float() if self.fusion is not None else None
        return clip_feat, tokens

    def _fused_image(self, clip_feat: torch.Tensor, tokens: torch.Tensor, pseudo: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.fusion, ImageToTextFusion):
            fused = self.fusion.fuse_image(tokens)
        else:
            fused = self.fusion.fuse_image(clip_feat, tokens, pseudo)
        if self.image_level == "tokens":  # the tower's final norm, pooling and projection of the fused sequence
            fused = self.backbone.pool_image_states(fused).float()
        return self._mix(clip_feat, fused)

    def _img2txt_text(self, primitives: torch.Tensor, states: torch.Tensor, pairs: torch.Tensor,
                      eot: torch.Tensor) -> torch.Tensor:
        """Fused pair text ``[P, D]`` of one image batch (img2txt: the same for every image in it)."""
        composed = self.fusion.fuse_text(primitives, self.fusion.keys(states), pairs, self.n_attrs)
        return self.backbone.pool_text_states(composed, eot.to(composed.device)).float()

    def _mix(self, clip: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        w = self.config.res_w
        return F.normalize(w * clip + (1 - w) * fused, dim=-1)

    def class_features(self) -> torch.Tensor | None:
        """None with fusion: the fused scores depend on the image, so there is no fixed classifier."""
        return None if self.fusion is not None else super().class_features()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pairs = self.pair_index
        sides = self._pair_text(lambda: self._text_sides(pairs))
        text = sides["text"]  # [P, D]
        clip_feat, tokens = self._image_inputs(batch)
        scale = self.backbone.logit_scale
        logits_sp = scale * F.normalize(clip_feat, dim=-1) @ F.normalize(text, dim=-1).t()
        if self.fusion is not None:
            primitives = self.decompose(sides["decompose"], pairs)
            if isinstance(self.fusion, ImageToTextFusion):
                img = self._fused_image(clip_feat, tokens, None)
                txt = self._mix(text, self._img2txt_text(primitives, tokens, pairs, sides["eot"]))
            else:
                img = self._fused_image(clip_feat, tokens, self.fusion.pseudo_tokens(primitives))
                txt = self._mix(text, sides["fused"])
            logits = scale * img @ txt.t()
        else:
            logits = logits_sp
        dec = self.decompose(logits_sp.t(), pairs, empty=self.config.empty_logit).t()  # [B, A+O]
        self._aux = {"sp": logits_sp, "attr": dec[:, : self.n_attrs], "obj": dec[:, self.n_attrs :]}
        return logits

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        y = batch["labels"]
        y_attr, y_obj = self.pair_index[y, 0], self.pair_index[y, 1]
        aux = self._aux
        ce_pair = F.cross_entropy(logits.float(), y)
        ce_prim = F.cross_entropy(aux["attr"].float(), y_attr) + F.cross_entropy(aux["obj"].float(), y_obj)
        ce_sp = F.cross_entropy(aux["sp"].float(), y)
        loss = ce_pair + self.config.att_obj_w * ce_prim + self.config.sp_w * ce_sp
        acc = (logits.argmax(-1) == y).float().mean()
        return loss, {"loss": float(loss.detach()), "ce_pair": float(ce_pair.detach()),
                      "ce_prim": float(ce_prim.detach()), "ce_sp": float(ce_sp.detach()), "acc": float(acc) * 100}

    # -- evaluation: fused pair scores only -------------------------------------------------

    @torch.no_grad()
    def prepare_eval(self, pairs: torch.Tensor) -> dict[str, Any]:
        """Every candidate pair's features (raw and fused) and the pseudo-tokens, in chunks of
        ``text_batch`` pairs: token states are decomposed through running sums, never all held at once."""
        pairs = pairs.to(self.pair_index.device)
        raw, fused, sums, counts, eot = [], [], None, None, None
        n_prim = len(self.attrs) + len(self.objs)
        for i in range(0, len(pairs), self.config.text_batch):
            chunk = pairs[i : i + self.config.text_batch]
            sides = self._text_sides(chunk)
            raw.append(sides["text"])
            if self.fusion is not None:
                if "fused" in sides:
                    fused.append(sides["fused"])
                eot = sides.get("eot", eot)
                groups = torch.cat([chunk[:, 0], self.n_attrs + chunk[:, 1]])
                values = torch.cat([sides["decompose"], sides["decompose"]])
                if sums is None:
                    sums = values.new_zeros(n_prim, *values.shape[1:])
                    counts = values.new_zeros(n_prim)
                sums.index_add_(0, groups, values)
                counts.index_add_(0, groups, torch.ones_like(groups, dtype=values.dtype))
        state: dict[str, Any] = {"pairs": pairs, "raw": torch.cat(raw)}
        if self.fusion is not None:
            # decomposition over the candidate set of this phase (as the reference does)
            view = (n_prim,) + (1,) * (sums.dim() - 1)
            primitives = torch.where(counts.view(view) > 0, sums / counts.clamp(min=1).view(view), torch.zeros_like(sums))
            if isinstance(self.fusion, ImageToTextFusion):
                state.update(primitives=primitives, eot=eot[:1].expand(len(pairs)))
            else:
                state["pseudo"] = self.fusion.pseudo_tokens(primitives)
                state["fused"] = torch.cat(fused)
        return state

    @torch.no_grad()
    def eval_image_features(self, batch: dict[str, torch.Tensor], state: dict[str, Any]) -> torch.Tensor:
        clip_feat, tokens = self._image_inputs(batch)
        if self.fusion is None:
            return F.normalize(clip_feat, dim=-1)
        return self._fused_image(clip_feat, tokens, state.get("pseudo"))

    @torch.no_grad()
    def eval_text_features(self, state: dict[str, Any], cols: slice) -> torch.Tensor:
        text = state["raw"][cols]
        if self.fusion is None:
            return F.normalize(text, dim=-1)
        return self._mix(text, state["fused"][cols])

    @torch.no_grad()
    def eval_batch_scores(self, batch: dict[str, torch.Tensor], state: dict[str, Any]) -> torch.Tensor:
        """Scores ``[B, P]`` of one image batch over every candidate pair (img2txt: text fused per batch)."""
        clip_feat, tokens = self._image_inputs(batch)
        img = self._fused_image(clip_feat, tokens, None)
        txt = self._mix(state["raw"], self._img2txt_text(state["primitives"], tokens, state["pairs"], state["eot"]))
        return self.backbone.logit_scale.float() * img @ txt.t()


def _check_config(config: DFSPConfig) -> None:
    choices = {"fusion": FUSIONS, "fusion_act": tuple(ACTIVATIONS), "decompose": ("auto", "tokens", "pooled"),
               "image_side": ("auto", "tokens", "features")}
    for name, valid in choices.items():
        if getattr(config, name) not in valid:
            raise VLPromptError(f"dfsp: {name} {getattr(config, name)!r} is not one of {list(valid)}")
    if config.context_length < 0 or (config.text_sa_layers is not None and config.text_sa_layers < 0):
        raise VLPromptError("dfsp: context_length and text_sa_layers must be >= 0")
