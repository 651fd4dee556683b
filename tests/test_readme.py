"""The README is true: every command in its bash blocks is checked, and its demo table is what the demo
prints.

- Every ``vlprompt`` command parses with the real CLI parser and names no placeholder; configs and their
  ``key=value`` overrides load (files exist, keys are valid) without running anything.
- The cheap ones run for real, in order, in a scratch folder (`RUN`): a short world training, its
  ``--resume``, evaluating its prompt, predict, the zoo commands, zero-shot eval.
- ``make`` targets exist; lines that need what a test cannot have (a clone URL, a shell, GPUs) are listed
  in `NOT_RUN` with why, and the vlprompt command inside is still parsed.
- The demo block equals the table `vlprompt demo` printed (docs/results/demo/results.json, written by
  `vlprompt demo --out docs/results/demo`), and its CoOp column equals the bundled CoOp prompts' recorded
  accuracy (which tests/test_world_e2e.py re-measures); a slow test retrains the demo's first rows.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from vlprompt.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DEMO_RESULTS = ROOT / "docs" / "results" / "demo" / "results.json"
PLACEHOLDER = re.compile(r"\.\.\.|<[^>]*>|\[[^\]=]*\]|\bNAME\b|\bPROMPT\b|\bIMAGE\b|\bFILE\b| \| ")

# run for real by test_cheap_commands_run (in this order: the training makes the prompt the others use)
RUN = (
    "vlprompt train --config experiments/world_coop.yaml dataset.name=world_textures protocol.shots=4 train.epochs=10",
    "vlprompt train --config experiments/world_coop.yaml dataset.name=world_textures protocol.shots=4 train.epochs=10 --resume",
    "vlprompt eval --dataset world_textures --prompt runs/coop/world_textures/few-shot-4shot-seed1/prompt.safetensors",
    "vlprompt eval --dataset world_shapes world_textures",
    "vlprompt predict --prompt coop-world_textures-16shot photo1.png photo2.png --top-k 3",
    "vlprompt predict --prompt runs/coop/world_textures/few-shot-4shot-seed1/prompt.safetensors photo1.png --json "
    "--classes red,green,blue",
    "vlprompt zoo list",
    "vlprompt zoo info coop-world_textures-16shot",
    "vlprompt zoo download coop-world_textures-16shot",
    "vlprompt zoo verify",
    "vlprompt zoo export coop-world_textures-16shot --out clf.pt",
)
NOT_RUN = {
    "git clone": "the URL is wherever this copy came from",
    "cd vlprompt": "a shell builtin",
    "source .venv/bin/activate": "a shell builtin; the Makefile's .venv is what make test uses",
    "export VLPROMPT_DATA": "a shell builtin",
    "torchrun": "several processes (tests/test_engine_ddp.py runs two gloo ranks); the vlprompt part is parsed",
}


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks: continuation lines joined, comments and `&&` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            commands += [" ".join(part.split()) for part in line.split("&&") if part.strip()]
    return commands


def _vlprompt_argv(command: str) -> list[str] | None:
    words = shlex.split(command)
    if words[0] == "vlprompt":
        return words[1:]
    if words[0] == "torchrun":
        return words[words.index("vlprompt") + 1:]
    return None


def test_readme_has_commands():
    commands = readme_commands()
    assert len(commands) > 25 and all(c in commands for c in RUN), [c for c in RUN if c not in commands]


@pytest.mark.parametrize("command", readme_commands())
def test_every_command_parses_and_names_no_placeholder(command):
    exempt = any(command.startswith(prefix) for prefix in NOT_RUN)
    assert exempt or not PLACEHOLDER.search(command), f"placeholder in README command: {command}"
    argv = _vlprompt_argv(command)
    if argv is None:
        if command.startswith("make "):
            target = command.split()[1]
            assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), flags=re.M), command
        else:
            assert exempt, f"README command checked by nothing: {command}"
        return
    args = build_parser().parse_args(argv)  # exits (fails the test) on an unknown option
    _check_config(args)


def _check_config(args) -> None:
    """Configs and overrides load as the command would load them (nothing runs)."""
    from vlprompt.config import ExperimentConfig, apply_overrides, load_yaml

    if args.command == "train":
        ExperimentConfig.load(args.config, args.overrides)
    elif args.command == "czsl" and args.czsl_command in ("train", "eval"):
        ExperimentConfig.load(args.config, [*args.overrides, "task=czsl"])
    elif args.command == "sweep":
        from vlprompt.commands.sweep import sweep_runner

        sweep_runner(apply_overrides(load_yaml(args.config), args.overrides))


def test_cheap_commands_run(tmp_path, monkeypatch, capsys):
    """In a scratch folder, as a user would type them (the world data and features from the user cache)."""
    from vlprompt import api

    monkeypatch.chdir(tmp_path)
    images = sorted((api.world_data_root() / "world_textures" / "images").rglob("*.png"))
    shutil.copy(images[0], "photo1.png")
    shutil.copy(images[-1], "photo2.png")
    for command in RUN:
        code = main(shlex.split(command)[1:])
        out, err = capsys.readouterr()
        assert code == 0, f"{command}\n{err}"
        assert "error" not in err.lower(), f"{command}\n{err}"
    assert Path("clf.pt").is_file() and Path("runs/coop/world_textures/few-shot-4shot-seed1/experiment.json").is_file()


# -- the demo table ------------------------------------------------------------------------------


def readme_demo_rows() -> dict[str, tuple[int, float, float, float]]:
    """dataset -> (classes, zero-shot, CoOp, gain) from the README's demo block."""
    block = README.split("make demo", 1)[1].split("```\ndataset", 1)[1].split("```", 1)[0]
    rows = {}
    for line in block.splitlines():
        cells = line.split()
        if len(cells) == 6 and cells[0].startswith("world_"):
            rows[cells[0]] = (int(cells[1]), float(cells[2]), float(cells[3]), float(cells[4]))
    return rows


