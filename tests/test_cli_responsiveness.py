"""The CLI answers `--help`, `--version`, argument errors and `zoo list` without importing torch; a
closed stdout ends quietly; expected OS errors are one `error:` line; every option says what it does."""

from __future__ import annotations

import argparse
import ast
import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vlprompt
from vlprompt.cli import build_parser, main

HEAVY = ("torch", "open_clip", "transformers", "webdataset", "vlprompt.api", "vlprompt.engine", "vlprompt.methods",
         "vlprompt.backbones")
ZOO_ENTRY = "coop-world_shapes-16shot"  # shipped in vlprompt/zoo/registry.json


@pytest.fixture
def clean_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VLPROMPT_ZOO", "VLPROMPT_OFFLINE", "HF_HUB_OFFLINE")}
    env["VLPROMPT_CACHE"] = str(tmp_path / "cache")
    return env


def _subparsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) for the parser and every nested subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _subparsers(child, (*path, name))


def test_light_paths_import_no_deep_learning_stack(clean_env):
    """In a fresh interpreter: the CLI's parser, every --help, --version, argument errors, zoo list/info."""
    script = textwrap.dedent(
        f"""
        import argparse, contextlib, io, sys
        from vlprompt.cli import build_parser, main

        def run(argv):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                try:
                    return main(argv)
                except SystemExit as exit:
                    return exit.code

        def subparsers(parser, path=()):
            yield path
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, child in action.choices.items():
                        yield from subparsers(child, (*path, name))

        assert run(["--version"]) == 0
        assert run(["--help"]) == 0
        assert run([]) == 2 and run(["eval", "--bogus"]) == 2 and run(["predict", "--top-k", "x", "a.png"]) == 2
        for path in subparsers(build_parser()):
            assert run([*path, "--help"]) == 0, path
        assert run(["zoo", "list"]) == 0 and run(["zoo", "list", "--json"]) == 0
        assert run(["zoo", "info", "{ZOO_ENTRY}"]) == 0
        print(" ".join(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"imported on a light path: {out.stdout.strip()}"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["zoo", "list"]])
def test_entry_point_imports_no_torch(argv, clean_env):
    """`python -X importtime -m vlprompt ...`: the real entry point, module by module."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "vlprompt", *argv],
                         capture_output=True, text=True, env=clean_env, timeout=120)
    assert out.returncode == 0, out.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert imported, "no -X importtime output"
    assert not {"torch", "open_clip", "transformers"} & imported


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.strip() == f"vlprompt {vlprompt.__version__}"


def test_command_modules_do_not_import_cli():
    """The registry lives in vlprompt.commands: cli imports commands, never the reverse."""
    folder = Path(vlprompt.__file__).parent / "commands"
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            assert not any(n == "vlprompt.cli" for n in names), f"{path.name} imports vlprompt.cli"


SKIP_HELP_CHECK: set[str] = set()  # commands exempt from the every-option-has-help check


def test_every_option_has_help():
    missing = []
    for path, parser in _subparsers(build_parser()):
        if path and path[0] in SKIP_HELP_CHECK:
            continue
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"vlprompt {' '.join(path)} {action.option_strings or action.dest}")
    assert not missing, "options without help: " + "; ".join(missing)


@pytest.mark.parametrize(
    "argv, shown",
    [
        (["eval"], ["(default: test)", "(default: 128)", "(default: 0)"]),
        (["predict"], ["(default: 5)", "(default: 32)"]),
        (["zoo", "download"], ["(default: 3)", "(default: 30.0)"]),
        (["zoo", "export"], ["(default: cpu)"]),
    ],
)
def test_help_shows_defaults(argv, shown, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for piece in shown:
        assert piece in text
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize(
    "argv, codes",
    [
        (["zoo", "info", ZOO_ENTRY], {1}),
        (["zoo", "list", "--json"], {1}),
        (["--help"], {0, 1}),  # argparse itself ignores a failed write of the help text
    ],
)
def test_closed_stdout_ends_quietly(argv, codes, clean_env):
    """`vlprompt zoo info NAME | head -1`: the reader is gone before vlprompt writes; no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader from the start: the first write fails with EPIPE, deterministically
    try:
        out = subprocess.run([sys.executable, "-m", "vlprompt", *argv], stdout=write_end, stderr=subprocess.PIPE,
                             text=True, env=clean_env, timeout=120)
    finally:
        os.close(write_end)
    assert out.stderr == ""
    assert out.returncode in codes


def test_open_stdout_still_gets_everything(clean_env):
    out = subprocess.run([sys.executable, "-m", "vlprompt", "zoo", "info", ZOO_ENTRY],
                         capture_output=True, text=True, env=clean_env, timeout=120)
    assert out.returncode == 0 and out.stderr == "" and ZOO_ENTRY in out.stdout


@pytest.mark.parametrize(
    "error, expected",
    [
        (PermissionError(errno.EACCES, "Permission denied", "/data/out.json"), "Permission denied: /data/out.json"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.png"), "No such file or directory: a.png"),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "runs"), "Is a directory: runs"),
        (OSError(errno.ENOSPC, "No space left on device", "/cache/x.pt"), "No space left on device"),
        (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    ],
)
def test_expected_os_errors_are_one_line(error, expected, monkeypatch, capsys):
    def fail(args):
        raise error

    monkeypatch.setattr("vlprompt.commands.zoo._list", fail)
    assert main(["zoo", "list"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("error", [RuntimeError("a bug"), OSError(errno.EIO, "Input/output error"), BrokenPipeError()])
def test_other_errors_keep_their_traceback(error, monkeypatch):
    """Bugs propagate; so does a broken pipe that is not stdout (here stdout is pytest's capture)."""

    def fail(args):
        raise error

    monkeypatch.setattr("vlprompt.commands.zoo._list", fail)
    with pytest.raises(type(error)):
        main(["zoo", "list"])
