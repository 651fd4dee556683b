"""Intra-op threads follow the work size: one for small models, torch's default for large ones,
`--threads` / `VLPROMPT_THREADS` win, and the count used is recorded."""

from __future__ import annotations

import os

import pytest
import torch

from vlprompt.cli import main
from vlprompt.errors import VLPromptError
from vlprompt.threads import SMALL_MODEL_PARAMS, THREADS_ENV, apply_threads, choose_threads


@pytest.fixture
def restore_threads(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "auto")  # recorded, so teardown removes what `--threads` writes
    monkeypatch.delenv(THREADS_ENV)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("env, params, expected", [
    (None, 7_652_097, 1),  # the world CLIP
    (None, 151_277_313, None),  # ViT-B/32: torch's default
    (None, None, None),
    ("3", 7_652_097, 3),
    ("2", 151_277_313, 2),
    ("auto", 7_652_097, 1),
])
def test_choice(env, params, expected, restore_threads, monkeypatch):
    if env is not None:
        monkeypatch.setenv(THREADS_ENV, env)
    assert choose_threads(params) == expected


@pytest.mark.parametrize("bad", ["0", "-1", "many"])
def test_bad_env_value_is_one_error(bad, restore_threads, monkeypatch):
    monkeypatch.setenv(THREADS_ENV, bad)
    with pytest.raises(VLPromptError, match=f"{THREADS_ENV}='{bad}'"):
        choose_threads(10)


def test_apply_sets_torch_threads(restore_threads, monkeypatch):
    small = torch.nn.Linear(10, 10)
    big = torch.nn.Module()
    big.register_parameter("w", torch.nn.Parameter(torch.empty(SMALL_MODEL_PARAMS)))
    torch.set_num_threads(2)
    assert apply_threads(small) == 1 == torch.get_num_threads()
    assert apply_threads(big) == 1  # large: left as it is
    monkeypatch.setenv(THREADS_ENV, "2")
    assert apply_threads(small) == 2 == torch.get_num_threads()


def test_cli_option_sets_the_env_and_rejects_bad_values(restore_threads, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["train", "--threads", "0", "--help"])
    assert exit.value.code == 2 and "a positive number of threads" in capsys.readouterr().err
    seen = {}

    def runner(config):
        seen["env"] = os.environ[THREADS_ENV]
        raise VLPromptError("stop here")

    monkeypatch.setattr("vlprompt.commands.sweep.sweep_runner", runner)
    assert main(["sweep", "--config", "sweeps/world_fewshot.yaml", "--threads", "3"]) == 2
    assert seen["env"] == "3"
