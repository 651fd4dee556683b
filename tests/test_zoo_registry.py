"""The zoo registry: format checks, bundled entries, names in load_prompt, the `vlprompt zoo` commands, push."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vlprompt.cli import main
from vlprompt.errors import VLPromptError
from vlprompt.methods import build_method
from vlprompt.zoo import add_bundled_entry, fetch, load_prompt, load_registry, save_prompt
from vlprompt.zoo.checkpoint import file_sha256, read_prompt_meta
from vlprompt.zoo.hub import push_prompt
from vlprompt.zoo.registry import REGISTRY_FILE, ZooEntry, local_source_path, parse_hf_source, read_registry_file

CLASSES = ["red circle", "blue square", "green triangle"]


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    for name in ("VLPROMPT_OFFLINE", "HF_HUB_OFFLINE", "VLPROMPT_ZOO"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def zoo(env, tiny_vit, tmp_path):
    """A private registry with one bundled CoOp prompt, listed through $VLPROMPT_ZOO."""
    torch.manual_seed(5)
    method = build_method("coop", tiny_vit, CLASSES, {"n_ctx": 4})
    save_prompt(tmp_path / "run" / "prompt", method, training={"dataset": "world_shapes", "shots": 4}, metrics={"top1": 60.0})
    registry = tmp_path / "zoo" / "registry.json"
    entry = add_bundled_entry(tmp_path / "run" / "prompt", "coop-shapes", description="test prompt",
                              registry_path=registry, bundled_dir=tmp_path / "zoo" / "bundled")
    env.setenv("VLPROMPT_ZOO", str(registry))
    return SimpleNamespace(method=method, registry=registry, entry=entry, root=tmp_path)


def test_shipped_registry_is_valid_and_its_bundled_files_verify():
    for entry in read_registry_file(REGISTRY_FILE):
        assert entry.sources, entry.name
        for source in entry.sources:
            if source.startswith("package:"):
                path = local_source_path(source, entry)
                assert path.is_file() and file_sha256(path) == entry.sha256 and path.stat().st_size == entry.size


def test_add_bundled_entry_writes_file_hash_size_and_metadata(zoo):
    data = json.loads(zoo.registry.read_text())
    (raw,) = data["entries"]
    bundled = zoo.root / "zoo" / "bundled" / "coop-shapes.safetensors"
    assert raw["sources"] == ["file:bundled/coop-shapes.safetensors"]
    assert raw["sha256"] == file_sha256(bundled) and raw["size"] == bundled.stat().st_size
    assert raw["method"] == "coop" and raw["backbone"]["name"] == "vlprompt-test-vit" and raw["num_classes"] == 3
    assert raw["training"]["dataset"] == "world_shapes" and raw["metrics"] == {"top1": 60.0}
    assert read_prompt_meta(bundled)["classnames"] == CLASSES  # self-contained: config in the header
    with pytest.raises(VLPromptError, match="already has an entry 'coop-shapes'"):
        add_bundled_entry(zoo.root / "run" / "prompt", "coop-shapes", registry_path=zoo.registry)


def test_bundled_inside_the_package_gets_a_package_source(tiny_vit, tmp_path, env):
    import vlprompt

    save_prompt(tmp_path / "p", build_method("coop", tiny_vit, CLASSES, {"n_ctx": 2}))
    bundled = Path(vlprompt.__file__).parent / "zoo" / "bundled"
    target = bundled / "pytest-temporary-entry.safetensors"
    try:
        entry = add_bundled_entry(
            tmp_path / "p", "pytest-temporary-entry", registry_path=tmp_path / "r.json", bundled_dir=bundled
        )
        assert entry.sources == ("package:vlprompt/zoo/bundled/pytest-temporary-entry.safetensors",)
        assert fetch(entry).resolve() == target.resolve()
    finally:
        target.unlink(missing_ok=True)


def test_load_prompt_by_zoo_name(zoo, tiny_vit):
    loaded = load_prompt("coop-shapes", backbone=tiny_vit)
    assert torch.equal(loaded.ctx, zoo.method.ctx) and loaded.classnames == CLASSES


def test_bundled_entries_work_offline_and_bad_bytes_are_refused(zoo, env):
    env.setenv("VLPROMPT_OFFLINE", "1")
    assert fetch("coop-shapes").name == "coop-shapes.safetensors"
    bundled = zoo.root / "zoo" / "bundled" / "coop-shapes.safetensors"
    bundled.write_bytes(bundled.read_bytes()[:-1] + b"!")
    with pytest.raises(VLPromptError, match="offline mode .*sha256 mismatch"):
        fetch("coop-shapes")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"name": "x", "sha256": "0" * 64}, "has no 'source'"),
        ({"name": "x", "source": "ftp://a/b", "sha256": "0" * 64}, "must start with one of"),
        ({"name": "x", "source": "https://a/b", "sha256": "abc"}, "needs 'sha256'"),
        ({"name": "bad name", "source": "https://a/b", "sha256": "0" * 64}, "entry name 'bad name'"),
    ],
)
def test_malformed_entries_fail_clearly(values, message):
    with pytest.raises(VLPromptError, match=message):
        ZooEntry.from_dict(values)


def test_later_registry_files_replace_entries_and_duplicates_fail(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    entry = {"name": "a", "source": "https://example.org/a", "sha256": "0" * 64}
    one.write_text(json.dumps({"format_version": 1, "entries": [entry]}))
    two.write_text(json.dumps({"format_version": 1, "entries": [{**entry, "sha256": "1" * 64}]}))
    assert load_registry([one, two])["a"].sha256 == "1" * 64
    two.write_text(json.dumps({"format_version": 1, "entries": [entry, entry]}))
    with pytest.raises(VLPromptError, match="listed twice"):
        load_registry([two])


def test_hf_source_parsing_and_offline_failure(env, tmp_path):
    assert parse_hf_source("hf://me/repo/dir/f.safetensors@abc") == ("me/repo", "dir/f.safetensors", "abc")
    env.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    env.setenv("VLPROMPT_OFFLINE", "1")
    entry = ZooEntry.from_dict({"name": "h", "source": "hf://me/repo/f.safetensors", "sha256": "0" * 64})
    with pytest.raises(VLPromptError, match="offline mode .*zoo entry 'h' is not in the cache"):
        fetch(entry)


def test_cli_list_info_verify_download(zoo, capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "coop-shapes" in out and "vlprompt-test-vit/random" in out and "world_shapes" in out
    assert main(["zoo", "info", "coop-shapes"]) == 0
    assert json.loads(capsys.readouterr().out)["sha256"] == zoo.entry.sha256
    assert main(["zoo", "verify", "coop-shapes"]) == 0 and "coop-shapes: ok" in capsys.readouterr().out
    assert main(["zoo", "download", "coop-shapes"]) == 0 and "coop-shapes.safetensors" in capsys.readouterr().out
    assert main(["zoo", "info", "coop-shape"]) == 2
    assert "Did you mean 'coop-shapes'" in capsys.readouterr().err


def test_cli_verify_reports_a_mismatch(zoo, capsys):
    bundled = zoo.root / "zoo" / "bundled" / "coop-shapes.safetensors"
    bundled.write_bytes(b"x" + bundled.read_bytes()[1:])
    assert main(["zoo", "verify"]) == 2
    captured = capsys.readouterr()
    assert "coop-shapes: mismatch" in captured.out and "verification failed: coop-shapes" in captured.err


def test_cli_add_and_export(env, tiny_vit, tmp_path, capsys):
    save_prompt(tmp_path / "p", build_method("coop", tiny_vit, CLASSES, {"n_ctx": 2}))
    registry = tmp_path / "z" / "registry.json"
    assert main(["zoo", "add", str(tmp_path / "p.safetensors"), "--name", "mine", "--registry", str(registry),
                 "--source", "https://example.org/mine.safetensors"]) == 0
    (entry,) = read_registry_file(registry)
    assert entry.sources == ("file:bundled/mine.safetensors", "https://example.org/mine.safetensors")
    env.setenv("VLPROMPT_ZOO", str(registry))
    assert main(["zoo", "export", "mine", "--out", str(tmp_path / "clf.pt"), "--classes", "a,b"]) == 0
    assert torch.load(tmp_path / "clf.pt").shape == (32, 2)


class _FakeHub:
    """Stands in for huggingface_hub.HfApi: keeps what would be uploaded."""

    def __init__(self, root: Path) -> None:
        self.root, self.calls = root, []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, self.root / repo_id)
        return SimpleNamespace(oid="c0ffee", commit_url=f"https://huggingface.co/{repo_id}/commit/c0ffee")


def test_push_uploads_hub_layout_and_returns_a_registry_entry(zoo, tiny_vit, tmp_path):
    hub = _FakeHub(tmp_path / "hub")
    entry = push_prompt("coop-shapes", "me/coop-shapes", api=hub)
    repo = tmp_path / "hub" / "me" / "coop-shapes"
    assert sorted(p.name for p in repo.iterdir()) == ["README.md", "vlprompt_config.json", "vlprompt_model.safetensors"]
    assert "library_name: vlprompt" in (repo / "README.md").read_text()
    assert entry["sources"] == ["hf://me/coop-shapes/vlprompt_model.safetensors@c0ffee"]
    assert entry["sha256"] == file_sha256(repo / "vlprompt_model.safetensors")
    ZooEntry.from_dict(entry)  # valid as it stands
    assert torch.equal(load_prompt(repo, tiny_vit).ctx, zoo.method.ctx)  # a clone of the repo loads


def test_push_failure_is_one_clear_line(zoo):
    class Broken(_FakeHub):
        def create_repo(self, repo_id, **kwargs):
            raise RuntimeError("401 Unauthorized\nmore detail")

    with pytest.raises(VLPromptError, match=r"push to me/x failed: RuntimeError: 401 Unauthorized$"):
        push_prompt("coop-shapes", "me/x", api=Broken(Path("/nonexistent")))
