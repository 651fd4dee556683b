"""Injected faults: corrupt images, unusual write targets, a full disk, cut webdataset shards.

Each must end in one clear line naming the file (exit code 2 from the CLI), never a crash, a
traceback, a replaced device node or a partial evaluation.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlprompt.errors import VLPromptError

SIDE = 32  # vlprompt-test-vit's input size: PNGs of this size take the libpng fast path in eval
EVAL = ["eval", "--backbone", "vlprompt-test-vit", "--pretrained", "none", "--device", "cpu", "--batch-size", "4"]


def _png_bytes(seed: int, side: int = SIDE) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _chunks(data: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, length, name) of each chunk."""
    out, pos = [], 8
    while pos < len(data):
        length, name = struct.unpack_from(">I4s", data, pos)
        out.append((pos, length, name))
        pos += 12 + length
    return out


def _with_idat(data: bytes, payload: bytes) -> bytes:
    """`data` with its IDAT data replaced by `payload` (and a correct CRC)."""
    (pos, length, _), = [c for c in _chunks(data) if c[2] == b"IDAT"]
    chunk = struct.pack(">I", len(payload)) + b"IDAT" + payload
    return data[:pos] + chunk + struct.pack(">I", zlib.crc32(chunk[4:])) + data[pos + 12 + length:]


