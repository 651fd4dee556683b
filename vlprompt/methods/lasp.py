"""LASP: language-aware soft prompting (Bulat & Tzimiropoulos, CVPR'23), complete.

Loss = image-text cross-entropy over the training classes + ``text_loss_weight`` x L_TT, where L_TT
(`vlprompt.methods.text_losses.text_to_text_loss`) asks the soft-prompt class features and frozen
hand-crafted features (every template x every class, computed once) to identify each other's classes.

Beyond the official code (which has one group, always uses every class name of the dataset, and turns
re-calibration on unconditionally) this implementation offers, each switched by the config:

- ``groups`` (G): G sets of context vectors. Group g's L_TT only uses its own subset of the templates
  (``group_templates``: lists of template indices; default round-robin, template t -> group t mod G).
  Inference averages the groups' L2-normalised class features and re-normalises them (prompt
  ensembling in feature space, like CLIP's template ensembling): one classifier, one logit scale.
  The image-text CE is taken on that ensemble (``group_ce: ensemble``) or averaged over each group's
  own logits (``group_ce: per_group``). G=1 is plain LASP either way.
- ``virtual_classes``: class names with no images that join L_TT only (never the image-text CE). The
  exact list of names L_TT sees is `text_loss_classnames` (training classes first, then the virtual
  ones not already among them), so a result can prove which names were (not) used.
- Re-calibration: ``text_bias`` (a learnable zero-initialised vector added to every soft-prompt text
  feature before normalisation: training, L_TT and inference alike) and ``image_ln`` (the affine
  parameters of the image tower's per-block LayerNorms, trained at ``image_ln_lr_scale`` x the lr).

Image LayerNorm tuning keeps the backbone untouched: the method owns *copies* of the LayerNorm
parameters and runs the image tower with them swapped in (``torch.func.functional_call``). So they are
ordinary method parameters: in `trainable_state()` and checkpoints, moved by ``method.to``, seen by
DDP; the shared backbone (and every other method or zero-shot baseline using it) is never modified.
`param_groups(lr)` gives the optimizer groups with the lower lr for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.capabilities import Capability
from vlprompt.errors import VLPromptError
from vlprompt.methods.base import MethodConfig, MethodContext, PromptMethod, register_method
from vlprompt.methods.label_space import LabelSpace
from vlprompt.methods.text_losses import DIRECTIONS, group_text_losses
from vlprompt.prompts.assembler import PromptAssembler
from vlprompt.prompts.context import check_init, initial_context
from vlprompt.prompts.handcrafted import handcrafted_features
from vlprompt.prompts.templates import TEMPLATE_BANKS, get_templates, prompt_classname

GROUP_CE = ("ensemble", "per_group")


@dataclass
class LASPConfig(MethodConfig):
    # image_ln_pattern: a regex over parameter names, replaced by `Backbone.image_norm_parameters`;
    # published checkpoints still record it, so it is dropped on load
    retired_keys: ClassVar[tuple[str, ...]] = ("image_ln_pattern",)

    n_ctx: int = 4
    ctx_init: str = "a photo of a"  # words (sets n_ctx) or "" for N(0, init_std)
    init_std: float = 0.02
    init_seed: int | None = None
    init: str = ""  # context init strategy (vlprompt.prompts.context); non-word ones need ctx_init: ""
    templates: Any = "lasp35"  # bank name, a literal "{}" template, a text file, or a list
    text_loss_weight: float = 5.0  # lambda_T; 0 switches L_TT off
    direction: str = "soft_as_classifier"  # | handcrafted_as_classifier | symmetric
    noise_std: float = 0.05  # Gaussian noise on the hand-crafted features...
    noise_prob: float = 0.5  # ...on this fraction of the steps (0: never)
    virtual_classes: Any = None  # None, a list of class names, or a text file (one name a line)
    groups: int = 1
    group_templates: Any = None  # None (round-robin) or G lists of template indices
    group_ce: str = "ensemble"  # ensemble | per_group
    text_bias: bool = False  # learnable bias on soft-prompt text features (official: on)
    image_ln: bool = False  # train the image tower's block LayerNorms (official: on)
    image_ln_lr_scale: float = 0.1
    encode_batch_size: int = 1024  # prompts per text-tower call for the hand-crafted features

    def resolve(self, context: MethodContext) -> None:
        """``virtual_classes: new`` (LASP-V) names the classes of the protocol's "new" evaluation."""
        if self.virtual_classes == "new":
            if "new" not in context.evaluations:
                raise VLPromptError("lasp: virtual_classes: new needs protocol base-to-new (it names the new classes)")
            self.virtual_classes = list(context.evaluations["new"].names)


