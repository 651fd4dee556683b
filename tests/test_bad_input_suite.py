"""The bad-input and fault suite: what a new user and a fault-injection tester do to the CLI.

Every case must end in exactly one ``error:`` line and exit code 2 (naming the file where there is
one), never a traceback, a segfault, an exit 0 with a wrong result or a lost run. The argument- and
config-level cases run in-process through `vlprompt.cli.main` (the same code path as the
``vlprompt`` command, without 2 s of interpreter and torch start-up each); the faults that need a
real process (kill -9, a file-size limit, a concurrent run) run as subprocesses. docs/reliability.md
has the case table.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlprompt.cli import _one_line_warning, main

TRAIN = ["train", "--config", "experiments/world_coop.yaml", "protocol.shots=1", "train.epochs=2"]
EVAL = ["eval", "--backbone", "vlprompt-test-vit", "--pretrained", "none", "--device", "cpu", "--batch-size", "8"]
SIDE = 32  # vlprompt-test-vit's input size


# -- running the CLI in-process -------------------------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stderr, stdout) of ``vlprompt ARGV`` run in this process."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.err, captured.out


def one_error_line(code: int, stderr: str, *expect: str) -> str:
    """The single ``error:`` line of a failed command; checks exit code 2, no traceback, no other line."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for text in expect:
        assert text in lines[0], (text, lines[0])
    return lines[0]


# -- shared material: a private cache (world data shared), a trained prompt, image folders --------


def _png(path: Path, seed: int, side: int = SIDE) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private VLPROMPT_CACHE (feature cache, zoo) whose world data is the user cache's."""
    from vlprompt import api
    from vlprompt.paths import cache_dir

    api.get_dataset("world_shapes")  # written to the user cache once
    shared = cache_dir("world-data")
    root = tmp_path_factory.mktemp("suite")
    cache = root / "cache"
    cache.mkdir()
    (cache / "world-data").symlink_to(shared)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLPROMPT_CACHE", str(cache))
        patch.chdir(root)
        yield root


@pytest.fixture(scope="module")
def trained(env):
    """A CoOp prompt trained on world_shapes (1 shot, 2 epochs): its run folder."""
    from vlprompt.config import ExperimentConfig
    from vlprompt.runner import run_experiment

    out = env / "trained"
    run_experiment(ExperimentConfig.load(TRAIN[2], [*TRAIN[3:], f"output_dir={out}"]))
    return out


@pytest.fixture(scope="module")
def folder(env):
    """folder:<root> with train/ and test/ splits of two classes of SIDE-pixel PNGs."""
    root = env / "pics"
    for split in ("train", "test"):
        for c, name in enumerate(["cat", "dog"]):
            for i in range(2):
                _png(root / split / name / f"{i}.png", 100 * c + 10 * (split == "test") + i)
    return root


def _wds(root: Path, count: int | None = None) -> Path:
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("cat\ndog\n")
    for shard in range(2):
        with tarfile.open(root / "test" / f"{shard}.tar", "w") as tar:
            for i in range(3):
                buffer = io.BytesIO()
                Image.fromarray(np.full((8, 8, 3), 40 * i + shard, np.uint8)).save(buffer, format="PNG")
                for ext, data in (("cls", str(i % 2).encode()), ("png", buffer.getvalue())):
                    info = tarfile.TarInfo(f"s{shard}{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    if count is not None:
        (root / "test" / "count.txt").write_text(f"{count}\n")
    return root


# -- the case table ---------------------------------------------------------------------------------
# Each case: argv (str.format'ed with the case's folder `d`, the trained run `run`, the image folder
# `pics`), the texts its error line must hold, and an optional setup that makes files in `d`.


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: tuple[str, ...]
    setup: Callable[[Path, Path], None] | None = None
    needs: tuple[str, ...] = field(default=())


def _write(name: str, text: str | bytes) -> Callable[[Path, Path], None]:
    def setup(d: Path, run: Path) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def _copy_prompt(edit: Callable[[dict, Path], None] | None = None, tensors: Callable[[bytes], bytes] | None = None):
    def setup(d: Path, run: Path) -> None:
        meta = json.loads((run / "prompt.json").read_text())
        data = (run / "prompt.safetensors").read_bytes()
        if edit:
            edit(meta, d)
        (d / "p.json").write_text(json.dumps(meta))
        (d / "p.safetensors").write_bytes(tensors(data) if tensors else data)
    return setup


def _swap_classes(meta: dict, d: Path) -> None:
    names = meta["classnames"]
    names[0], names[1] = names[1], names[0]
    meta["label_space"]["classnames"] = list(names)


def _finished_run(d: Path, run: Path) -> None:
    out = d / "out"
    out.mkdir()
    for name in ("experiment.json", "prompt.json", "prompt.safetensors", "metrics.jsonl", "last.pt"):
        (out / name).write_bytes((run / name).read_bytes())


def _evil_pickle(d: Path, run: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))
    (d / "evil.pt").write_bytes(pickle.dumps(Evil()))


