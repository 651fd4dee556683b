"""The `vlprompt` subcommands. Each module here registers its argparse parser in `COMMANDS` on import.

Registering must stay cheap: a command module imports only the standard library and light vlprompt
modules (errors, registry) at the top, and everything heavy (torch, open_clip, transformers,
`vlprompt.api`, the engine, methods, data readers) inside the function that runs the command. Then
`vlprompt --help`, `--version` and argument errors answer without loading a deep-learning stack
(tests/test_cli_responsiveness.py checks that torch stays unimported).

`vlprompt.cli` imports this package, never the reverse.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable

from vlprompt.registry import Registry
from vlprompt.threads import THREADS_ENV, threads_arg

AddParser = Callable[[argparse._SubParsersAction], None]

COMMANDS: Registry[AddParser] = Registry("command")


def counted_int(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for integers >= `minimum` (``--batch-size 0`` is an argument error, one line)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    """``--threads N|auto``: torch's intra-op threads (`vlprompt.threads`); `vlprompt.cli` applies it."""
    parser.add_argument(
        "--threads", type=threads_arg, default=None, metavar="N",
        help=f"intra-op CPU threads, or 'auto' (default: ${THREADS_ENV}, else auto: 1 for small models like the "
             "world CLIP, torch's default for larger ones)",
    )


def load_commands() -> Registry[AddParser]:
    """Import every module of this package, so each registers its subcommand; returns `COMMANDS`."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    return COMMANDS
