"""CSP: compositional soft prompting (Nayak, Yu & Bach, ICLR'23).

One learned vector per attribute and per object (initialised from the mean of the name's token
embeddings) fills the slots of the frozen prompt "a photo of {attr} {obj}"; dropout on the vocabulary
matrix as the released code does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.methods.base import register_method
from vlprompt.methods.label_space import PairLabels
from vlprompt.methods.pairs import PairMethod, PairMethodConfig, SlotPrompt, mean_token_embeddings


@dataclass
class CSPConfig(PairMethodConfig):
    prefix: str = "a photo of"  # frozen hard prefix
    attr_dropout: float = 0.3  # nn.Dropout on the vocabulary matrix


@register_method("csp", CSPConfig, tasks=("czsl",))
class CSP(PairMethod):
    """CSP (Nayak et al., ICLR'23): one learned vector per attribute and object, frozen prefix."""

    def __init__(self, backbone: Backbone, labels: PairLabels, config: CSPConfig) -> None:
        super().__init__(backbone, labels, config)
        self.vocab = nn.Parameter(mean_token_embeddings(backbone, self.attrs + self.objs,
                                                                config.underscores_as_spaces))
        self.dropout = nn.Dropout(config.attr_dropout)
        self.prompt = SlotPrompt(backbone, config.prefix)

    def pair_text_features(self, pairs: torch.Tensor) -> torch.Tensor:
        vocab = self.dropout(self.vocab)
        return self.prompt.encode(vocab[pairs[:, 0]], vocab[self.n_attrs + pairs[:, 1]])