def _long_names_csv(d: Path, run: Path) -> None:
    """Two classes whose names share their first 80 words: identical once the text is cut to 77 tokens."""
    shared = " ".join(["striped"] * 80)
    rows = ["path,label,classname"]
    for c in range(2):
        _png(d / f"{c}.png", c)
        rows.append(f"{c}.png,{c},{shared} {'cat' if c else 'dog'}")
    (d / "data.csv").write_text("\n".join(rows) + "\n")


def _cut_wds(d: Path, run: Path) -> None:
    """Shard 1 cut at a member boundary and closed again: a valid, shorter tar (3 of 6 samples left)."""
    root = _wds(d / "w", count=6)
    shard = root / "test" / "1.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()][:2]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))


def _truncated_wds(d: Path, run: Path) -> None:
    root = _wds(d / "w")
    shard = root / "test" / "1.tar"
    shard.write_bytes(shard.read_bytes()[:700])


def _corrupt_png(d: Path, run: Path) -> None:
    for c, name in enumerate(["a", "b"]):
        _png(d / "f" / name / "0.png", c)
    bad = d / "f" / "a" / "0.png"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))


def _loop(d: Path, run: Path) -> None:
    (d / "a.yaml").write_text("base: b.yaml\n")
    (d / "b.yaml").write_text("base: a.yaml\n")