def read_virtual_classes(spec: Any) -> list[str]:
    """A list of names as given, or a text file with one name a line (blank lines and # skipped)."""
    if spec is None:
        return []
    if isinstance(spec, str):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise VLPromptError(
                f"lasp: virtual_classes {spec!r} is not a file; give a list of class names or a text file with one name a line"
            )
        lines = path.read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    names = list(spec)
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise VLPromptError(f"lasp: virtual_classes must be non-empty strings, got {bad[0]!r}")
    return [n.strip() for n in names]


def split_templates(n_templates: int, groups: int, explicit: Any = None) -> list[list[int]]:
    """Template indices per group: `explicit` checked, or round-robin (t -> group t mod G)."""
    if groups < 1:
        raise VLPromptError(f"lasp: groups must be >= 1, got {groups}")
    if explicit is None:
        if groups > n_templates:
            raise VLPromptError(f"lasp: {groups} groups need at least as many templates, the bank has {n_templates}")
        return [list(range(g, n_templates, groups)) for g in range(groups)]
    subsets = [list(s) for s in explicit]
    if len(subsets) != groups:
        raise VLPromptError(f"lasp: group_templates has {len(subsets)} lists for {groups} groups")
    for g, subset in enumerate(subsets):
        if not subset:
            raise VLPromptError(f"lasp: group_templates[{g}] is empty; every group needs templates")
        for t in subset:
            if not isinstance(t, int) or not 0 <= t < n_templates:
                raise VLPromptError(f"lasp: group_templates[{g}] holds {t!r}; template indices are 0..{n_templates - 1}")
    return subsets


def resolve_templates(config: Any) -> list[str]:
    """The template strings of ``config.templates``. A file (or other non-bank spec) is replaced in the
    config by its strings, so a saved config rebuilds the method without the file."""
    templates = get_templates(config.templates)
    if not (isinstance(config.templates, str) and config.templates in TEMPLATE_BANKS):
        config.templates = dict(templates) if isinstance(templates, dict) else list(templates)
    return templates


