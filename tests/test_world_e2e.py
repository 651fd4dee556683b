"""End to end on the embedded world: learned prompts beat zero-shot CLIP (the main job's claim)."""

from __future__ import annotations

import pytest

from vlprompt import api
from vlprompt.config import ExperimentConfig
from vlprompt.engine.zero_shot import evaluate_zero_shot

pytestmark = pytest.mark.slow  # end to end: excluded by `make test-fast`, run by `make test` and CI


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return api.load_backbone("vlprompt-tiny", "world"), api.world_data_root(root)


@pytest.mark.parametrize(
    "dataset,overrides",
    [
        ("world_shapes", []),
        ("world_textures", []),
        ("world_colored_shapes", ["train.epochs=12"]),  # a shorter schedule keeps the test fast
    ],
)
def test_coop_beats_zero_shot(world, dataset, overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "cache"))
    backbone, root = world
    zero = evaluate_zero_shot(backbone, api.load_dataset(dataset, root), progress=False)["metrics"]["top1"]
    assert 25 <= zero <= 85  # room to improve, as the world promises
    config = ExperimentConfig.load(
        "experiments/world_coop.yaml",
        [f"dataset.name={dataset}", f"dataset.root={root}", f"output_dir={tmp_path / 'run'}", *overrides],
    )
    coop = api.run_experiment(config, backbone=backbone)["metrics"]["all"]["top1"]
    assert coop > zero + 2.0, f"CoOp {coop:.2f} vs zero-shot {zero:.2f} on {dataset}"


@pytest.mark.parametrize("name", ["lasp-world_textures-16shot", "kgcoop-world_shapes-16shot", "coop-world_textures-16shot"])
def test_bundled_zoo_prompts_reproduce_their_recorded_accuracy(world, name):
    """A shipped prompt, loaded by name, scores on the world's test split what its registry entry says,
    and more than zero-shot CLIP."""
    from vlprompt.engine.evaluate import evaluate_method
    from vlprompt.zoo import load_prompt
    from vlprompt.zoo.registry import get_entry

    backbone, root = world
    entry = get_entry(name).meta
    dataset = api.load_dataset(entry["training"]["dataset"], root)
    method = load_prompt(name, backbone)
    top1 = evaluate_method(method, backbone, dataset.split("test"))["top1"]
    assert top1 == pytest.approx(entry["metrics"]["all"]["top1"], abs=1e-4)
    zero = evaluate_zero_shot(backbone, dataset, progress=False)["metrics"]["top1"]
    assert top1 > zero + 2.0
