"""Dicts (from YAML or the command line) into config dataclasses, checked: the one unknown-key routine.

Every config section (method, train, dataset, protocol, eval) goes through `from_dict`, so a typo
in a key or a value of the wrong type fails when the config is loaded, before any work, with one line
naming the key, the close matches and the valid keys.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, TypeVar, Union

from vlprompt.errors import VLPromptError
from vlprompt.registry import unknown_name_message

T = TypeVar("T")


def check_keys(section: dict[str, Any], valid: list[str], where: str) -> None:
    """Fail with one line on the first key of `section` that is not in `valid`."""
    for key in section:
        if key not in valid:
            raise VLPromptError(unknown_name_message(f"key in {where}", str(key), valid))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001  (an unresolvable annotation: skip type checks, keep key checks)
        return {}


def _accepts(hint: Any, value: Any) -> tuple[bool, Any]:
    """(value fits `hint`, value converted): ints are accepted for floats; Any/unknown hints accept all."""
    if hint is Any or hint is object:
        return True, value
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(hint):
            ok, converted = _accepts(arm, value)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return not math.isnan(float(value)), float(value)
        return False, value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is str:
        return isinstance(value, str), value
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple)), list(value) if isinstance(value, tuple) and origin is list else value
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return True, value  # a type this routine does not know: the dataclass decides


def _type_name(hint: Any) -> str:
    text = getattr(hint, "__name__", None) or str(hint)
    return text.replace("typing.", "").replace("NoneType", "None")


def from_dict(cls: type[T], values: dict[str, Any] | None, where: str) -> T:
    """``cls(**values)`` after checking every key against the fields and every value against its type.

    Keys listed in ``cls.retired_keys`` (fields a published checkpoint may still carry) are dropped.
    """
    if values is not None and not isinstance(values, dict):
        raise VLPromptError(f"{where} must be a mapping of keys to values, got {type(values).__name__} {values!r}")
    values = dict(values or {})
    for key in getattr(cls, "retired_keys", ()):
        values.pop(key, None)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    check_keys(values, names, where)
    hints = _hints(cls)
    for key, value in list(values.items()):
        if key not in hints:
            continue
        ok, converted = _accepts(hints[key], value)
        if not ok:
            raise VLPromptError(
                f"{where}: {key} must be {_type_name(hints[key])}, got {type(value).__name__} {value!r}"
            )
        values[key] = converted
    return cls(**values)