class _ImageTower(nn.Module):
    """``backbone.encode_image`` as a module, so `functional_call` can swap backbone parameters."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_image(images)


@register_method("lasp")
class LASP(PromptMethod):
    """Unified context ``[G, n, W]`` in ``"{ctx} {class}."``; see the module docstring."""

    config_class = LASPConfig

    def __init__(self, backbone: Backbone, labels: LabelSpace | Sequence[str], config: LASPConfig) -> None:
        super().__init__(backbone, labels, config)
        classnames = self.classnames
        if config.direction not in DIRECTIONS:
            raise VLPromptError(f"lasp: direction {config.direction!r} is not one of {list(DIRECTIONS)}")
        if config.group_ce not in GROUP_CE:
            raise VLPromptError(f"lasp: group_ce {config.group_ce!r} is not one of {list(GROUP_CE)}")
        if not 0.0 <= config.noise_prob <= 1.0 or config.noise_std < 0:
            raise VLPromptError("lasp: noise_prob must be in [0, 1] and noise_std >= 0")
        check_init(config.init, config.ctx_init, "lasp")
        ctx = initial_context(
            backbone, config.n_ctx, config.ctx_init, config.init_std, config.init_seed, config.init, classnames
        )
        self.n_ctx = ctx.shape[0]
        self.ctx = nn.Parameter(ctx.unsqueeze(0).repeat(config.groups, 1, 1))  # [G, n, W]

        self.templates = resolve_templates(config)
        if isinstance(self.templates, dict):
            raise VLPromptError(
                "lasp: templates must be shared by all classes ('{}' or '{c}' templates: its text loss pairs "
                "template t across classes); per-class descriptions serve zero-shot and kgcoop"
            )
        self.group_templates = split_templates(len(self.templates), config.groups, config.group_templates)

        # Names the text-to-text loss sees: the training classes, then new virtual ones (order kept).
        self.train_classnames = list(classnames)
        virtual = read_virtual_classes(config.virtual_classes)
        seen = set(self.train_classnames)
        self.virtual_classnames = [n for n in dict.fromkeys(virtual) if n not in seen]
        if config.virtual_classes is not None:  # the names themselves, not a file: checkpoints and results prove them
            config.virtual_classes = list(virtual)
        self.text_loss_classnames: list[str] = (
            self.train_classnames + self.virtual_classnames if config.text_loss_weight > 0 else []
        )

        embed_dim = backbone.identity.embed_dim
        self.text_bias = nn.Parameter(torch.zeros(1, embed_dim)) if config.text_bias else None

        self.needs_images = bool(config.image_ln)  # instance attribute: cached features cannot see tuned LNs
        self.image_ln = nn.ParameterDict()
        self._image_ln_names: dict[str, str] = {}
        if config.image_ln:
            self._init_image_ln(backbone)
        self._image_tower = [_ImageTower(backbone)]  # in a list: not a submodule, owns no weights

        self._handcrafted: torch.Tensor | None = None  # [T, C_all, D], built on first use
        self._last: dict[str, torch.Tensor] = {}  # tensors of the last training forward, for `loss`
        if self.text_loss_classnames:
            self.loss_prompts = self._assembler(self.text_loss_classnames)
        self.set_classnames(classnames)

    # -- construction -------------------------------------------------------------------------

    def _assembler(self, classnames: Sequence[str]) -> PromptAssembler:
        names = [prompt_classname(c) for c in classnames]
        return PromptAssembler(self.backbone, "{ctx} {class}.", {"class": names}, {"ctx": self.n_ctx})

    def _init_image_ln(self, backbone: Backbone) -> None:
        """Copies of the image tower's per-block LayerNorm parameters, as the backbone names them (the official
        code tunes every block's two norms; the pre/post norms and the text tower stay frozen)."""
        backbone.require(Capability.IMAGE_NORMS, "lasp: image_ln", "a ResNet image tower has no LayerNorms; set image_ln: false")
        for name, param in backbone.image_norm_parameters().items():
            key = name.replace(".", "__")
            self.image_ln[key] = nn.Parameter(param.detach().float().clone())
            self._image_ln_names[key] = f"backbone.{name}"

    def result_metadata(self) -> dict[str, Any]:
        """The names L_TT saw (training classes, then the virtual ones): a result proves what was used."""
        return {"loss_classnames": list(self.text_loss_classnames or self.train_classnames),
                "virtual_classnames": list(self.virtual_classnames)}

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Classes to classify (e.g. the new classes at evaluation). L_TT keeps the names it was built
        with (`text_loss_classnames`): a method trains on the classes it was constructed for."""
        self.prompts = self._assembler(classnames)
        self.classnames = list(classnames)

    # -- features -----------------------------------------------------------------------------

    @property
    def handcrafted(self) -> torch.Tensor:
        """Frozen hand-crafted features ``[T, C_all, D]`` of `text_loss_classnames`, computed once."""
        if self._handcrafted is None:
            self._handcrafted = handcrafted_features(
                self.backbone, self.text_loss_classnames, self.templates, self.config.encode_batch_size
            )
        return self._handcrafted

    def _apply(self, fn, recurse=True):  # keep the lazily built frozen features on the method's device
        super()._apply(fn, recurse)
        if self._handcrafted is not None:
            self._handcrafted = fn(self._handcrafted)
        return self

    def group_features(self, prompts: PromptAssembler) -> torch.Tensor:
        """``[G, P, D]`` L2-normalised soft-prompt features of every group (bias added first)."""
        G, n, W = self.ctx.shape
        ctx = self.ctx.unsqueeze(1).expand(G, prompts.n_prompts, n, W)  # shared per group: one prefix each
        feats = prompts.encode(ctx=ctx)
        if self.text_bias is not None:
            feats = feats + self.text_bias.to(feats.dtype)
        return F.normalize(feats, dim=-1)

    @staticmethod
    def ensemble(group_feats: torch.Tensor) -> torch.Tensor:
        """Groups' normalised class features averaged and re-normalised: ``[G, C, D] -> [C, D]``."""
        if group_feats.shape[0] == 1:
            return group_feats[0]
        return F.normalize(group_feats.mean(dim=0), dim=-1)

    def class_features(self) -> torch.Tensor:
        return self.ensemble(self.group_features(self.prompts))

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.image_ln:
            return super().image_features(batch)
        if "images" not in batch:
            raise VLPromptError("lasp: image_ln needs images (batch['images']); cached features cannot see tuned LayerNorms")
        from torch.func import functional_call

        tower = self._image_tower[0]
        own = dict(tower.named_parameters())
        swapped = {self._image_ln_names[k]: p.to(own[self._image_ln_names[k]].dtype) for k, p in self.image_ln.items()}
        return F.normalize(functional_call(tower, swapped, (batch["images"],)), dim=-1)

    # -- training -----------------------------------------------------------------------------

    @property
    def uses_text_loss(self) -> bool:
        return bool(self.text_loss_classnames)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        image = self.image_features(batch)
        scale = self.backbone.logit_scale.detach()
        if not self.training:
            text = self.class_features()
            return scale * image @ text.to(image.dtype).t()
        C = len(self.classnames)
        if self.uses_text_loss:
            loss_feats = self.group_features(self.loss_prompts)  # [G, C_all, D]
            self._last = {"loss_feats": loss_feats}
            if self.classnames == self.train_classnames:  # one text pass serves both losses
                feats = loss_feats[:, :C]
            else:
                feats = self.group_features(self.prompts)
        else:
            self._last = {}
            feats = self.group_features(self.prompts)
        self._last.update(image=image, feats=feats)
        return scale * image @ self.ensemble(feats).to(image.dtype).t()

    def text_loss(self, loss_feats: torch.Tensor, noise: bool | torch.Tensor | None = None) -> torch.Tensor:
        """L_TT averaged over groups, each against its own templates (`lasp_text_loss` computes the same
        from raw features). `noise`: None draws it (probability ``noise_prob``), True/False forces it, a
        tensor ``[T, C_all, D]`` is the noise itself."""
        hand = self.handcrafted.to(loss_feats.device)
        cfg = self.config
        if noise is None:
            noise = cfg.noise_std > 0 and cfg.noise_prob > 0 and float(torch.rand(())) < cfg.noise_prob
        if isinstance(noise, torch.Tensor):
            hand = hand + noise.to(hand.device, hand.dtype)
        elif noise:
            hand = hand + cfg.noise_std * torch.randn_like(hand)  # not re-normalised, as the official code
        scale = self.backbone.logit_scale.detach().float()
        return group_text_losses(loss_feats, hand, scale, self.group_templates, cfg.direction)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        labels = batch["labels"]
        last, self._last = self._last, {}  # used once: no stale graph survives the step
        if self.config.group_ce == "per_group" and "feats" in last and last["feats"].shape[0] > 1:
            scale = self.backbone.logit_scale.detach()
            image, feats = last["image"], last["feats"]
            per_group = scale * torch.einsum("bd,gcd->gbc", image.float(), feats.float())
            ce = torch.stack([F.cross_entropy(g_logits, labels) for g_logits in per_group]).mean()
        else:
            ce = F.cross_entropy(logits.float(), labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        stats = {"ce": float(ce.detach()), "acc": float(acc) * 100}
        loss = ce
        if "loss_feats" in last:
            tt = self.text_loss(last["loss_feats"])
            loss = ce + self.config.text_loss_weight * tt
            stats["text_loss"] = float(tt.detach())
        stats["loss"] = float(loss.detach())
        return loss, stats

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer param groups: the prompt (context, bias) at `lr`; the image LayerNorm copies at
        ``image_ln_lr_scale * lr``. Each group carries ``lr_scale`` so a schedule that sets the lr
        every step can keep the ratio (``group["lr"] = lr_now * group["lr_scale"]``)."""
        ln = [p for p in self.image_ln.values() if p.requires_grad]
        ln_ids = {id(p) for p in ln}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ln_ids]
        groups: list[dict[str, Any]] = [{"params": rest, "lr": lr, "lr_scale": 1.0, "name": "prompt"}]
        if ln:
            scale = self.config.image_ln_lr_scale
            groups.append({"params": ln, "lr": lr * scale, "lr_scale": scale, "name": "image_ln"})
        return groups
