"""Backbone sources (open_clip, ...) and named weight resolvers (e.g. the embedded world CLIP)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlprompt.registry import Registry

BACKBONE_SOURCES: Registry[Callable] = Registry("backbone source")


class _ResolverTable:
    """(architecture, tag) -> function returning (state dict, weights hash)."""

    def __init__(self) -> None:
        self._table: dict[tuple[str, str], Callable[[], tuple[dict[str, torch.Tensor], str | None]]] = {}

    def register(self, arch: str, tag: str) -> Callable:
        def decorator(fn: Callable) -> Callable:
            self._table[(arch, tag)] = fn
            return fn

        return decorator

    def __contains__(self, key: object) -> bool:
        return key in self._table

    def get(self, key: tuple[str, str]) -> Callable:
        return self._table[key]

    def keys(self) -> list[tuple[str, str]]:
        return list(self._table)


PRETRAINED_RESOLVERS = _ResolverTable()
