"""Methods: one module per method (config dataclass + nn.Module + loss), registered by name and task.

Importing this package fills the registry with every method of both tasks (classification and
compositional zero-shot).
"""

from vlprompt.methods import (  # noqa: F401  (each import registers its methods)
    cocoop,
    coop,
    csp,
    dfsp,
    infoprompt,
    ivlp,
    kgcoop,
    lasp,
    linear_probe,
    maple,
    mixture,
    pairs,
    persoma,
    prompt_ensemble,
    promptsrc,
    tailor,
    vpt,
    zero_shot,
)
from vlprompt.methods.base import METHODS, MethodConfig, MethodContext, PromptMethod, build_method, register_method
from vlprompt.methods.label_space import ClassLabels, LabelSpace, PairLabels

__all__ = [
    "METHODS", "ClassLabels", "LabelSpace", "MethodConfig", "MethodContext", "PairLabels", "PromptMethod",
    "build_method", "register_method",
]
