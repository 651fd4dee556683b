"""Hugging Face transformers `CLIPModel` and `SiglipModel` behind the `Backbone` interface.

``create_backbone("hf:openai/clip-vit-base-patch16")`` or ``create_backbone("hf:/path/to/saved/model")``.
Soft prompts run through each text tower exactly as its own ``get_text_features`` does:

- CLIP: token + position embeddings -> encoder under a causal mask -> final LayerNorm -> EOT pooling
  (argmax of the ids for old configs with ``eos_token_id == 2``, else the first ``eos_token_id``) ->
  ``text_projection``. Causal, so truncating after the last pooled token is exact.
- SigLIP: token + position embeddings -> bidirectional encoder (no padding mask: SigLIP pads to
  ``max_length`` and attends to the padding) -> final LayerNorm -> last token -> ``head``. Every position
  reaches the pooled one, so nothing is ever truncated.

Deep text prompts (both towers) and visual prompts (CLIP's vision tower) run the encoder layers one by one,
with the masks the tower's own forward builds, and write the prompt tokens between layers (`DeepPrompts`,
`VisualPrompts`); without prompts the tower's own encoder call is used.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlprompt import network
from vlprompt.backbones.base import Backbone, BackboneIdentity
from vlprompt.backbones.capabilities import Capability
from vlprompt.backbones.deep_prompts import (
    DeepPrompts,
    VisualPrompts,
    drop_positions,
    insert_positions,
    write_positions,
)
from vlprompt.backbones.pretrained import ignored_by_own_weights
from vlprompt.backbones.registry import BACKBONE_SOURCES
from vlprompt.backbones.weights import file_sha256, short_hash
from vlprompt.errors import VLPromptError
from vlprompt.paths import read_json

SUPPORTED_MODEL_TYPES = ("clip", "siglip")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.path.expanduser("~/.cache/huggingface/hub")


def missing_weights_message(name: str, reason: str) -> str:
    """One message: what to download, and where vlprompt looks for it."""
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return (
            f"Hugging Face model folder {name} cannot be loaded ({reason}). It must hold config.json, the weights "
            f"({' or '.join(WEIGHT_FILES)}) and the tokenizer files, as written by `save_pretrained` or "
            "`hf download <id> --local-dir " + f"{name}`."
        )
    offline = network.offline_reason()
    mode = "not in the local cache and " + (f"{offline} forbids downloading it" if offline else "could not be downloaded")
    detail = "" if reason == offline else f" ({reason.rstrip('.')})"
    return (
        f"Hugging Face model {name!r} is {mode}{detail}. "
        f"On a machine with network run "
        f"`hf download {name}` (or `huggingface-cli download {name}`); it will be looked for in the Hugging Face "
        f"cache {_hub_cache()} (set HF_HOME or HF_HUB_CACHE to move it). "
        f"Or pass a local folder: hf:/path/to/{name.split('/')[-1]}"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _output(value: object) -> torch.Tensor:
    """transformers 5 returns model outputs where 4.x returned tensors."""
    if isinstance(value, torch.Tensor):
        return value
    return value.pooler_output  # type: ignore[attr-defined]


def _hidden(value: object) -> torch.Tensor:
    """An encoder layer's output: a tensor in transformers 5, a tuple in 4.x."""
    return value if isinstance(value, torch.Tensor) else value[0]  # type: ignore[index]


def run_layers(
    layers: Sequence[nn.Module], hidden: torch.Tensor, mask: torch.Tensor | None, extra: dict,
    prompts: DeepPrompts | VisualPrompts, start: int,
) -> torch.Tensor:
    """The HF encoder loop (``CLIPEncoder.forward``: every layer with the same mask) with
    ``prompts.at_block(i)`` written over positions ``[start, start + n)`` at the input of layer i."""
    prompts.check(len(layers))
    if layers and "causal_attention_mask" in inspect.signature(layers[0].forward).parameters:
        extra = {**extra, "causal_attention_mask": None}  # transformers 4.x: the causal mask is already in `mask`
    for i, layer in enumerate(layers):
        tokens = prompts.at_block(i)
        if tokens is not None:
            hidden = write_positions(hidden, tokens, start, prompts)
        hidden = _hidden(layer(hidden, mask, **extra))
    return hidden


