"""DFSP (Lu et al., CVPR'23) as the official code builds it: a learned prefix and primitive vocabulary
(CSP's), the pairs' last-layer text token states decomposed into attribute / object primitives, and the
``txt2img`` cross-modal fusion in which the image tower's own token sequence attends to pseudo-tokens
made from the primitives. Pooled-feature variants remain as options (``decompose``, ``image_side``).
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


@dataclass
class DFSPConfig(PairMethodConfig):
    ctx_init: str = "a photo of"  # learned prefix init
    attr_dropout: float = 0.3
    fusion: str = "txt2img"  # txt2img | none (soft prompt only, DFSP's OnlySPM)
    res_w: float = 0.8  # weight of the CLIP features in the residual mix
    att_obj_w: float = 0.01
    sp_w: float = 0.1
    sa_layers: int = 1  # self-attention blocks after the cross-attention (SA_K)
    fusion_dropout: float = 0.3
    empty_logit: float = -1e4  # decomposed logit of a primitive with no pair in the current set
    # what is decomposed: "tokens" (the pairs' last-layer token states, as the official code), "pooled"
    # (their pooled features), "auto" (tokens when the backbone exposes token states)
    decompose: str = "auto"
    # image queries of the fusion: "tokens" (the image tower's last-block sequence, class token first,
    # fused feature = the tower's own norm + pooling + projection, as the official code), "features"
    # (a query from the CLIP feature + the output tokens, own output layers), "auto" (tokens when exposed)
    image_side: str = "auto"


class _CrossBlock(nn.Module):
    """x + MHA(LN(x), LN(y), LN(y)), then x + MLP(LN(x)) (DFSP's CrossResidualAttentionBlock)."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_x, self.ln_y, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        q = self.ln_x(x)
        kv = q if y is None else self.ln_y(y)
        x = x + self.attn(q, kv, kv, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TextToImageFusion(nn.Module):
    """DFSP's ``txt2img`` fusion on what the Backbone interface exposes.

    - decomposed primitive text ``[A+O, L, W_txt]`` (token states, L per prompt; or pooled features,
      L = 1 and W_txt = D) -> ``txt2img_1`` (W_txt -> W_img) -> ``txt2img_2`` (a linear over the
      (A+O)·L axis, -> T pseudo-tokens) -> dropout: pseudo-tokens ``[T, W_img]`` shared by all images,
      T = the backbone's image-token count + 1;
    - image queries ``[B, T, W_img]``: a query made from the CLIP image feature (the CLS stand-in)
      followed by the backbone's image tokens; they cross-attend to the pseudo-tokens, then pass
      ``sa_layers`` self-attention blocks; the fused image feature is the first token mapped to D;
    - text side: each pair's token states pass a residual attention block (not decomposed), then the
      backbone's own final norm, pooling and projection (pooled mode: a one-token sequence).

    With ``image_states`` (the official design) the queries are the image tower's own last-block
    sequence (class token first) and the caller pools the fused sequence with the tower's final norm and
    projection; otherwise a query made from the CLIP feature leads the output tokens and the fused
    feature comes from this module's own output layers.
    """

    def __init__(self, n_primitives: int, text_dim: int, n_img_tokens: int, img_width: int, sa_layers: int = 1,
                 dropout: float = 0.3, text_width: int | None = None, seq_len: int = 1,
                 image_states: bool = False) -> None:
        super().__init__()
        text_width = text_width or text_dim
        self.n_tokens = n_img_tokens + 1
        self.image_states = image_states
        heads = max(1, img_width // 64)
        self.txt2img_1 = nn.Linear(text_width, img_width)
        self.txt2img_2 = nn.Linear(n_primitives * seq_len, self.n_tokens)
        self.drop = nn.Dropout(dropout)
        self.cross = _CrossBlock(img_width, heads)
        self.self_blocks = nn.ModuleList(_CrossBlock(img_width, heads, dropout) for _ in range(sa_layers))
        if not image_states:
            self.query = nn.Linear(text_dim, img_width)
            self.out_ln = nn.LayerNorm(img_width)
            self.out = nn.Linear(img_width, text_dim)
        self.txt_block = _CrossBlock(text_width, max(1, text_width // 64), dropout)

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
        if text.dim() == 2:
            return self.txt_block(text[:, None])[:, 0]
        return self.txt_block(text)


@register_method("dfsp", tasks=("czsl",))
class DFSP(PairMethod):
    """DFSP (Lu et al., CVPR'23): learned prefix + primitive vocabulary + decomposed fusion."""

    config_class = DFSPConfig
    needs_images = True

    def __init__(self, backbone: Backbone, labels: PairLabels, config: DFSPConfig) -> None:
        super().__init__(backbone, labels, config)
        if config.fusion not in ("txt2img", "none"):
            raise VLPromptError(f"dfsp: fusion {config.fusion!r} is not one of ['txt2img', 'none']")
        if config.decompose not in ("auto", "tokens", "pooled"):
            raise VLPromptError(f"dfsp: decompose {config.decompose!r} is not one of ['auto', 'tokens', 'pooled']")
        if config.image_side not in ("auto", "tokens", "features"):
            raise VLPromptError(f"dfsp: image_side {config.image_side!r} is not one of ['auto', 'tokens', 'features']")
        ctx = word_embeddings(backbone, config.ctx_init)
        self.ctx = nn.Parameter(ctx)
        self.vocab = nn.Parameter(mean_token_embeddings(backbone, self.attrs + self.objs))
        self.dropout = nn.Dropout(config.attr_dropout)
        self.prompt = SlotPrompt(backbone, None, ctx.shape[0])
        probe = self._probe_token_states()
        if config.decompose == "tokens" and probe is None:
            raise VLPromptError(f"dfsp: decompose 'tokens' needs text token states, which {type(backbone).__name__} "
                                "does not expose; use decompose: pooled")
        self.decompose_level = "tokens" if probe is not None and config.decompose != "pooled" else "pooled"
        self.fusion = None
        self.image_level = "features"
        if config.fusion == "txt2img":
            n_tokens, width, has_states = image_probe(backbone)
            if config.image_side == "tokens" and not has_states:
                raise VLPromptError(f"dfsp: image_side 'tokens' needs image token states, which "
                                    f"{type(backbone).__name__} does not expose; use image_side: features")
            self.image_level = "tokens" if has_states and config.image_side != "features" else "features"
            text_width, seq_len = (probe[2], probe[1]) if self.decompose_level == "tokens" else (None, 1)
            self.fusion = TextToImageFusion(len(self.attrs) + len(self.objs), backbone.identity.embed_dim,
                                            n_tokens, width, config.sa_layers, config.fusion_dropout,
                                            text_width=text_width, seq_len=seq_len,
                                            image_states=self.image_level == "tokens")
        self._aux: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _probe_token_states(self) -> tuple[int, ...] | None:
        """Shape ``(1, L, W)`` of one prompt's token states; None when the backbone has none."""
        if not self.backbone.supports(Capability.TEXT_TOKEN_STATES):
            return None
        states, _ = self.prompt.token_states(self.vocab[:1], self.vocab[:1], self.ctx)
        return tuple(states.shape)

    def pair_text_features(self, pairs: torch.Tensor) -> torch.Tensor:
        vocab = self.dropout(self.vocab)
        return self.prompt.encode(vocab[pairs[:, 0]], vocab[self.n_attrs + pairs[:, 1]], self.ctx)

    def pair_token_states(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states ``[P, L, W]`` of the pairs' prompts and their EOT indices."""
        vocab = self.dropout(self.vocab)
        return self.prompt.token_states(vocab[pairs[:, 0]], vocab[self.n_attrs + pairs[:, 1]], self.ctx)

    def decompose(self, text: torch.Tensor, pairs: torch.Tensor, empty: float = 0.0) -> torch.Tensor:
        """Pair rows ``[P, ...]`` -> primitive rows ``[A+O, ...]``: mean over pairs sharing each."""
        groups = torch.cat([pairs[:, 0], self.n_attrs + pairs[:, 1]])
        return group_mean(torch.cat([text, text]), groups, len(self.attrs) + len(self.objs), empty=empty)

    def _text_sides(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(pair features [P, D], what is decomposed, fused pair features [P, D] or None without fusion)."""
        if self.decompose_level == "tokens":
            states, eot = self.pair_token_states(pairs)
            text = self.backbone.pool_text_states(states, eot).float()
            if self.fusion is None:
                return text, None, None
            fused = self.backbone.pool_text_states(self.fusion.fuse_text(states), eot).float()
            return text, states.float(), fused
        text = self.pair_text_features(pairs).float()
        if self.fusion is None:
            return text, None, None
        return text, text, self.fusion.fuse_text(text)

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

    def _fused_image(self, clip_feat: torch.Tensor, tokens: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        fused = self.fusion.fuse_image(clip_feat, tokens, pseudo)
        if self.image_level == "tokens":  # the tower's final norm, pooling and projection of the fused sequence
            fused = self.backbone.pool_image_states(fused).float()
        return self._mix(clip_feat, fused)

    def _mix(self, clip: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        w = self.config.res_w
        return F.normalize(w * clip + (1 - w) * fused, dim=-1)

    def class_features(self) -> torch.Tensor | None:
        """None with fusion: the fused scores depend on the image, so there is no fixed classifier."""
        return None if self.fusion is not None else super().class_features()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pairs = self.pair_index
        text, to_decompose, fused_text = self._text_sides(pairs)  # [P, D]
        clip_feat, tokens = self._image_inputs(batch)
        scale = self.backbone.logit_scale
        logits_sp = scale * F.normalize(clip_feat, dim=-1) @ F.normalize(text, dim=-1).t()
        if self.fusion is not None:
            pseudo = self.fusion.pseudo_tokens(self.decompose(to_decompose, pairs))
            img = self._fused_image(clip_feat, tokens, pseudo)
            txt = self._mix(text, fused_text)
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
        raw, fused, sums, counts = [], [], None, None
        n_prim = len(self.attrs) + len(self.objs)
        for i in range(0, len(pairs), self.config.text_batch):
            chunk = pairs[i : i + self.config.text_batch]
            text, to_decompose, fused_text = self._text_sides(chunk)
            raw.append(text)
            if self.fusion is not None:
                fused.append(fused_text)
                groups = torch.cat([chunk[:, 0], self.n_attrs + chunk[:, 1]])
                values = torch.cat([to_decompose, to_decompose])
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
            state["pseudo"] = self.fusion.pseudo_tokens(primitives)
            state["fused"] = torch.cat(fused)
        return state

    @torch.no_grad()
    def eval_image_features(self, batch: dict[str, torch.Tensor], state: dict[str, Any]) -> torch.Tensor:
        clip_feat, tokens = self._image_inputs(batch)
        if self.fusion is None:
            return F.normalize(clip_feat, dim=-1)
        return self._fused_image(clip_feat, tokens, state["pseudo"])

    @torch.no_grad()
    def eval_text_features(self, state: dict[str, Any], cols: slice) -> torch.Tensor:
        text = state["raw"][cols]
        if self.fusion is None:
            return F.normalize(text, dim=-1)
        return self._mix(text, state["fused"][cols])
