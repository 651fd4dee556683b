"""Template banks and template files."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlprompt.data.classification import ClassificationDataset
from vlprompt.errors import VLPromptError
from vlprompt.prompts.templates import IMAGENET_SELECT_7, fill_templates, get_templates

PETS = ClassificationDataset("oxford_pets", Path("."), ["pug"], "a photo of a {}, a type of pet.", {})


def test_banks():
    assert get_templates("single") == ["a photo of a {}."]
    eighty = get_templates("imagenet80")
    assert len(eighty) == len(set(eighty)) == 80
    assert eighty[0] == "a bad photo of a {}." and eighty[-1] == "a tattoo of the {}."
    assert all(t.count("{}") == 1 for t in eighty)
    assert get_templates("dataset", PETS) == ["a photo of a {}, a type of pet."]
    assert get_templates("coop", PETS) == ["a photo of a {}, a type of pet."]
    assert get_templates("coop_ensemble", PETS) == [*IMAGENET_SELECT_7, "a photo of a {}, a type of pet."]
    assert get_templates(["{} art.", "a {}"]) == ["{} art.", "a {}"]


def test_fill_replaces_underscores():
    assert fill_templates(["a {}.", "{}!"], ["golden_retriever"]) == [["a golden retriever.", "golden retriever!"]]


def test_template_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my prompts\na photo of a {}.\n\n{} in the wild.\n")
    assert get_templates(str(path)) == ["a photo of a {}.", "{} in the wild."]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "a photo of a {}.\na photo of a cat.\n",
            r"mine.txt, line 2: template 'a photo of a cat.' must contain exactly one '\{\}'",
        ),
        ("{} and {}\n", "line 1: .*exactly one"),
        ("a {} {name}\n", "line 1: template .a {} {name}. is not a valid"),
        ("\n# only a comment\n", "has no templates"),
    ],
)
def test_template_file_errors(tmp_path, text, message):
    path = tmp_path / "mine.txt"
    path.write_text(text)
    with pytest.raises(VLPromptError, match=message):
        get_templates(str(path))


def test_unknown_specs():
    with pytest.raises(VLPromptError, match="template file not found: .*missing.txt"):
        get_templates("missing.txt")
    with pytest.raises(VLPromptError, match=r"unknown template bank 'imagenet08'.*Did you mean 'imagenet80'"):
        get_templates("imagenet08")
    with pytest.raises(VLPromptError, match="need a dataset"):
        get_templates("dataset")