class HFClipBackbone(Backbone):
    """A transformers `CLIPModel` or `SiglipModel`, frozen, seen through its token embeddings."""

    def __init__(self, model: nn.Module, tokenizer: object, identity: BackboneIdentity, preprocess: dict) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.identity = identity
        self.kind = model.config.model_type  # "clip" or "siglip"
        self.causal = self.kind == "clip"
        self._tokenizer = tokenizer
        text_config = model.config.text_config
        self.context_length = int(text_config.max_position_embeddings)
        self.eos_token_id = getattr(text_config, "eos_token_id", None)

        import open_clip

        cfg = open_clip.transform.PreprocessCfg(**preprocess)
        self.train_transform: Callable = open_clip.transform.image_transform_v2(cfg, is_train=True)
        self.eval_transform: Callable = open_clip.transform.image_transform_v2(cfg, is_train=False)
        self.image_size: tuple[int, int] = tuple(cfg.size) if isinstance(cfg.size, (tuple, list)) else (cfg.size,) * 2
        caps = {Capability.IMAGE_TOKENS, Capability.DEEP_TEXT_PROMPTS}
        if self.kind == "clip":  # SigLIP has no class token to place the visual prompts after
            caps.add(Capability.VISUAL_PROMPTS)
        if self._block_norms():
            caps.add(Capability.IMAGE_NORMS)
        self.capabilities = frozenset(caps)

    # -- text --------------------------------------------------------------------------------

    @property
    def text_model(self) -> nn.Module:
        return self.model.text_model

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        # Both towers are run on fixed-length ids: CLIP's padding sits after the causal EOT, SigLIP was
        # trained on max_length padding (its pooled last token is usually a pad).
        encoded = self._tokenizer(
            list(texts), padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        )
        return encoded["input_ids"].long()

    def eot_index(self, ids: torch.Tensor) -> torch.Tensor:
        if self.kind == "siglip":
            return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long, device=ids.device)
        if self.eos_token_id == 2 or self.eos_token_id is None:  # pre-#24773 configs: EOT is the largest id
            return ids.to(torch.int).argmax(dim=-1).long()
        found = ids == self.eos_token_id
        if not bool(found.any(dim=-1).all()):
            raise VLPromptError(
                f"{self.identity.name}: some token ids hold no eos token {self.eos_token_id} (the text config's "
                "eos_token_id); the tokenizer and the model config do not match"
            )
        return found.int().argmax(dim=-1).long()

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.embeddings.token_embedding(ids.to(self.device))

    def _mask(self, hidden: torch.Tensor) -> tuple[torch.Tensor | None, dict]:
        config = self.text_model.config
        if self.kind == "clip":
            try:
                from transformers.masking_utils import create_causal_mask
            except ImportError:  # transformers 4.x: an explicit additive mask
                length = hidden.shape[1]
                mask = torch.full((length, length), torch.finfo(hidden.dtype).min, device=hidden.device).triu(1)
                return mask[None, None], {}
            return create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=None, cache=None), {
                "is_causal": True
            }
        try:
            from transformers.masking_utils import create_bidirectional_mask
        except ImportError:
            return None, {}
        return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=None), {}

    def encode_text_embeds(
        self, embeds: torch.Tensor, eot_index: torch.Tensor, truncate: bool = True, deep: DeepPrompts | None = None
    ) -> torch.Tensor:
        self._refuse_deep(deep)
        text = self.text_model
        embeds = embeds.to(self.device)
        eot_index = eot_index.to(self.device)
        length = embeds.shape[1]
        if truncate and self.causal:  # positions after the last EOT never reach it through the causal mask
            length = int(eot_index.max()) + 1
        hidden = text.embeddings(inputs_embeds=embeds[:, :length])
        mask, extra = self._mask(hidden)
        if deep is not None and deep.layers:
            hidden = run_layers(text.encoder.layers, hidden, mask, extra, deep, deep.start)
        else:
            hidden = text.encoder(inputs_embeds=hidden, attention_mask=mask, **extra)
        hidden = text.final_layer_norm(hidden.last_hidden_state if not isinstance(hidden, torch.Tensor) else hidden)
        if self.kind == "siglip":
            return text.head(hidden[:, -1, :])
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot_index]
        return self.model.text_projection(pooled)

    def text_block_count(self) -> int:
        return len(self.text_model.encoder.layers)

    def shared_prefix_unsupported(self) -> str | None:
        return "transformers text towers have no shared-prefix encoding in vlprompt (whole prompts are encoded)"

    # -- image -------------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor, visual: VisualPrompts | None = None) -> torch.Tensor:
        if visual is None:
            return _output(self.model.get_image_features(pixel_values=images.to(self.device, self.dtype)))
        self.require(Capability.VISUAL_PROMPTS, "encode_image(visual=...)")
        vision = self.model.vision_model  # CLIPVisionTransformer.forward with the prompts after the class token
        hidden = vision.embeddings(images.to(self.device, self.dtype))
        hidden = insert_positions(hidden, visual.shallow, VisualPrompts.START)  # before the pre-norm, as MaPLe
        hidden = vision.pre_layrnorm(hidden)
        hidden = run_layers(vision.encoder.layers, hidden, None, {}, visual, VisualPrompts.START)
        hidden = drop_positions(hidden, VisualPrompts.START, visual.n_tokens)
        return self.model.visual_projection(vision.post_layernorm(hidden[:, 0, :]))

    def image_prompt_shape(self) -> tuple[int, int]:
        self.require(Capability.VISUAL_PROMPTS, "image_prompt_shape")
        vision = self.model.vision_model
        return len(vision.encoder.layers), int(vision.config.hidden_size)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=images.to(self.device, self.dtype)).last_hidden_state

    def _block_norms(self) -> list[nn.Module]:
        """``layer_norm1`` / ``layer_norm2`` of every vision encoder layer (CLIP and SigLIP name them alike)."""
        layers = getattr(getattr(self.model.vision_model, "encoder", None), "layers", None) or []
        norms = [getattr(layer, name, None) for layer in layers for name in ("layer_norm1", "layer_norm2")]
        return norms if norms and all(isinstance(n, nn.LayerNorm) for n in norms) else []

    def image_norm_modules(self) -> list[nn.Module]:
        self.require(Capability.IMAGE_NORMS, "image_norm_modules")
        return self._block_norms()

    @property
    def logit_scale(self) -> torch.Tensor:
        # SigLIP also has a logit_bias for its sigmoid loss; softmax over classes ignores a shared bias.
        return self.model.logit_scale.exp().clamp(max=100.0).reshape(())


