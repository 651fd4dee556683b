"""Configs are checked when loaded, before any model, dataset or file is touched: a typo costs a second,
not minutes, and writes nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlprompt.config import ExperimentConfig
from vlprompt.errors import VLPromptError

HEAVY = ("open_clip", "transformers", "timm", "torchvision", "webdataset")


def test_loading_a_config_imports_no_model_library():
    code = (
        "import sys; from vlprompt.config import ExperimentConfig; "
        "ExperimentConfig.load('experiments/lasp_world.yaml'); ExperimentConfig.load('czsl/world'); "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_cli_typo_is_one_line_before_any_work(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "vlprompt", "train", "--config", "experiments/world_coop.yaml", "method.n_ctxx=4",
         f"output_dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "error: unknown key in 'method' section 'n_ctxx'. Did you mean 'n_ctx'? Valid: class_label_fill, class_position, "
        "class_specific, csc_word_init, ctx_init, init, init_seed, init_std, n_ctx"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, no split files


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epochs=abc"], "'train' section: epochs must be int, got str 'abc'"),
        (["train.lr=nan"], "'train' section: lr must be float, got str 'nan'"),
        (["train.lr=.nan"], "'train' section: lr must be float, got float nan"),
        (["protocol.seed=abc"], "'protocol' section: seed must be int, got str 'abc'"),
        (["protocol=3"], "'protocol' section must be a mapping of keys to values, got int 3"),
        (["method.n_ctx=abc"], "'method' section: n_ctx must be int, got str 'abc'"),
        (["train.batch_size=0"], "'train' section: batch_size must be >= 1, got 0"),
        (["train.optimizer=adamm"], "unknown optimizer 'adamm'. Did you mean 'adam', 'adamw'?"),
        (["eval.templates=[a]"], "'eval' section: templates must be str, got list"),
        (["task=segmentation"], "unknown task 'segmentation'"),
    ],
)
def test_wrong_values_fail_when_loaded(overrides, message):
    with pytest.raises(VLPromptError) as error:
        ExperimentConfig.load("experiments/world_coop.yaml", overrides)
    assert message in str(error.value)


def test_base_chain_loop_is_one_line(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(VLPromptError, match="base: chain loops"):
        ExperimentConfig.load(str(tmp_path / "a.yaml"))


def test_yaml_12_numbers_and_typed_sections():
    config = ExperimentConfig.load("experiments/world_coop.yaml", ["train.lr=2e-3", "train.weight_decay=1e-5"])
    assert config.train.lr == 0.002 and config.train.weight_decay == 1e-5
    assert config.train.seed == config.protocol.seed == 1  # the train seed follows the protocol's
    assert ExperimentConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()  # round trip
