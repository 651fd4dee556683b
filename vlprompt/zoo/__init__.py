"""Prompt checkpoints (safetensors + JSON) and, later, the registry of published prompts."""

from vlprompt.zoo.checkpoint import load_prompt, save_prompt

__all__ = ["load_prompt", "save_prompt"]