def _preprocess_cfg(folder: Path | None, model: nn.Module) -> dict:
    """open_clip PreprocessCfg arguments from the model's ``preprocessor_config.json`` (else its defaults)."""
    vision = model.config.vision_config
    siglip = model.config.model_type == "siglip"
    cfg: dict = {
        "size": int(vision.image_size),
        "mean": (0.5, 0.5, 0.5) if siglip else (0.48145466, 0.4578275, 0.40821073),
        "std": (0.5, 0.5, 0.5) if siglip else (0.26862954, 0.26130258, 0.27577711),
        "interpolation": "bilinear" if siglip else "bicubic",
        "resize_mode": "squash" if siglip else "shortest",
    }
    path = folder / "preprocessor_config.json" if folder is not None else None
    if path is not None and path.is_file():
        data = read_json(path)
        if data.get("image_mean"):
            cfg["mean"] = tuple(float(v) for v in data["image_mean"])
        if data.get("image_std"):
            cfg["std"] = tuple(float(v) for v in data["image_std"])
        resample = data.get("resample")
        if resample in (2, 3):  # PIL codes: 2 bilinear, 3 bicubic
            cfg["interpolation"] = "bilinear" if resample == 2 else "bicubic"
    return cfg


def _local_folder(name: str) -> Path | None:
    path = Path(name).expanduser()
    return path if path.is_dir() else None


