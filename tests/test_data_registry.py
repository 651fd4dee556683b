"""Dataset registry: YAML-driven registration, its errors, and the built-in configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vlprompt.data import configs as configs_module
from vlprompt.data import load_dataset
from vlprompt.data import registry as registry_module
from vlprompt.data.configs import BUILTIN_CONFIG_DIR, read_dataset_config
from vlprompt.data.registry import DATASETS, dataset_names, get_dataset_config, register_dataset_configs
from vlprompt.errors import VLPromptError
from vlprompt.prompts.templates import COOP_TEMPLATES

WORLD = ("world_shapes", "world_textures", "world_colored_shapes")
COOP = (
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)


def test_builtin_configs_registered_with_coop_templates():
    names = dataset_names()
    assert set(WORLD + COOP) <= set(names)
    for name in COOP:
        assert get_dataset_config(name).template == COOP_TEMPLATES[name]
    assert get_dataset_config("oxford_pets").split_file == "split_zhou_OxfordPets.json"
    assert get_dataset_config("caltech101").folder == "caltech-101"
    assert get_dataset_config("caltech101").image_dir == "101_ObjectCategories"
    assert get_dataset_config("world_shapes").split_file == "split_world_shapes.json"


def test_world_dataset_loads_from_coop_layout(tmp_path):
    folder = tmp_path / "world_shapes"
    (folder / "images" / "circle").mkdir(parents=True)
    (folder / "images" / "circle" / "0.png").write_bytes(b"")
    (folder / "split_world_shapes.json").write_text(json.dumps({"test": [["circle/0.png", 0, "circle"]]}))
    ds = load_dataset("world_shapes", tmp_path, verify=True)
    assert ds.name == "world_shapes" and ds.classnames == ["circle"] and ds.template == "a photo of a {}."


def test_load_errors_are_one_clear_line(tmp_path):
    with pytest.raises(VLPromptError, match=r"unknown dataset 'oxford_pet'\. Did you mean 'oxford_pets'"):
        load_dataset("oxford_pet", tmp_path)
    with pytest.raises(
        VLPromptError,
        match=r"dataset 'world_shapes' not found: folder .*world_shapes does not exist\. To prepare it: .*write_world_datasets",
    ):
        load_dataset("world_shapes", tmp_path)
    with pytest.raises(VLPromptError, match=r"dataset 'oxford_pets': split file not found: .*split_zhou_OxfordPets.json"):
        (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
        load_dataset("oxford_pets", tmp_path)


def test_folder_prefix(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "x.png").write_bytes(b"")
    assert load_dataset(f"folder:{tmp_path}").classnames == ["cls"]


def write_yaml(path, **data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_unknown_key_names_key_and_valid_keys(tmp_path):
    path = write_yaml(tmp_path / "mine.yaml", name="mine", format="coop_split", template="{}", split_fle="s.json")
    with pytest.raises(VLPromptError) as error:
        read_dataset_config(path)
    message = str(error.value)
    assert "mine.yaml: unknown key 'split_fle'" in message and "split_file" in message and "\n" not in message


@pytest.mark.parametrize(
    "data, message",
    [
        ({"name": "mine", "format": "coop_split"}, "missing required key 'template'"),
        ({"name": "other", "format": "coop_split", "template": "{}"}, "must match the file name 'mine'"),
        ({"name": "mine", "format": "coop_split", "template": "a photo"}, "has no '{}' slot"),
        ({"name": "mine", "format": "coop_split", "template": "{}", "image_dir": 2750}, "'image_dir' must be a string"),
    ],
)
def test_yaml_value_errors(tmp_path, data, message):
    with pytest.raises(VLPromptError, match=message.replace("{", r"\{").replace("}", r"\}")):
        read_dataset_config(write_yaml(tmp_path / "mine.yaml", **data))


@pytest.fixture()
def scratch_registry(monkeypatch):
    """Registrations made by a test are undone afterwards."""
    dataset_names()  # built-ins first, so they are part of what is restored
    monkeypatch.setattr(DATASETS, "_items", dict(DATASETS._items))
    monkeypatch.setattr(registry_module, "_CONFIGS", dict(registry_module._CONFIGS))


def test_adding_a_dataset_is_adding_a_yaml(tmp_path, scratch_registry):
    configs = tmp_path / "configs"
    configs.mkdir()
    write_yaml(
        configs / "tmp_extra_ds.yaml",
        name="tmp_extra_ds",
        format="coop_split",
        image_dir="imgs",
        split_file="split.json",
        template="a {} photo.",
    )
    assert register_dataset_configs(configs) == ["tmp_extra_ds"]
    folder = tmp_path / "data" / "tmp_extra_ds"
    (folder / "imgs").mkdir(parents=True)
    (folder / "split.json").write_text(json.dumps({"train": [["a.png", 0, "a"]], "test": [["b.png", 1, "b"]]}))
    ds = load_dataset("tmp_extra_ds", tmp_path / "data")
    assert ds.classnames == ["a", "b"] and ds.template == "a {} photo."
    bad = tmp_path / "bad"
    bad.mkdir()
    write_yaml(bad / "tmp_bad_format.yaml", name="tmp_bad_format", format="coop_splits", template="{}")
    write_yaml(bad / "tmp_good.yaml", name="tmp_good", format="coop_split", template="{}")
    with pytest.raises(VLPromptError, match="unknown format 'coop_splits'. Did you mean 'coop_split'"):
        register_dataset_configs(bad)
    assert "tmp_bad_format" not in DATASETS and "tmp_good" not in DATASETS
    with pytest.raises(VLPromptError, match="'tmp_extra_ds' from .*tmp_extra_ds.yaml is already registered"):
        register_dataset_configs(configs)


def test_every_builtin_yaml_parses():
    for path in BUILTIN_CONFIG_DIR.glob("*.yaml"):
        assert read_dataset_config(path).name == path.stem


def test_builtin_config_dir_resolves_in_source_tree_and_wheel(monkeypatch, tmp_path):
    assert (BUILTIN_CONFIG_DIR / "dtd.yaml").is_file() and "dtd" in dataset_names()
    import vlprompt.paths as paths_module

    monkeypatch.setattr(paths_module, "SOURCE_ROOT", tmp_path)  # as installed from a wheel: no source tree
    packaged = configs_module.builtin_config_dir()
    assert packaged.parts[-3:] == ("vlprompt", "_configs", "datasets")
    assert paths_module.config_root().parts[-2:] == ("vlprompt", "_configs")  # experiment configs too


def test_wheel_ships_configs_and_lists_every_package():
    """pyproject.toml lists packages explicitly (configs/ is mapped in as vlprompt._configs); a new
    subpackage missing from the list would be left out of the wheel."""
    tomllib = pytest.importorskip("tomllib")
    repo = Path(__file__).resolve().parents[1]
    setuptools = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"vlprompt._configs": "configs"}
    assert setuptools["package-data"]["vlprompt._configs"] == ["**/*.yaml"]
    found = {".".join(p.parent.relative_to(repo).parts) for p in (repo / "vlprompt").rglob("__init__.py")}
    missing = sorted(found - set(setuptools["packages"]))
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