CONFIG_CASES = [
    Case("lr nan", [*TRAIN, "train.lr=nan"], ("lr must be float", "'nan'")),
    Case("lr .nan", [*TRAIN, "train.lr=.nan"], ("lr must be float",)),
    Case("lr negative", [*TRAIN, "train.lr=-1"], ("lr must be > 0",)),
    Case("lr a list", [*TRAIN, "train.lr=[1, 2]"], ("lr must be float",)),
    Case("epochs abc", [*TRAIN, "train.epochs=abc"], ("epochs must be int", "'abc'")),
    Case("epochs 0", [*TRAIN, "train.epochs=0"], ("epochs must be >= 1",)),
    Case("epochs float", [*TRAIN, "train.epochs=2.5"], ("epochs must be int",)),
    Case("batch_size 0", [*TRAIN, "train.batch_size=0"], ("batch_size must be >= 1",)),
    Case("optimizer typo", [*TRAIN, "train.optimizer=adamm"], ("unknown optimizer 'adamm'", "adamw")),
    Case("schedule typo", [*TRAIN, "train.schedule=cosin"], ("cosin", "cosine")),
    Case("precision fp8", [*TRAIN, "train.precision=fp8"], ("precision 'fp8'", "bf16")),
    Case("grad_clip 0", [*TRAIN, "train.grad_clip=0"], ("grad_clip must be positive",)),
    Case("warmup negative", [*TRAIN, "train.warmup_epochs=-1"], ("warmup_epochs",)),
    Case("device tpu", [*TRAIN, "train.device=tpu"], ("device 'tpu'", "cpu", "cuda")),
    Case("device cuda, no GPU", [*TRAIN, "train.device=cuda"], ("cuda", "no CUDA GPU")),
    Case("train key typo", [*TRAIN, "train.epoch=3"], ("unknown key in 'train' section 'epoch'", "epochs")),
    Case("protocol a number", [*TRAIN, "protocol=3"], ("'protocol' section must be a mapping",)),
    Case("protocol.seed abc", [*TRAIN, "protocol.seed=abc"], ("seed must be int",)),
    Case("protocol name typo", [*TRAIN, "protocol.name=fewshot"], ("fewshot", "few-shot")),
    Case("shots 0", [*TRAIN, "protocol.shots=0"], ("shots", ">= 1")),
    Case("shots negative", [*TRAIN, "protocol.shots=-2"], ("shots", ">= 1")),
    Case("n_ctx 0", [*TRAIN, "method.n_ctx=0"], ("n_ctx must be >= 1", "0")),
    Case("n_ctx -3", [*TRAIN, "method.n_ctx=-3"], ("n_ctx must be >= 1", "-3")),
    Case("n_ctx abc", [*TRAIN, "method.n_ctx=abc"], ("n_ctx must be int", "'abc'")),
    Case("n_ctx abc, no ctx_init", [*TRAIN, "method.n_ctx=abc", "method.ctx_init="], ("n_ctx must be int",)),
    Case("method key typo", [*TRAIN, "method.n_ctxx=4"], ("unknown key in 'method' section 'n_ctxx'", "n_ctx")),
    Case("method unknown", [*TRAIN, "method.name=coopp"], ("unknown method 'coopp'", "coop")),
    Case("class_position", [*TRAIN, "method.class_position=side"], ("class_position", "end")),
    Case("ctx_init a number", [*TRAIN, "method.ctx_init=5"], ("ctx_init must be", "int 5")),
    Case("too long a prompt", [*TRAIN, "method.n_ctx=90", "method.ctx_init=", "output_dir={d}/o"], ("94 tokens", "takes 32")),
    Case("eval.templates unused", [*TRAIN, "eval.templates=imagenet80"], ("eval.templates", "not used")),
    Case("eval.templates wrong type", [*TRAIN, "eval.templates=[a]"], ("templates must be str",)),
    Case("eval key typo", [*TRAIN, "eval.splitt=test"], ("unknown key in 'eval' section 'splitt'", "split")),
    Case("dataset unknown", [*TRAIN, "dataset.name=world_shape"], ("unknown dataset 'world_shape'", "world_shapes")),
    Case("dataset key typo", [*TRAIN, "dataset.nam=x"], ("unknown key in 'dataset' section 'nam'", "name")),
    Case("backbone unknown", [*TRAIN, "backbone.name=ViT-B-61"], ("ViT-B-61", "ViT-B-16")),
    Case("backbone key typo", [*TRAIN, "backbone.pretrain=x"], ("'pretrain'", "pretrained")),
    Case("top-level key typo", [*TRAIN, "outputdir=x"], ("unknown key in experiment config 'outputdir'", "output_dir")),
    Case("task unknown", [*TRAIN, "task=segmentation"], ("unknown task 'segmentation'", "classification")),
    Case("output_dir a number", [*TRAIN, "output_dir=5"], ("output_dir must be a path",)),
    Case("train.output_dir vs output_dir", [*TRAIN, "train.output_dir={d}/a", "output_dir={d}/b"], ("train.output_dir",)),
    Case("override without =", [*TRAIN, "train.lr"], ("must look like key.sub=value",)),
    Case("override bad YAML", [*TRAIN, "train.lr=[1"], ("not valid YAML",)),
    Case("override into a value", [*TRAIN, "train.lr.x=1"], ("lr is not a section",)),
    Case("config missing", ["train", "--config", "{d}/none.yaml"], ("config file not found", "none.yaml")),
    Case("config bad YAML", ["train", "--config", "{d}/c.yaml"], ("c.yaml", "not valid YAML"), _write("c.yaml", "a: [")),
    Case("config a list", ["train", "--config", "{d}/c.yaml"], ("c.yaml", "mapping"), _write("c.yaml", "- 1\n- 2\n")),
    Case("config binary", ["train", "--config", "{d}/c.yaml"], ("c.yaml", "cannot read"), _write("c.yaml", b"\xff\xfe\x00")),
    Case("config a folder", ["train", "--config", "{d}"], ("config file not found",)),
    Case("config base loop", ["train", "--config", "{d}/a.yaml"], ("base: chain loops", "a.yaml"), _loop),
    Case("config base missing", ["train", "--config", "{d}/c.yaml"], ("config file not found", "nope.yaml"),
         _write("c.yaml", "base: nope.yaml\n")),
    Case("finished run folder", [*TRAIN, "output_dir={d}/out"], ("{d}/out", "--resume", "--overwrite"), _finished_run),
    Case("output_dir under a file", [*TRAIN, "output_dir={d}/f.txt/run"], ("cannot create the run folder", "{d}/f.txt/run"),
         _write("f.txt", "x")),
    Case("resume and overwrite", [*TRAIN, "output_dir={d}/out", "--resume", "--overwrite"], ("--resume", "--overwrite")),
]

