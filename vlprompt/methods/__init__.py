"""Methods: one module per method (config dataclass + nn.Module + loss), registered by name."""

from vlprompt.methods import cocoop, coop, kgcoop, lasp, linear_probe, zero_shot  # noqa: F401  (fill the registry)  # noqa: F401  (LASP and KgCoOp)
from vlprompt.methods.base import METHODS, MethodConfig, PromptMethod, build_method

__all__ = ["METHODS", "MethodConfig", "PromptMethod", "build_method"]
