"""`vlprompt <command>`: soft prompt learning for CLIP-like vision-language models.

A thin layer over the Python API. Bad input, and expected trouble with files and disks (a missing
file, no permission, a full disk), give one `error:` line and exit code 2; anything else is a bug and
keeps its traceback. Output piped into a reader that stops early (`vlprompt zoo list | head -1`) ends
quietly with exit code 1.

The subcommands live in `vlprompt.commands` (one module each, registered in its `COMMANDS`). This
module imports nothing heavy: `--help`, `--version` and argument errors answer without torch.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from typing import NoReturn

from vlprompt import __version__
from vlprompt.commands import load_commands
from vlprompt.errors import VLPromptError
from vlprompt.threads import set_requested

# OSErrors that describe the user's files or disk, not a bug: one `error:` line, exit 2.
_EXPECTED_OS_ERRORS = (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)
_EXPECTED_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EFBIG, errno.EACCES, errno.ENAMETOOLONG, errno.ELOOP,
                    getattr(errno, "EDQUOT", errno.ENOSPC)}


class HelpFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help, unless the default says nothing (None, a flag, empty)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        default = action.default
        if not text or "%(default)" in text or "default:" in text:
            return text
        if default is None or default is argparse.SUPPRESS or isinstance(default, bool) or default in ("", [], ()):
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text  # a required positional has no default worth showing
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """The parser of `vlprompt` and of every subcommand (sub-parsers inherit the class): shows defaults."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """An argument error is one `error:` line (exit 2) like every other, pointing at --help."""
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="vlprompt", description="Soft prompt learning for CLIP-like vision-language models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = load_commands()
    for name in commands.names():
        commands.get(name)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            code = _run(build_parser(), argv)
        except SystemExit:  # --help, --version, argument errors: their output may meet a closed pipe too
            _flush_stdout()
            raise
        _flush_stdout()  # small outputs are still buffered here: a closed pipe shows now, not at exit
        return code
    except BrokenPipeError:
        if not _stdout_closed():  # some other pipe (a worker, a socket): a real error
            raise
        _silence_stdout()
        return 1


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning on the command line is one `warning:` line (no source line, no file position)."""
    return f"warning: {message}\n"


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    args = parser.parse_args(argv)
    formatwarning, warnings.formatwarning = warnings.formatwarning, _one_line_warning
    try:
        return _run_command(args)
    finally:
        warnings.formatwarning = formatwarning


def _run_command(args: argparse.Namespace) -> int:
    try:
        set_requested(getattr(args, "threads", None))
        args.run(args)
    except VLPromptError as exc:
        return _error(str(exc))
    except OSError as exc:
        if not (isinstance(exc, _EXPECTED_OS_ERRORS) or exc.errno in _EXPECTED_ERRNOS):
            raise
        return _error(describe_os_error(exc))
    except KeyboardInterrupt:
        print("interrupted: checkpoints written so far are intact; rerun with --resume", file=sys.stderr)
        return 130
    return 0


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def describe_os_error(exc: OSError) -> str:
    """``No space left on device: /data/cache/x.pt`` (reason, then the file or files it concerns)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    files = [f for f in (exc.filename, exc.filename2) if f is not None]
    where = " -> ".join(os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else str(f) for f in files)
    if exc.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)):
        reason += " (free some space, or point $VLPROMPT_CACHE / the output directory elsewhere)"
    return f"{reason}: {where}" if where else reason


def _flush_stdout() -> None:
    if sys.stdout is not None:
        sys.stdout.flush()


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor
        return False
    try:
        import select

        poller = select.poll()
    except (ImportError, AttributeError):  # no poll(): trust that the broken pipe was stdout
        return True
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _silence_stdout() -> None:
    """Point stdout at devnull, so the flush at interpreter exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