EVAL_CASES = [
    Case("eval batch-size 0", [*EVAL, "--dataset", "folder:{pics}", "--batch-size", "0"], ("--batch-size", ">= 1")),
    Case("eval batch-size -1", [*EVAL, "--dataset", "folder:{pics}", "--batch-size", "-1"], ("--batch-size", ">= 1")),
    Case("eval batch-size abc", [*EVAL, "--dataset", "folder:{pics}", "--batch-size", "abc"], ("--batch-size", "'abc'")),
    Case("eval workers -1", [*EVAL, "--dataset", "folder:{pics}", "--workers", "-1"], ("--workers", ">= 0")),
    Case("eval unknown option", [*EVAL, "--dataset", "folder:{pics}", "--bogus"], ("--bogus",)),
    Case("eval no dataset", EVAL, ("--dataset",)),
    Case("eval no command", [], ("vlprompt",)),
    Case("eval dataset unknown", [*EVAL, "--dataset", "world_shape"], ("unknown dataset 'world_shape'",)),
    Case("eval folder missing", [*EVAL, "--dataset", "folder:{d}/none"], ("{d}/none",)),
    Case("eval csv missing", [*EVAL, "--dataset", "csv:{d}/none.csv"], ("{d}/none.csv",)),
    Case("eval wds missing", [*EVAL, "--dataset", "wds:{d}/none"], ("{d}/none",)),
    Case("eval split unknown", [*EVAL, "--dataset", "folder:{pics}", "--split", "tset"], ("tset", "test")),
    Case("eval templates unknown", [*EVAL, "--dataset", "folder:{pics}", "--templates", "imagenet8"], ("imagenet8",)),
    Case("eval backbone unknown", [*EVAL, "--dataset", "folder:{pics}", "--backbone", "ViT-B-61"], ("ViT-B-61",)),
    Case("eval weights missing", [*EVAL, "--dataset", "folder:{pics}", "--pretrained", "{d}/w.pt"], ("{d}/w.pt",)),
    Case("eval device tpu", [*EVAL, "--dataset", "folder:{pics}", "--device", "tpu"], ("device 'tpu'",)),
    Case("eval device cuda, no GPU", [*EVAL, "--dataset", "folder:{pics}", "--device", "cuda"], ("no CUDA GPU",)),
    Case("eval corrupt PNG", [*EVAL, "--dataset", "folder:{d}/f"], ("cannot decode image", "{d}/f/a/0.png"), _corrupt_png),
    Case("eval truncated shard", [*EVAL, "--dataset", "wds:{d}/w"], ("webdataset shard {d}/w/test/1.tar",), _truncated_wds),
    Case("eval shard short of count.txt", [*EVAL, "--dataset", "wds:{d}/w"], ("read 4 of the 6 samples", "count.txt"), _cut_wds),
    Case("eval long names identical", [*EVAL, "--dataset", "csv:{d}/data.csv"], ("identical prompts", "tokens"), _long_names_csv),
    Case("eval json into a folder", [*EVAL, "--dataset", "folder:{pics}", "--json", "{d}"], ("{d}", "is a directory")),
    Case("eval json under a file", [*EVAL, "--dataset", "folder:{pics}", "--json", "{d}/f.txt/r.json"], ("{d}/f.txt",),
         _write("f.txt", "x")),
]

PROMPT = ["eval", "--dataset", "world_shapes", "--device", "cpu", "--prompt"]
PROMPT_CASES = [
    Case("prompt missing", [*PROMPT, "{d}/none.safetensors"], ("no prompt checkpoint at", "none.safetensors")),
    Case("prompt evil.pt", [*PROMPT, "{d}/evil.pt"], ("{d}/evil.pt", "pickle", "not a prompt"), _evil_pickle),
    Case("prompt a PNG", [*PROMPT, "{d}/x.png"], ("{d}/x.png", "PNG image", "not a prompt"),
         _write("x.png", b"\x89PNG\r\n\x1a\n" + bytes(30))),
    Case("prompt classnames edited", [*PROMPT, "{d}/p.safetensors"], ("classnames_sha256", "{d}/p"), _copy_prompt(_swap_classes)),
    Case("prompt classnames field edited", [*PROMPT, "{d}/p.safetensors"], ("classnames_sha256", "{d}/p"),
         _copy_prompt(lambda meta, d: meta["classnames"].reverse())),
    Case("prompt config edited", [*PROMPT, "{d}/p.safetensors"], ("config_sha256", "{d}/p"),
         _copy_prompt(lambda meta, d: meta["method_config"].update(class_position="front"))),
    Case("prompt tensors changed", [*PROMPT, "{d}/p.safetensors"], ("do not match the hash", "{d}/p.safetensors"),
         _copy_prompt(tensors=lambda data: data[:-4] + bytes(4))),
    Case("prompt truncated", [*PROMPT, "{d}/p.safetensors"], ("{d}/p.safetensors", "truncated"),
         _copy_prompt(tensors=lambda data: data[: len(data) - 100])),
    Case("prompt json not JSON", [*PROMPT, "{d}/p.safetensors"], ("{d}/p.json", "not valid JSON"),
         lambda d, run: (_copy_prompt()(d, run), (d / "p.json").write_text("{"))),
    Case("prompt json no method", [*PROMPT, "{d}/p.safetensors"], ("{d}/p", "method"),
         _copy_prompt(lambda meta, d: meta.pop("method"))),
    Case("prompt other backbone", [*EVAL, "--dataset", "world_shapes", "--prompt", "{run}/prompt.safetensors"],
         ("trained on backbone", "vlprompt-tiny")),
    Case("predict image missing", ["predict", "--prompt", "{run}/prompt.safetensors", "--device", "cpu", "{d}/none.png"],
         ("{d}/none.png",)),
    Case("predict corrupt image", ["predict", "--prompt", "{run}/prompt.safetensors", "--device", "cpu", "{d}/f/a/0.png"],
         ("cannot decode image", "{d}/f/a/0.png"), _corrupt_png),
    Case("predict top-k 0", ["predict", "--prompt", "{run}/prompt.safetensors", "--top-k", "0", "{d}/x.png"],
         ("--top-k", ">= 1")),
    Case("predict device cuda, no GPU", ["predict", "--prompt", "{run}/prompt.safetensors", "--device", "cuda",
                                         "{pics}/test/cat/0.png"], ("no CUDA GPU",)),
    Case("predict evil.pt", ["predict", "--prompt", "{d}/evil.pt", "{pics}/test/cat/0.png"], ("{d}/evil.pt", "pickle"),
         _evil_pickle),
    Case("zoo info unknown", ["zoo", "info", "coop-shape"], ("coop-shape",)),
    Case("zoo export into a folder", ["zoo", "export", "{run}/prompt.safetensors", "--out", "{d}"], ("{d}", "is a directory")),
    Case("datasets check unknown", ["datasets", "check", "dtdd"], ("'dtdd'", "Did you mean 'dtd'")),
]

