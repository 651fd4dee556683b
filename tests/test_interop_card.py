"""Model cards with the Hub's metadata: beside every saved prompt, and in `zoo push`."""

from __future__ import annotations

from vlprompt.methods import build_method
from vlprompt.zoo import save_prompt
from vlprompt.zoo.card import base_model, model_card, read_card_metadata
from vlprompt.zoo.hub import push_prompt


class _Hub:  # the two HfApi calls push makes, writing into a folder
    def __init__(self, root):
        self.root = root

    def create_repo(self, repo_id, **kwargs):
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)

    def upload_folder(self, repo_id, folder_path, **kwargs):
        import shutil

        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return type("Info", (), {"oid": "c0ffee", "commit_url": None})()


def test_base_model_from_the_backbone_identity():
    assert (
        base_model({"source": "open_clip", "name": "ViT-B-16", "pretrained": "openai"}) == "timm/vit_base_patch16_clip_224.openai"
    )
    assert (
        base_model({"source": "hf", "name": "openai/clip-vit-base-patch16", "pretrained": None}) == "openai/clip-vit-base-patch16"
    )
    assert (
        base_model({"source": "local-dir", "name": "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"})
        == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    )
    assert base_model({"source": "open_clip", "name": "vlprompt-tiny", "pretrained": "world"}) is None


def test_every_saved_prompt_has_a_model_card(tiny_vit, tmp_path):
    method = build_method("coop", tiny_vit, ["cat", "dog"], {"n_ctx": 2})
    metrics = {
        "base": {"top1": 80.0000011920929, "top5": 100.0, "mean_per_class_recall": 80.0, "n_images": 10},
        "hm": {"hm": 71.5},
    }
    save_prompt(tmp_path / "run" / "prompt", method, training={"dataset": "world_textures", "shots": 16}, metrics=metrics)
    card = (tmp_path / "run" / "README.md").read_text()
    front = read_card_metadata(card)
    assert front["library_name"] == "vlprompt" and front["pipeline_tag"] == "zero-shot-image-classification"
    assert front["datasets"] == ["world_textures"] and "coop" in front["tags"] and "base_model" not in front  # random weights
    [index] = front["model-index"]
    assert index["name"] == "coop-world_textures-16shot"
    base, hm = index["results"]
    assert base["dataset"] == {"type": "world_textures", "name": "world_textures", "split": "test (base)"}
    assert base["metrics"][0] == {"type": "accuracy", "name": "top-1 accuracy", "value": 80.0}
    assert [m["type"] for m in base["metrics"]] == ["accuracy", "top_5_accuracy", "mean_per_class_recall"]
    assert hm["metrics"] == [{"type": "harmonic_mean", "name": "harmonic mean (base, new)", "value": 71.5}]
    assert 'vlprompt.load_prompt("prompt.safetensors")' in card
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes\n")
    save_prompt(mine / "prompt", method)
    assert (mine / "README.md").read_text() == "# my notes\n"  # a README the user wrote is kept
    for notes in ("---\nnot: [yaml\n---\n", "---\njust a rule\n---\n"):  # a --- rule, not front matter
        (mine / "README.md").write_text(notes)
        save_prompt(mine / "prompt", method, training={"root": tmp_path})  # a Path in training: written as text
        assert (mine / "README.md").read_text() == notes
    (mine / "README.md").unlink()
    save_prompt(mine / "prompt", method, training={"root": tmp_path})
    assert f"`{{\"root\": \"{tmp_path}\"}}`" in (mine / "README.md").read_text()


def test_push_card_carries_hub_metadata(tiny_vit, tmp_path):
    method = build_method("coop", tiny_vit, ["cat", "dog"], {"n_ctx": 2})
    path = save_prompt(tmp_path / "p" / "prompt", method, training={"dataset": "pets"}, metrics={"all": {"top1": 91.25}})
    push_prompt(path, "me/coop-pets", api=_Hub(tmp_path / "hub"))
    front = read_card_metadata((tmp_path / "hub" / "me" / "coop-pets" / "README.md").read_text())
    assert front["model-index"][0]["name"] == "coop-pets"
    assert front["model-index"][0]["results"][0]["metrics"] == [{"type": "accuracy", "name": "top-1 accuracy", "value": 91.25}]
    assert "hf://me/coop-pets" in model_card({"method": "coop"}, "me/coop-pets", "a.safetensors", "a.json")