def _snapshot_folder(name: str) -> Path | None:
    """Where a hub id's files were found locally (for the preprocessing config and the weights hash)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        return Path(found).parent if isinstance(found, str) else None
    except Exception:
        return None


def _weights_hash(folder: Path | None) -> str | None:
    if folder is None:
        return None
    for filename in WEIGHT_FILES:
        if (folder / filename).is_file():
            return short_hash(file_sha256(folder / filename))
    return None


@BACKBONE_SOURCES.register("hf")
def create_hf_backbone(name: str, pretrained: str | None = None, device: str = "cpu") -> HFClipBackbone:
    """Load a transformers CLIP or SigLIP from a hub id (``openai/clip-vit-base-patch16``, optionally
    ``hf-hub:`` prefixed) or a local folder written by ``save_pretrained``.

    The weights come with the model, so `pretrained` is only accepted as a local folder that overrides
    `name` (the identity keeps both); vlprompt's open_clip tags (``world``, ``openai``) are ignored here.
    """
    import transformers

    name = name.removeprefix("hf-hub:")
    if not ignored_by_own_weights(pretrained) and pretrained not in ("openai", "hf") and _local_folder(pretrained):
        location = pretrained
    else:
        location, pretrained = name, None
    folder = _local_folder(location)
    if folder is None and (location.startswith((".", "/", "~")) or os.sep in location.strip("/").replace("/", "", 1)):
        raise VLPromptError(missing_weights_message(location, "folder not found"))
    hub_mode = contextlib.nullcontext()
    if folder is None:  # a hub id: not cached and no network is one error now, not minutes of retries
        reason = network.unreachable_reason(network.hf_endpoint())
        if reason is not None and _snapshot_folder(location) is None:
            raise VLPromptError(missing_weights_message(location, reason))
        if reason is not None:
            hub_mode = network.hub_offline()
    with hub_mode:
        return _load_hf(name, location, pretrained, folder, device, transformers)


def _load_hf(name: str, location: str, pretrained: str | None, folder: Path | None, device: str,
             transformers: Any) -> HFClipBackbone:
    try:
        config = transformers.AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as error:
        raise VLPromptError(missing_weights_message(location, _first_line(error))) from None
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise VLPromptError(
            f"Hugging Face model {location!r} is a {model_type!r} model; vlprompt's hf source supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (CLIPModel, SiglipModel). For open_clip models use the open_clip source."
        )
    model_class = transformers.CLIPModel if model_type == "clip" else transformers.SiglipModel
    try:
        model = model_class.from_pretrained(location, config=config, torch_dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, ImportError) as error:
        raise VLPromptError(missing_weights_message(location, _first_line(error))) from None
    folder = folder or _snapshot_folder(location)
    text_config = model.config.text_config
    embed_dim = int(text_config.projection_size) if model_type == "siglip" else int(model.config.projection_dim)
    identity = BackboneIdentity(
        source="hf",
        name=name,
        pretrained=pretrained,
        embed_dim=embed_dim,
        width=int(text_config.hidden_size),
        context_length=int(text_config.max_position_embeddings),
        weights_hash=_weights_hash(folder),
    )
    return HFClipBackbone(model, tokenizer, identity, _preprocess_cfg(folder, model)).to(device)