CASES = CONFIG_CASES + EVAL_CASES + PROMPT_CASES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line(case, env, trained, folder, tmp_path, capsys):
    d = tmp_path
    if case.setup:
        case.setup(d, trained)
    fill = {"d": d, "run": trained, "pics": folder}
    try:
        code, err, out = run_cli([a.format(**fill) for a in case.argv], capsys)
    except BaseException as error:  # noqa: BLE001  (recorded for the case table, then re-raised)
        _record(case.id, f"traceback ({type(error).__name__})")
        raise
    expect = [e.format(**fill) for e in case.expect]
    _record(case.id, _outcome(code, err, expect))
    try:
        one_error_line(code, err, *expect)
        assert not (env / "pwned").exists() and not (d / "pwned").exists()  # the pickle never ran
        assert not (env / "runs").exists()  # nothing written outside the run's folder
    finally:
        shutil.rmtree(env / "runs", ignore_errors=True)


def _outcome(code: int, err: str, expect: list[str]) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err:
        return "traceback"
    if code == 0:
        return "exit 0"
    if code == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "error line" if all(e in lines[0] for e in expect) else f"error line, vague: {lines[0][:150]}"
    return f"exit {code}, {len(lines)} lines: {' | '.join(lines)[:150]}"


def _record(case: str, outcome: str) -> None:
    """VLPROMPT_SUITE_TABLE=FILE: append `case<TAB>outcome` (how docs/reliability.md's table is made)."""
    table = os.environ.get("VLPROMPT_SUITE_TABLE")
    if table:
        with open(table, "a", encoding="utf-8") as out:
            out.write(f"{case}\t{outcome}\n")


# -- faults ---------------------------------------------------------------------------------------------


