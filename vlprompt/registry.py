"""Small name -> factory registries, filled by decorators.

Registries replace if-chains: a new backbone source, method or dataset is one decorated function,
and an unknown name fails with one line that lists the close matches and the valid names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from vlprompt.errors import VLPromptError

T = TypeVar("T")


class UnknownNameError(VLPromptError, KeyError):
    """An unknown registry key; its message names the close matches and every valid name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want a plain line
        return str(self.args[0])


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """One line: what was asked for, what is close, what exists."""
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = sorted(valid)
    listing = ", ".join(shown) if len(shown) <= 30 else f"{len(shown)} names, e.g. {', '.join(shown[:8])}, ..."
    return f"unknown {kind} {name!r}.{hint} Valid: {listing}"


class Registry(Generic[T]):
    """A named collection of factories; `register` is a decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, list(self._items))) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
