"""open_clip's `CustomTextCLIP` (separate ``model.text`` tower; image tower often timm) behind `Backbone`.

``create_backbone("open_clip_custom:ViT-B-16-SigLIP", "webli")``: architectures such as open_clip's SigLIP,
timm-image models (ConvNeXt, EVA...) and any config with ``"custom_text": true`` whose text tower is
open_clip's own `TextTransformer`. Soft prompts run exactly as ``TextTransformer.forward``: positional
embedding, the tower's causal mask (or none), blocks, final LayerNorm, its pooling (argmax / eos / last /
first) and projection. Truncation only where exact: causal mask and an EOT-style pooling.

Text towers that are Hugging Face models (`HFTextEncoder`: mean/CLS pooling over a padding mask built from
the ids), CoCa's appended CLS token and pad-masked bidirectional towers are refused with a clear message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from vlprompt.backbones.base import Backbone, BackboneIdentity
from vlprompt.backbones.open_clip_backbone import TextTowerParts, _check_architecture, run_text_tower
from vlprompt.backbones.registry import BACKBONE_SOURCES
from vlprompt.backbones.weights import file_sha256, load_into, read_state_dict
from vlprompt.errors import VLPromptError
from vlprompt.registry import unknown_name_message


def unsupported_text_tower(model: torch.nn.Module) -> str | None:
    """Why this model's text tower cannot take soft prompts exactly here (None: it can)."""
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if text is None:
        return f"{type(model).__name__} has no separate text tower (use the open_clip source)"
    if not isinstance(text, TextTransformer):
        return (
            f"text tower {type(text).__name__} (a Hugging Face text model) is not supported for soft prompts yet; "
            "only open_clip's TextTransformer"
        )
    if text.cls_emb is not None:
        return "text tower appends a CLS embedding (CoCa), not supported for soft prompts"
    if text.use_pad_mask:
        return "text tower masks padding from the token ids, not supported for soft prompts"
    if text.pool_type not in ("argmax", "eos", "last", "first"):
        return f"text pooling {text.pool_type!r} is not supported"
    return None


class CustomTextClipBackbone(Backbone):
    """Frozen open_clip `CustomTextCLIP` whose ``text`` is a `TextTransformer`."""

    def __init__(self, model: torch.nn.Module, identity: BackboneIdentity) -> None:
        super().__init__()
        import open_clip

        reason = unsupported_text_tower(model)
        if reason is not None:
            raise VLPromptError(f"{identity.name}: {reason}")
        self.model = model.eval().requires_grad_(False)
        self.identity = identity
        self.text = model.text
        self.causal = self.text.attn_mask is not None
        try:
            self._tokenizer = open_clip.get_tokenizer(identity.name, context_length=self.text.context_length)
        except Exception as error:  # SigLIP / HF tokenizers fetch vocabulary files on first use
            raise VLPromptError(
                f"{identity.name}: cannot build its tokenizer ({type(error).__name__}: {str(error)[:200]}). "
                "open_clip downloads SigLIP / Hugging Face tokenizer files on first use: run once on a machine "
                "with network so they land in the Hugging Face cache (HF_HOME), then copy that cache here"
            ) from None
        cfg = open_clip.transform.PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
        self.train_transform: Callable = open_clip.transform.image_transform_v2(cfg, is_train=True)
        self.eval_transform: Callable = open_clip.transform.image_transform_v2(cfg, is_train=False)
        size = cfg.size if isinstance(cfg.size, (tuple, list)) else (cfg.size, cfg.size)
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        pool = self.text.pool_type
        if pool == "argmax":
            return ids.argmax(dim=-1)
        if pool == "eos":
            return (ids == self.text.eos_id).int().argmax(dim=-1)
        if pool == "last":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        return torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text.token_embedding(ids.to(self.device))

    def encode_text_embeds(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True
    ) -> torch.Tensor:
        text = self.text
        tower = TextTowerParts(
            text.transformer, text.positional_embedding, text.attn_mask, text.ln_final, text.text_projection, text.pool_type
        )
        return run_text_tower(tower, embeds, eot_index, truncate and self.causal)

    def shared_prefix_unsupported(self) -> str | None:
        return "CustomTextCLIP towers have no shared-prefix encoding in vlprompt (whole prompts are encoded)"

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images.to(self.device, self.dtype))

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        if hasattr(visual, "forward_intermediates"):
            out = visual.forward_intermediates(images.to(self.device, self.dtype), indices=1, intermediates_only=True)
            tokens = out["image_intermediates"][-1] if isinstance(out, dict) else out[-1]
            return tokens.flatten(2).transpose(1, 2) if tokens.dim() == 4 else tokens
        raise VLPromptError(f"{self.identity.name}: image tower {type(visual).__name__} has no tokens")

    @property
    def logit_scale(self) -> torch.Tensor:
        # SigLIP models also carry a logit_bias (sigmoid loss); a softmax over classes ignores it.
        return self.model.logit_scale.exp().clamp(max=100.0).reshape(())


@BACKBONE_SOURCES.register("open_clip_custom")
def create_custom_text_backbone(name: str, pretrained: str | None = None, device: str = "cpu") -> CustomTextClipBackbone:
    """An open_clip architecture built as `CustomTextCLIP`; `pretrained` as for the open_clip source:
    None (random), a local checkpoint file, or an open_clip tag (downloaded on first use)."""
    import open_clip

    _check_architecture(name)
    weights_hash: str | None = None
    if pretrained is None:
        model = open_clip.create_model(name, pretrained=None, device=device)
    elif os.sep in pretrained or Path(pretrained).suffix in (".safetensors", ".pt", ".pth", ".bin", ".ckpt"):
        path = Path(pretrained).expanduser()
        state = read_state_dict(path)
        model = open_clip.create_model(name, pretrained=None, device=device)
        load_into(model, state, f"checkpoint {path}", name)
        weights_hash, pretrained = file_sha256(path), str(path)
    else:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise VLPromptError(unknown_name_message(f"pretrained tag for {name}", pretrained, tags or ["(none: pass a file)"]))
        model = open_clip.create_model(name, pretrained=pretrained, device=device)
    from open_clip.model import CustomTextCLIP

    if not isinstance(model, CustomTextCLIP):
        raise VLPromptError(f"{name} is a plain open_clip CLIP, not CustomTextCLIP: use --backbone {name} (the open_clip source)")
    text = model.text
    width = getattr(text, "width", None) or int(text.token_embedding.weight.shape[1])
    identity = BackboneIdentity(
        source="open_clip_custom",
        name=name,
        pretrained=pretrained,
        embed_dim=int(getattr(text, "output_dim", None) or width),
        width=int(width),
        context_length=int(getattr(text, "context_length", 77)),
        weights_hash=weights_hash,
    )
    return CustomTextClipBackbone(model.to(device), identity)