def _child(code: str, cwd: Path, **kwargs) -> subprocess.Popen:
    """A Python child running `code` with this process's environment (VLPROMPT_CACHE included)."""
    return subprocess.Popen([sys.executable, "-c", code], cwd=str(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


KILL_AFTER_EPOCH = """
import os, sys
from vlprompt.engine.trainer import Trainer
save = Trainer._save
def save_then_die(self, epoch, *args):
    save(self, epoch, *args)
    if epoch == {epoch}:
        os.kill(os.getpid(), {signal})  # kill -9 right after a checkpoint (or pause: a live run)
Trainer._save = save_then_die
from vlprompt.cli import main
sys.exit(main({argv!r}))
"""


def _stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def test_concurrent_run_refused_then_kill_9_and_resume_is_bit_exact(env, trained, tmp_path, capsys):
    """A run pauses (SIGSTOP) right after epoch 3 of 6: a second run on its folder is refused naming its
    pid, even with --overwrite. Then it is killed (SIGKILL): a plain rerun is refused (an unfinished
    run), `--resume` takes the dead run's lock over and gives the tensors of an uninterrupted run, bit
    for bit."""
    argv = [*TRAIN[:3], "protocol.shots=1", "train.epochs=6"]
    run = tmp_path / "run"
    child = _child(KILL_AFTER_EPOCH.format(epoch=3, signal=int(signal.SIGSTOP), argv=[*argv, f"output_dir={run}"]), env)
    try:
        deadline = time.time() + 240
        while not _stopped(child.pid) and child.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert _stopped(child.pid), child.poll()
        code, err, _ = run_cli([*argv, f"output_dir={run}"], capsys)
        one_error_line(code, err, f"in use by pid {child.pid}", str(run))
        code, err, _ = run_cli([*argv, f"output_dir={run}", "--overwrite"], capsys)
        one_error_line(code, err, f"in use by pid {child.pid}")
        assert (run / "last.pt").exists() and not (run / "experiment.json").exists()
    finally:
        child.kill()  # kill -9
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert (run / ".lock").exists() and not (run / "prompt.safetensors").exists()
    code, err, _ = run_cli([*argv, f"output_dir={run}"], capsys)  # not without --resume
    one_error_line(code, err, str(run), "unfinished run", "--resume")
    code, err, _ = run_cli([*argv, f"output_dir={run}", "--resume"], capsys)
    assert code == 0, err
    code, err, _ = run_cli([*argv, f"output_dir={tmp_path / 'whole'}"], capsys)
    assert code == 0, err
    resumed, whole = _tensors(run / "prompt.safetensors"), _tensors(tmp_path / "whole" / "prompt.safetensors")
    assert resumed.keys() == whole.keys() and all(resumed[k].equal(whole[k]) for k in whole)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert not (run / ".lock").exists()


KILL_DURING_CACHE_WRITE = """
import os, signal, sys, pathlib
write_bytes = pathlib.Path.write_bytes
def half_then_die(self, data):
    if self.name.startswith(".shard-") and self.name.endswith(".tmp"):  # a cache shard's temporary
        write_bytes(self, bytes(data)[:100])
        os.kill(os.getpid(), signal.SIGKILL)
    return write_bytes(self, data)
pathlib.Path.write_bytes = half_then_die
from vlprompt.cli import main
sys.exit(main({argv!r}))
"""


def test_kill_9_during_the_cache_build_then_a_clean_rebuild(env, tmp_path, capsys, monkeypatch):
    """The build is killed in the middle of writing a shard: the next run computes the features again,
    and the killed writer's temporary is swept once stale."""
    from vlprompt import paths

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "world-data").symlink_to((env / "cache" / "world-data").resolve())
    monkeypatch.setenv("VLPROMPT_CACHE", str(cache))
    argv = [*TRAIN[:3], "protocol.shots=1", "train.epochs=1"]
    child = _child(KILL_DURING_CACHE_WRITE.format(argv=[*argv, f"output_dir={tmp_path / 'a'}"]), tmp_path,
                   env={**os.environ, "VLPROMPT_CACHE": str(cache)})
    child.communicate(timeout=300)
    assert child.returncode == -signal.SIGKILL
    temps = list((cache / "features").rglob("*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size == 100  # a partly written shard
    old = time.time() - 2 * paths.STALE_TEMP_AGE
    os.utime(temps[0], (old, old))
    paths._swept_folders.clear()
    code, err, _ = run_cli([*argv, f"output_dir={tmp_path / 'b'}"], capsys)
    assert code == 0, err
    assert not temps[0].exists() and list(temps[0].parent.glob("shard-*.safetensors"))


@pytest.mark.parametrize("damage", ["zeros", "nan bytes", "header garbage"])
def test_damaged_cache_entries_are_rebuilt_and_reported(env, folder, tmp_path, damage, recwarn):
    """A cache shard overwritten with zeros or NaN bytes (or garbage) fails its checksum: it is removed,
    its entries recomputed (the same features as before), and a warning says so."""
    import torch

    from vlprompt.backbones import create_backbone
    from vlprompt.data.folder import read_image_folder
    from vlprompt.engine.cache import FeatureCache

    torch.manual_seed(0)
    backbone = create_backbone("vlprompt-test-vit")
    items = read_image_folder(folder).split("train")
    first = FeatureCache(tmp_path / "c", progress=False).get(backbone, items, backbone.eval_transform)
    (shard,) = (tmp_path / "c").rglob("*.safetensors")
    data = bytearray(shard.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    body = {"zeros": bytes(len(data) - header), "nan bytes": b"\xff" * (len(data) - header)}
    if damage == "header garbage":
        data[8:20] = b"not json!!!!"
    else:
        data[header:] = body[damage]
    shard.write_bytes(bytes(data))
    again = FeatureCache(tmp_path / "c", progress=False)
    second = again.get(backbone, items, backbone.eval_transform)
    assert torch.equal(first, second) and again.computed == len(items)
    assert any(f"feature cache shard {shard}" in str(w.message) for w in recwarn)
    assert FeatureCache(tmp_path / "c", progress=False).get(backbone, items, backbone.eval_transform).equal(first)



def test_cache_shards_are_checksummed_once_per_cache_object(folder, tmp_path, monkeypatch):
    """Reading a shard again (validation every epoch) does not hash it again; a shard changed on disk
    since its check (new mtime) is checked again, and a damaged one is still rebuilt."""
    import torch

    from vlprompt.backbones import create_backbone
    from vlprompt.data.folder import read_image_folder
    from vlprompt.engine import cache as cache_module

    torch.manual_seed(0)
    backbone = create_backbone("vlprompt-test-vit")
    items = read_image_folder(folder).split("train")
    first = cache_module.FeatureCache(tmp_path / "c", progress=False).get(backbone, items, backbone.eval_transform)
    hashed = []
    real = cache_module.features_sha256
    monkeypatch.setattr(cache_module, "features_sha256", lambda f: hashed.append(1) or real(f))
    cache = cache_module.FeatureCache(tmp_path / "c", progress=False)
    for _ in range(3):
        assert cache.get(backbone, items, backbone.eval_transform).equal(first)
    assert len(hashed) == 1 and cache.computed == 0
    (shard,) = (tmp_path / "c").rglob("*.safetensors")
    data = bytearray(shard.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    shard.write_bytes(bytes(data[:header]) + bytes(len(data) - header))  # same size, zeroed features
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    with pytest.warns(UserWarning, match="fails its checksum"):
        assert cache.get(backbone, items, backbone.eval_transform).equal(first)
    assert cache.rebuilt == len(items)

DISK_FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from vlprompt.cli import main
sys.exit(main({argv!r}))
"""


def test_disk_full_during_a_checkpoint_write_is_one_error_line(env, trained, tmp_path):
    """A file-size limit stands for a full disk: the checkpoint (about 24 KB) cannot be written."""
    out = tmp_path / "run"
    argv = [*TRAIN[:3], "protocol.shots=1", "train.epochs=2", "train.progress=false", f"output_dir={out}"]
    child = _child(DISK_FULL.format(limit=16 * 1024, argv=argv), env)
    _, err = child.communicate(timeout=300)
    one_error_line(child.returncode, err, f"cannot write {out / 'last.pt'}", "File too large")
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp")) and not (out / "last.pt").exists()


def test_json_target_symlink_and_fifo(env, folder, tmp_path, capsys):
    """--json through a symlink writes the file it names (the link stays); into a FIFO, writes through it."""
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "real" / "r.json")
    code, err, _ = run_cli([*EVAL, "--dataset", f"folder:{folder}", "--json", str(link)], capsys)
    assert code == 0, err
    assert link.is_symlink() and json.loads((tmp_path / "real" / "r.json").read_text())[0]["dataset"]
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    code, err, _ = run_cli([*EVAL, "--dataset", f"folder:{folder}", "--json", str(fifo)], capsys)
    reader.join(timeout=60)
    assert code == 0, err
    assert json.loads(received[0])[0]["dataset"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_read_only_output_folder_is_one_error_line_before_any_work(env, folder, tmp_path):
    """As root permissions do not apply: the command then runs as user nobody (skipped if it cannot)."""
    import tempfile

    from test_faults import _as_nobody

    base = Path(tempfile.mkdtemp(prefix="vlprompt-ro-"))
    try:
        (base / "ro").mkdir()
        (base / "cache").mkdir()
        os.chmod(base / "ro", 0o555)
        os.chmod(base, 0o777)
        os.chmod(base / "cache", 0o777)
        run = {"python": sys.executable, "cwd": str(tmp_path), "env": dict(os.environ)}
        if os.geteuid() == 0:
            run = _as_nobody(base)
            if run is None or subprocess.run([run["python"], "-c", "import torch, vlprompt.cli"], capture_output=True,
                                             user=65534, group=65534, env=run["env"], cwd="/", timeout=300).returncode:
                pytest.skip("running as root and no Python with torch that user nobody can run")
        python = run.pop("python")
        run["env"] = {**run["env"], "VLPROMPT_CACHE": str(base / "cache"), "OMP_NUM_THREADS": "1"}
        pics = base / "pics"
        shutil.copytree(folder, pics)
        os.chmod(base, 0o777)
        for path in pics.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.chmod(pics, 0o755)
        done = subprocess.run([python, "-m", "vlprompt", *EVAL, "--dataset", f"folder:{pics}", "--json",
                               str(base / "ro" / "r.json")], capture_output=True, text=True, timeout=300, **run)
        one_error_line(done.returncode, done.stderr, f"cannot write {base / 'ro' / 'r.json'}", "Permission denied")
    finally:
        os.chmod(base / "ro", 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_read_only_json_folder_in_process(env, folder, tmp_path, capsys, monkeypatch):
    """The same through `main`, with the folder refusing writes as a read-only file system does (EROFS):
    one error line naming the file, before any work (nothing is evaluated and then lost)."""
    import errno
    import tempfile

    target = tmp_path / "ro" / "r.json"
    target.parent.mkdir()
    mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == target.parent:
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    code, err, out = run_cli([*EVAL, "--dataset", f"folder:{folder}", "--json", str(target)], capsys)
    one_error_line(code, err, f"cannot write {target}: Read-only file system")
    assert out == ""  # refused before the evaluation


def test_one_folder_per_run_even_when_named_train_output_dir(env, trained, tmp_path, capsys):
    """train.output_dir used to move only the trainer's files (the prompt, experiment.json and split files
    went to runs/...): it names the run's one folder now, and the run's lock is gone when it ends."""
    code, err, _ = run_cli([*TRAIN, f"train.output_dir={tmp_path / 'x'}"], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert names == ["README.md", "experiment.json", "last.pt", "metrics.jsonl", "out.log", "prompt.json",
                     "prompt.safetensors", "result.json", "splits"]  # README.md: the prompt's model card
    assert json.loads((tmp_path / "x" / "experiment.json").read_text())["output_dir"] == str(tmp_path / "x")
    assert not (env / "runs").exists()


def test_long_distinct_class_names_are_warned_about_once(env, tmp_path, capsys):
    """Cut to the context but still different: evaluated, with one `warning:` line saying so."""
    rows = ["path,label,classname"]
    for c in range(2):
        _png(tmp_path / f"{c}.png", c)
        rows.append(f"{c}.png,{c},{'cat' if c else 'dog'} {' '.join(['striped'] * 80)}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(UserWarning, match=r"^2 class name\(s\) make prompts longer than the text tower's") as caught:
        code, err, out = run_cli([*EVAL, "--dataset", f"csv:{tmp_path / 'data.csv'}"], capsys)
    assert code == 0 and "error" not in err, err
    assert len(caught) == 1
    assert _one_line_warning(caught[0].message, UserWarning, "f.py", 1) == f"warning: {caught[0].message}\n"


def test_edited_split_file_beside_a_prompt_is_warned_about(env, trained, tmp_path):
    """split_file_sha256 is checked too: the split no longer being the one trained on is said (a warning,
    since the predictions do not depend on it)."""
    from vlprompt.zoo import load_prompt

    shutil.copytree(trained, tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_prompt(tmp_path / "run" / "prompt.safetensors")  # as saved: no warning
    (split,) = (tmp_path / "run" / "splits").rglob("*.train.json")
    split.write_text(split.read_text().replace("1", "2", 1))
    with pytest.warns(UserWarning, match=r"does not match the recorded split_file_sha256"):
        load_prompt(tmp_path / "run" / "prompt.safetensors")


def test_unusable_cache_folder_is_one_error_line(env, folder, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "file"))
    code, err, _ = run_cli([*TRAIN, f"output_dir={tmp_path / 'run'}"], capsys)
    one_error_line(code, err, f"cannot use the cache folder {tmp_path / 'file'}", "VLPROMPT_CACHE")


def test_too_long_a_prompt_counts_the_tokens_before_truncation(tiny_vit):
    from vlprompt.errors import VLPromptError
    from vlprompt.prompts.assembler import PromptAssembler

    length = tiny_vit.tokenize([""]).shape[1]
    name = " ".join(["dog"] * (2 * length))  # "dog" is one token
    with pytest.raises(VLPromptError, match=rf"is {1 + 4 + 2 * length + 1 + 1} tokens with its learned slots; "
                                            rf"the text tower takes {length}"):
        PromptAssembler(tiny_vit, "{ctx} {class}.", {"class": [name]}, {"ctx": 4})


def test_new_files_follow_the_umask(env, trained):
    """Prompt tensors (safetensors recreates its file 0600), JSON and checkpoints: one mode, the umask's."""
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in trained.iterdir() if p.is_file() and p.name != ".lock"}
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}, modes