def _flip_idat_byte(data: bytes) -> bytes:
    """One byte of the pixel data flipped, the CRC left as it was (what a bad disk or transfer does)."""
    (pos, length, _), = [c for c in _chunks(data) if c[2] == b"IDAT"]
    out = bytearray(data)
    out[pos + 8 + length // 2] ^= 0xFF
    return bytes(out)


def _raw(data: bytes) -> bytearray:
    (pos, length, _), = [c for c in _chunks(data) if c[2] == b"IDAT"]
    return bytearray(zlib.decompress(data[pos + 8:pos + 8 + length]))


CORRUPT = {
    "flipped IDAT byte": _flip_idat_byte,
    "truncated": lambda data: data[: len(data) // 2],
    "zero bytes": lambda data: b"",
}


def _folder(root: Path, corrupt: str | None = None) -> tuple[Path, Path]:
    """folder:<root> with two classes of SIDE-pixel PNGs; returns (root, the corrupted file)."""
    for c, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            (root / name / f"{i}.png").write_bytes(_png_bytes(10 * c + i))
    bad = root / "a" / "0.png"
    if corrupt:
        bad.write_bytes(CORRUPT[corrupt](bad.read_bytes()))
    return root, bad


def _cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLPROMPT_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "vlprompt", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


# -- 1. corrupt PNGs on the libpng fast path ---------------------------------------------------------


def test_png_fast_path_gives_what_pil_gives_on_sound_and_corrupt_files(tmp_path):
    """The fast path decodes plain PNGs with PIL's own decoder: a corrupt file is a Python error there
    (never a crash, as libpng's decode_png was), and the fast path then returns None so the PIL path
    names the file. On every file, the fast path's pixels, if any, are PIL's."""
    import torch

    from vlprompt.data.images import ImageDecodeError, decode_plain_png, load_image

    good = _png_bytes(0)
    (pos, length, _), = [c for c in _chunks(good) if c[2] == b"IDAT"]
    bad_filter = _raw(good)
    bad_filter[(3 * SIDE + 1) * 5] = 9  # row 5's filter type (libpng: "bad adaptive filter value")
    idat_crc = bytearray(good)
    idat_crc[pos + 8 + length] ^= 1
    ihdr_crc = bytearray(good)
    ihdr_crc[29] ^= 1
    text = struct.pack(">I", 5) + b"tEXt" + b"a\0bcd"
    tagged = good[:33] + text + struct.pack(">I", zlib.crc32(text[4:])) + good[33:]
    split = _raw(good)
    stream = zlib.compress(bytes(split))
    halves = [stream[: len(stream) // 2], stream[len(stream) // 2:]]
    two_idats = good[:33] + b"".join(
        struct.pack(">I", len(h)) + b"IDAT" + h + struct.pack(">I", zlib.crc32(b"IDAT" + h)) for h in halves
    ) + good[pos + 12 + length:]
    files = {
        "sound": (good, "pixels"),
        "text chunk": (tagged, "pixels"),
        "two IDAT chunks": (two_idats, "pixels"),
        "flipped byte, CRC as it was": (_flip_idat_byte(good), "error"),
        "flipped byte, CRC fixed (adler32)": (_with_idat(good, _flip_idat_byte(good)[pos + 8:pos + 8 + length]), "error"),
        "bad filter type": (_with_idat(good, zlib.compress(bytes(bad_filter))), "error"),
        "too little data": (_with_idat(good, zlib.compress(bytes(_raw(good)[:-10]))), "error"),
        "IHDR CRC": (bytes(ihdr_crc), "error"),
        "truncated": (good[: len(good) // 2], "error"),
        "zero bytes": (b"", "error"),
        "IDAT CRC (PIL does not check it)": (bytes(idat_crc), None),
        "no IEND (PIL stops after the pixels)": (good[:-12], None),
    }
    for name, (data, expect) in files.items():
        path = tmp_path / "x.png"
        path.write_bytes(data)
        fast = decode_plain_png(path, (SIDE, SIDE))
        try:
            reference = torch.from_numpy(np.array(load_image(path))).permute(2, 0, 1)
        except ImageDecodeError:
            assert expect == "error" and fast is None, name
            continue
        assert expect != "error", name
        assert fast is None or torch.equal(fast, reference), name
        if expect == "pixels":
            assert fast is not None, name


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_on_a_png_with_a_flipped_idat_byte_is_one_error_line(tmp_path, workers):
    """It used to segfault (libpng "IDAT: incorrect data check"); with workers, a dead worker."""
    root, bad = _folder(tmp_path / "d", "flipped IDAT byte")
    done = _cli([*EVAL, "--dataset", f"folder:{root}", "--workers", str(workers)], tmp_path)
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert str(bad) in line and "cannot decode image" in line


@pytest.mark.parametrize("corrupt", ["truncated", "zero bytes"])
def test_eval_on_a_truncated_or_empty_png_is_one_error_line(tmp_path, capsys, monkeypatch, corrupt):
    from vlprompt.cli import main

    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    root, bad = _folder(tmp_path / "d", corrupt)
    assert main([*EVAL, "--dataset", f"folder:{root}"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert str(bad) in line and "cannot decode image" in line


def test_image_and_shard_errors_from_a_worker_process_keep_their_one_line():
    """torch rebuilds a worker's exception from its formatted traceback; the message stays one line."""
    from torch.utils.data import DataLoader, Dataset

    from vlprompt.data.images import ImageDecodeError
    from vlprompt.data.webdataset_reader import WdsError

    class Failing(Dataset):
        def __init__(self, error):
            self.error = error

        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise self.error

    for error in (ImageDecodeError("cannot decode image /x/y.png: broken data stream"),
                  WdsError("webdataset shard /x/0.tar is truncated: it ends after 512 bytes")):
        with pytest.raises(type(error)) as caught:
            list(DataLoader(Failing(error), num_workers=1))
        assert str(caught.value) == str(error)


# -- 2. atomic writes ---------------------------------------------------------------------------------


def test_atomic_write_to_a_fifo_writes_through_it(tmp_path):
    from vlprompt.engine.logging import write_json

    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    write_json(fifo, {"acc": 1.0})
    reader.join(timeout=30)
    assert json.loads(received[0]) == {"acc": 1.0}
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not a regular file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.fifo"]


def test_atomic_write_through_a_symlink_keeps_the_link(tmp_path):
    from vlprompt.engine.logging import write_json

    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(Path("data") / "real.json")  # relative, as ln -s makes them
    write_json(link, {"new": True})
    assert link.is_symlink() and os.readlink(link) == str(Path("data") / "real.json")
    assert json.loads(target.read_text()) == {"new": True}
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "data" / "later.json")
    write_json(dangling, [1])
    assert dangling.is_symlink() and json.loads((tmp_path / "data" / "later.json").read_text()) == [1]
    assert not list(tmp_path.rglob("*.tmp"))


def test_atomic_write_refuses_a_directory_and_leaves_nothing_on_failure(tmp_path):
    from vlprompt.paths import atomic_path

    (tmp_path / "out").mkdir()
    with pytest.raises(VLPromptError, match=r"cannot write .*out: it is a directory"):
        with atomic_path(tmp_path / "out"):
            pass
    final = tmp_path / "r.json"
    final.write_text("kept")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(final) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert final.read_text() == "kept" and sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.json"]
    # an OSError about another file is not taken for a failure to write this one
    with pytest.raises(PermissionError, match="other") as caught:
        with atomic_path(final):
            raise PermissionError(13, "Permission denied", str(tmp_path / "other"))
    assert not isinstance(caught.value, VLPromptError)


def test_atomically_written_files_get_the_mode_a_plain_write_would(tmp_path):
    from vlprompt.paths import atomic_path, current_umask

    old = os.umask(0o022)
    try:
        assert current_umask() == 0o022
        with atomic_path(tmp_path / "new.json") as tmp:
            tmp.write_text("{}")
        assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o644  # not mkstemp's 0600
        os.umask(0o077)
        with atomic_path(tmp_path / "private.json") as tmp:
            tmp.write_text("{}")
        assert stat.S_IMODE(os.stat(tmp_path / "private.json").st_mode) == 0o600
        os.chmod(tmp_path / "new.json", 0o640)  # an existing file keeps its mode, as with open("w")
        with atomic_path(tmp_path / "new.json") as tmp:
            tmp.write_text("[]")
        assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o640
    finally:
        os.umask(old)


def test_stale_temporaries_of_killed_writers_are_cleaned(tmp_path):
    from vlprompt import paths

    old = time.time() - 2 * paths.STALE_TEMP_AGE
    stale = tmp_path / ".ckpt.pt.k3j_9x0a.tmp"  # the name atomic_path's mkstemp gives
    fresh = tmp_path / ".ckpt.pt.a1b2c3d4.tmp"  # a live writer's
    other = tmp_path / "notes.tmp"  # not ours
    for path in (stale, fresh, other):
        path.write_text("x")
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert paths.clean_stale_temps(tmp_path) == [stale]
    assert fresh.exists() and other.exists()
    os.utime(fresh, (old, old))
    with paths.atomic_path(tmp_path / "r.json") as tmp:  # the first atomic write to a folder sweeps it
        tmp.write_text("{}")
    assert not fresh.exists() and other.exists()


def _run_child(code: str, tmp_path: Path, **kwargs) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path), **kwargs)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


WRITE_CHILD = """
    import json, os, resource, signal, sys
    from vlprompt.errors import VLPromptError
    from vlprompt.engine.logging import write_json
    {setup}
    target = sys.argv[1] if len(sys.argv) > 1 else {target!r}
    try:
        write_json(target, {{"values": list(range(100000))}})
        print(json.dumps({{"error": None}}))
    except VLPromptError as error:
        print(json.dumps({{"error": str(error)}}))
"""


def test_disk_full_is_one_error_line_naming_the_file(tmp_path):
    """A file size limit stands for a full disk (EFBIG is reported as ENOSPC is); SIGXFSZ is ignored so
    that the write fails instead of killing the process."""
    target = tmp_path / "results.json"
    target.write_text('"previous"')
    setup = "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))"
    out = _run_child(WRITE_CHILD.format(setup=setup, target=str(target)), tmp_path)
    assert out["error"] is not None and out["error"].startswith(f"cannot write {target}: ")
    assert "\n" not in out["error"] and "File too large" in out["error"]
    assert target.read_text() == '"previous"'  # the old file is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # and no temporary is left


ATOMIC_CHILD = """
    import json, sys
    from vlprompt.errors import VLPromptError
    from vlprompt.paths import atomic_path
    try:
        with atomic_path(sys.argv[1]) as tmp:
            tmp.write_text("{}")
        print(json.dumps({"error": None}))
    except VLPromptError as error:
        print(json.dumps({"error": str(error)}))
"""


def _as_nobody(folder: Path, probe_import: str = "vlprompt.paths") -> dict | None:
    """subprocess arguments that run a Python able to import `probe_import` as user nobody; None if none can."""
    import shutil

    import vlprompt

    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(folder), "PYTHONPATH": str(Path(vlprompt.__file__).parents[1])}
    for python in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if not python:
            continue
        try:
            probe = subprocess.run([python, "-c", f"import {probe_import}"], capture_output=True, user=65534, group=65534,
                                   env=env, cwd="/", timeout=120)
        except OSError:  # the interpreter lives where nobody cannot go (/root/.pyenv)
            continue
        if probe.returncode == 0:
            return {"python": python, "user": 65534, "group": 65534, "env": env, "cwd": "/"}
    return None


def test_read_only_folder_is_one_error_line(tmp_path):
    """root ignores permissions: as root the write runs in a child process as user nobody."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="vlprompt-ro-"))  # not under tmp_path, which nobody cannot enter
    try:
        target = folder / "sub" / "results.json"
        (folder / "sub").mkdir()
        os.chmod(folder / "sub", 0o555)
        os.chmod(folder, 0o755)
        run = {"python": sys.executable, "cwd": str(tmp_path)}
        if os.geteuid() == 0:
            run = _as_nobody(folder)
            if run is None:
                pytest.skip("running as root (permissions ignored) and no Python that user nobody can run")
        python = run.pop("python")
        done = subprocess.run([python, "-c", textwrap.dedent(ATOMIC_CHILD), str(target)], capture_output=True,
                              text=True, timeout=300, **run)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["error"] == f"cannot write {target}: Permission denied"
        assert not list((folder / "sub").iterdir())
    finally:
        os.chmod(folder / "sub", 0o755)
        for path in sorted(folder.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        folder.rmdir()


# -- 3. webdataset shards -------------------------------------------------------------------------------


def _wds(root: Path) -> Path:
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("cat\ndog\n")
    for shard in range(2):
        with tarfile.open(root / "test" / f"{shard}.tar", "w") as tar:
            for i in range(3):
                for ext, data in (("cls", str(i % 2).encode()), ("png", _png_bytes(10 * shard + i, 8))):
                    info = tarfile.TarInfo(f"s{shard}{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (root / "test" / "nshards.txt").write_text("2\n")
    return root


def _cut(shard: Path, how: str) -> None:
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    last = members[-1]
    cuts = {
        "inside a member": data[: last.offset_data + 10],
        "at a member boundary": data[: last.offset],  # tarfile reads this as a shorter, valid archive
        "damaged header": data[: last.offset + 20] + bytes([data[last.offset + 20] ^ 1]) + data[last.offset + 21:],
        "zeroed header": data[: members[2].offset] + bytes(512) + data[members[2].offset + 512:],
    }
    shard.write_bytes(cuts[how])


@pytest.mark.parametrize("how", ["inside a member", "at a member boundary", "damaged header", "zeroed header"])
def test_eval_on_a_cut_shard_is_one_error_line_naming_it(tmp_path, capsys, monkeypatch, how):
    from vlprompt.cli import main

    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    root = _wds(tmp_path / "w")
    shard = root / "test" / "1.tar"
    _cut(shard, how)
    assert main([*EVAL, "--dataset", f"wds:{root}"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"webdataset shard {shard} " in line


def test_sound_tars_of_every_format_pass_the_shard_check(tmp_path):
    from vlprompt.data.webdataset_reader import WdsClassification, read_wds_info, tar_problem

    root = _wds(tmp_path / "w")
    shard = root / "test" / "1.tar"
    assert tar_problem(shard) is None
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        with tarfile.open(shard, "w", format=fmt) as tar:
            folder = tarfile.TarInfo("d")
            folder.type = tarfile.DIRTYPE
            tar.addfile(folder)
            long = "d/" + ("x" * 120 if fmt != tarfile.USTAR_FORMAT else "x")
            for ext, data in (("cls", b"1"), ("png", _png_bytes(3, 8))):
                info = tarfile.TarInfo(f"{long}.{ext}")
                info.size = len(data)
                info.pax_headers = {"comment": "café"} if fmt == tarfile.PAX_FORMAT else {}
                tar.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("d/link")
            link.type, link.linkname = tarfile.SYMTYPE, "x"
            tar.addfile(link)
        assert tar_problem(shard) is None, fmt
        samples = list(WdsClassification(read_wds_info(root), "test", transform=lambda image: image.size))
        assert len(samples) == 4
    with tarfile.open(shard) as tar:
        tar.getmembers()
        end = tar.offset  # where the end-of-archive blocks start
    shard.write_bytes(shard.read_bytes()[: end + 512])  # a lone end-of-archive block, all members intact: fine
    assert tar_problem(shard) is None
    shard.write_bytes(b"")
    assert tar_problem(shard) == "is empty (0 bytes)"