def _demo_results() -> list[dict]:
    return json.loads(DEMO_RESULTS.read_text())["rows"]


def test_readme_demo_block_is_the_demo_output():
    from vlprompt.demo import _table

    results = _demo_results()
    assert not json.loads(DEMO_RESULTS.read_text())["quick"]
    printed = [line.split()[:5] for line in _table(results).splitlines()[2:]]
    assert {cells[0]: (int(cells[1]), *map(float, cells[2:])) for cells in printed} == readme_demo_rows()


def test_demo_coop_column_is_the_bundled_prompts_accuracy():
    """The zoo's CoOp prompts are the demo's runs (16 shots, seed 1, same schedule): same top-1."""
    from vlprompt.zoo.registry import get_entry

    for row in _demo_results():
        entry = get_entry(f"coop-{row['dataset']}-16shot").meta
        assert entry["metrics"]["all"]["top1"] == pytest.approx(row["coop"], abs=1e-6), row["dataset"]
        assert entry["training"]["shots"] == 16 and entry["training"]["seed"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["world_shapes", "world_textures"])
def test_demo_rows_reproduce(dataset, tmp_path):
    """What `vlprompt demo` computes today for a set equals the README's row (exact, to 2 decimals)."""
    from vlprompt import api
    from vlprompt.config import ExperimentConfig
    from vlprompt.demo import DEMO_CONFIG
    from vlprompt.engine.zero_shot import evaluate_zero_shot

    backbone = api.load_backbone("vlprompt-tiny", "world", "cpu")
    root = api.world_data_root()
    zero = evaluate_zero_shot(backbone, api.load_dataset(dataset, root), progress=False)["metrics"]["top1"]
    config = ExperimentConfig.load(DEMO_CONFIG, [f"dataset.name={dataset}", f"dataset.root={root}",
                                                 f"output_dir={tmp_path}"])
    coop = api.run_experiment(config, backbone=backbone)["metrics"]["all"]["top1"]
    classes, readme_zero, readme_coop, _ = readme_demo_rows()[dataset]
    assert (round(zero, 2), round(coop, 2)) == (readme_zero, readme_coop)
