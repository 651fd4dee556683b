"""CLIP_benchmark's templates and CuPL descriptions, accepted wherever templates are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlprompt.data.classification import ClassificationDataset
from vlprompt.errors import VLPromptError
from vlprompt.methods import build_method
from vlprompt.prompts.handcrafted import handcrafted_features, text_classifier
from vlprompt.prompts.templates import ClassDescriptions, get_templates

CLASSES = ["golden_retriever", "cat"]
TEXTURES = ClassificationDataset("world_textures", Path("."), CLASSES, "a photo of a {}.", {})


def test_clip_benchmark_placeholder_everywhere(tmp_path):
    assert get_templates("a photo of a {c}.") == ["a photo of a {}."]
    assert get_templates(["{c} art.", "a {}"]) == ["{} art.", "a {}"]
    text = tmp_path / "t.txt"
    text.write_text("a {c} photo.\n")
    assert get_templates(str(text)) == ["a {} photo."]


def test_clip_benchmark_template_json_is_looked_up_as_clip_benchmark_does(tmp_path):
    path = tmp_path / "en_zeroshot_classification_templates.json"
    path.write_text(json.dumps({"imagenet1k": ["itap of a {c}."], "world_textures": ["a {c} texture.", "the {c}."]}))
    assert get_templates(str(path), TEXTURES) == ["a {} texture.", "the {}."]
    wds = ClassificationDataset("wds/world_textures", Path("."), CLASSES, "{}", {})
    assert get_templates(str(path), wds) == ["a {} texture.", "the {}."]  # "wds/" prefix dropped
    other = ClassificationDataset("dtd", Path("."), CLASSES, "{}", {})
    assert get_templates(str(path), other) == ["itap of a {}."]  # CLIP_benchmark's imagenet1k fallback
    plain = tmp_path / "list.json"
    plain.write_text(json.dumps(["a {c}."]))
    assert get_templates(str(plain)) == ["a {}."]
    no_default = tmp_path / "two.json"
    no_default.write_text(json.dumps({"cars": ["a {c} car."], "pets": ["a {c} pet."]}))
    with pytest.raises(VLPromptError, match="none for world_textures"):
        get_templates(str(no_default), TEXTURES)


def test_cupl_descriptions_forms(tmp_path):
    cupl = {"golden retriever": ["A friendly dog.", "A dog with golden fur.", "Retrievers fetch."], "Cat": ["A small cat."]}
    direct = tmp_path / "cupl.json"
    direct.write_text(json.dumps(cupl))
    got = get_templates(str(direct), TEXTURES)
    assert isinstance(got, ClassDescriptions)
    assert got.for_class("golden_retriever") == cupl["golden retriever"] and got.for_class("cat") == ["A small cat."]
    keyed = tmp_path / "cupl_prompts.json"  # CLIP_benchmark's layout: {dataset: {class: [sentences]}}
    keyed.write_text(json.dumps({"world_textures": cupl}))
    assert get_templates(str(keyed), TEXTURES) == got
    assert get_templates(cupl) == got  # a mapping in a config
    missing = ClassDescriptions({"cat": ["A cat."]})
    with pytest.raises(VLPromptError, match=r"no sentences for 1 of 2 classes \('golden_retriever'\)"):
        missing.check_covers(CLASSES)


def test_cupl_classifier_is_the_mean_of_each_class_sentences(tiny_vit):
    cupl = ClassDescriptions(
        {"golden retriever": ["A friendly dog.", "A dog with golden fur.", "Retrievers fetch."], "cat": ["A cat."]}
    )
    weights = text_classifier(tiny_vit, CLASSES, cupl)
    with torch.no_grad():
        expected = torch.stack(
            [F.normalize(F.normalize(tiny_vit.encode_text(s).float(), dim=-1).mean(0), dim=-1) for s in cupl.values()]
        )
    torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(VLPromptError, match="different numbers of sentences"):
        handcrafted_features(tiny_vit, CLASSES, cupl)


def test_methods_take_cupl_and_clip_benchmark_templates(tiny_vit, tmp_path):
    cupl = {"golden retriever": ["A friendly dog.", "A dog with golden fur."], "cat": ["A cat.", "A small cat.", "Meow."]}
    zs = build_method("zero-shot", tiny_vit, CLASSES, {"templates": cupl})
    torch.testing.assert_close(zs.class_features(), text_classifier(tiny_vit, CLASSES, ClassDescriptions(cupl)))
    path = tmp_path / "cupl.json"
    path.write_text(json.dumps(cupl))
    kg = build_method("kgcoop", tiny_vit, CLASSES, {"templates": str(path)})
    torch.testing.assert_close(kg.handcrafted(), zs.class_features())
    assert kg.config.templates == cupl  # the file is replaced by its content: the saved config rebuilds it
    lasp = build_method("lasp", tiny_vit, CLASSES, {"templates": ["a {c}.", "the {c}."]})
    assert lasp.templates == ["a {}.", "the {}."]
    with pytest.raises(VLPromptError, match="lasp: templates must be shared"):
        build_method("lasp", tiny_vit, CLASSES, {"templates": cupl})


def test_cupl_sentences_cut_to_the_context_are_checked_like_templates(tiny_vit):
    """Descriptions with different sentence counts per class go through the same truncation check: a
    cut is warned about, and a cut that makes two classes' sentences identical is refused."""
    long = " ".join(["striped"] * 80)
    cut = ClassDescriptions({"golden retriever": [f"A dog {long}", "A dog."], "cat": [f"A cat {long}"]})
    with pytest.warns(UserWarning, match=r"^2 class name\(s\) make prompts longer"):
        text_classifier(tiny_vit, CLASSES, cut)
    same = ClassDescriptions({"golden retriever": [f"{long} dog", "x"], "cat": [f"{long} cat", "x"]})
    with pytest.raises(VLPromptError, match="identical prompts"):
        text_classifier(tiny_vit, CLASSES, same)
