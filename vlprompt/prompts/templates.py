"""Hand-crafted template banks: CLIP's 80 ImageNet prompts, CoOp's per-dataset templates, files.

Sources (attribution): CLIP's ``Prompt_Engineering_for_ImageNet.ipynb`` via open_clip's
``OPENAI_IMAGENET_TEMPLATES``; the CoOp, LASP and KgCoOp lists are data in ``banks/`` (with their
sources), registered here by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from vlprompt.embedded.captions import TEMPLATES as WORLD_CAPTION_TEMPLATES
from vlprompt.errors import VLPromptError
from vlprompt.paths import read_json
from vlprompt.prompts.banks.coop import COOP_TEMPLATES, IMAGENET_SELECT_7
from vlprompt.prompts.banks.lasp import LASP_34, LASP_35
from vlprompt.prompts.banks.promptsrc import PROMPTSRC_TEMPLATES
from vlprompt.registry import Registry, unknown_name_message

SLOT = "{}"
CB_SLOT = "{c}"  # CLIP_benchmark's placeholder, accepted everywhere a template is
CB_DEFAULT_DATASET = "imagenet1k"  # CLIP_benchmark's template entry for datasets without their own


class ClassDescriptions(dict):
    """Per-class prompts ``{class name: [sentences]}`` (CuPL-style descriptions, CLIP_benchmark's
    ``cupl_prompts.json``): each class is the mean of its own sentences' features, in place of shared
    templates. A dict, so it is JSON as it stands (results, saved configs)."""

    def for_class(self, classname: str) -> list[str]:
        """The sentences of `classname`: its exact key, else the key with underscores as spaces or in
        another case (``golden_retriever`` finds ``Golden Retriever``)."""
        if classname in self:
            return list(self[classname])
        wanted = _class_key(classname)
        for key, sentences in self.items():
            if _class_key(key) == wanted:
                return list(sentences)
        raise KeyError(classname)

    def check_covers(self, classnames: Sequence[str], where: str = "class descriptions") -> None:
        missing = []
        for name in classnames:
            try:
                self.for_class(name)
            except KeyError:
                missing.append(name)
        if missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise VLPromptError(
                f"{where}: no sentences for {len(missing)} of {len(classnames)} classes ({shown}); "
                f"the file has {', '.join(repr(k) for k in list(self)[:5])}{' ...' if len(self) > 5 else ''}"
            )


def _class_key(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())



class TemplateSource(Protocol):
    """What a bank reads from a dataset: its name and its own template (a `ClassificationDataset` or a
    `WdsDataset`; a dataset may also have ``templates``, a list). A protocol, so prompts need not import
    the data readers (they import this module)."""

    @property
    def name(self) -> str: ...

    @property
    def template(self) -> str: ...


def imagenet_80() -> tuple[str, ...]:
    """CLIP's 80 ImageNet templates, from open_clip's lambdas turned into "{}" strings (open_clip is
    imported on first use: checking a config must not wait for it)."""
    import open_clip  # heavy (torchvision): only when the bank is asked for

    return tuple(t(SLOT) for t in open_clip.OPENAI_IMAGENET_TEMPLATES)


TemplateBank = Callable[["TemplateSource | None"], list[str]]
TEMPLATE_BANKS: Registry[TemplateBank] = Registry("template bank")


def _dataset_template(dataset: TemplateSource | None, spec: str) -> str:
    if dataset is None:
        raise VLPromptError(f"templates {spec!r} need a dataset (its own template), but none was given")
    return dataset.template


@TEMPLATE_BANKS.register("single")
def _single(dataset: TemplateSource | None) -> list[str]:
    return ["a photo of a {}."]


@TEMPLATE_BANKS.register("imagenet80")
def _imagenet80(dataset: TemplateSource | None) -> list[str]:
    return list(imagenet_80())


@TEMPLATE_BANKS.register("imagenet_select7")
def _select7(dataset: TemplateSource | None) -> list[str]:
    return list(IMAGENET_SELECT_7)


@TEMPLATE_BANKS.register("dataset")
def _own(dataset: TemplateSource | None) -> list[str]:
    """The dataset's own template, or all of them for datasets that ship a list (``wds:`` folders)."""
    own = getattr(dataset, "templates", None)
    return list(own) if own else [_dataset_template(dataset, "dataset")]


@TEMPLATE_BANKS.register("coop")
def _coop(dataset: TemplateSource | None) -> list[str]:
    """CoOp's published template for the dataset (falls back to the dataset's own template)."""
    name = dataset.name if dataset is not None else None
    return [COOP_TEMPLATES[name]] if name in COOP_TEMPLATES else [_dataset_template(dataset, "coop")]


@TEMPLATE_BANKS.register("coop_ensemble")
def _coop_ensemble(dataset: TemplateSource | None) -> list[str]:
    """CoOp's ZeroshotCLIP2: the 7 selected ImageNet templates plus the dataset's own one."""
    own = _dataset_template(dataset, "coop_ensemble")
    return list(IMAGENET_SELECT_7) + ([own] if own not in IMAGENET_SELECT_7 else [])


def check_template(template: str, where: str) -> str:
    """A template must hold exactly one ``{}`` slot (or CLIP_benchmark's ``{c}``, returned as ``{}``) and
    no other braces that ``format`` would trip on."""
    if not isinstance(template, str):
        raise VLPromptError(f"{where}: template {template!r} is not a string")
    if CB_SLOT in template and SLOT not in template:
        template = template.replace(CB_SLOT, SLOT)
    if template.count(SLOT) != 1:
        raise VLPromptError(f"{where}: template {template!r} must contain exactly one '{{}}' for the class name")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError) as error:
        raise VLPromptError(f"{where}: template {template!r} is not a valid '{{}}' template ({error})") from None
    return template


def read_template_file(path: str | Path, dataset: TemplateSource | None = None) -> list[str] | ClassDescriptions:
    """One template per line; blank lines and ``#`` comments are skipped. A ``.json`` file is read by
    `read_template_json` (CLIP_benchmark's template files, CuPL descriptions)."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".json":
        return read_template_json(path, dataset)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise VLPromptError(f"template file not found: {path}") from None
    except UnicodeDecodeError as error:
        raise VLPromptError(f"template file {path} is not UTF-8 text: {error}") from None
    templates = [
        check_template(line.strip(), f"template file {path}, line {number}")
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not templates:
        raise VLPromptError(f"template file {path} has no templates (one per line, each with '{{}}')")
    return templates


def _has_slot(text: object) -> bool:
    return isinstance(text, str) and (SLOT in text or CB_SLOT in text)


def parse_template_json(data: object, where: str, dataset: TemplateSource | None = None) -> list[str] | ClassDescriptions:
    """The JSON template forms in use:

    - a list of templates (``{}`` or ``{c}``);
    - CLIP_benchmark's ``{dataset name: [templates]}`` (``en_zeroshot_classification_templates.json``)
      or ``{dataset name: {class: [sentences]}}`` (``cupl_prompts.json``): the dataset's entry is taken,
      looked up as CLIP_benchmark does (name, name without ``wds/``, then ``imagenet1k``);
    - CuPL's ``{class: [sentences]}`` (sentences without a slot): `ClassDescriptions`.
    """
    if isinstance(data, list):
        templates = [check_template(t, where) for t in data]
        if not templates:
            raise VLPromptError(f"{where}: the template list is empty")
        return templates
    if not isinstance(data, dict) or not data:
        raise VLPromptError(
            f"{where}: expected a list of templates or an object ({{dataset: templates}} or {{class: [sentences]}})"
        )
    values = list(data.values())
    # CuPL maps classes to sentences without a slot; CLIP_benchmark maps datasets to slotted templates or to CuPL dicts
    keyed_by_dataset = any(isinstance(v, dict) for v in values) or all(
        isinstance(v, list) and any(_has_slot(t) for t in v) for v in values
    )
    if keyed_by_dataset:
        name = getattr(dataset, "name", None)
        # CLIP_benchmark's lookup: the dataset's name, without its "wds/" prefix, then imagenet1k's entry
        wanted = (name, str(name).removeprefix("wds/"), CB_DEFAULT_DATASET) if name else (CB_DEFAULT_DATASET,)
        keys = [k for k in wanted if k in data]
        if not keys and len(data) == 1:
            keys = list(data)
        if not keys:
            found = ", ".join(list(data)[:8]) + (" ..." if len(data) > 8 else "")
            raise VLPromptError(
                f"{where}: holds templates per dataset ({found}) but none for {name or 'this use (no dataset)'}"
            )
        return parse_template_json(data[keys[0]], f"{where}, entry {keys[0]!r}", dataset)
    descriptions = ClassDescriptions()
    for key, sentences in data.items():
        if isinstance(sentences, str):
            sentences = [sentences]
        if not isinstance(sentences, list) or not sentences or not all(isinstance(t, str) for t in sentences):
            raise VLPromptError(f"{where}: class {key!r} must map to a non-empty list of sentences")
        descriptions[str(key)] = list(sentences)
    return descriptions


def read_template_json(path: str | Path, dataset: TemplateSource | None = None) -> list[str] | ClassDescriptions:
    path = Path(path).expanduser()
    data = read_json(path, "template file")
    return parse_template_json(data, f"template file {path}", dataset)


def get_templates(
    spec: str | Sequence[str] | Mapping[str, Sequence[str]], dataset: TemplateSource | None = None
) -> list[str] | ClassDescriptions:
    """Resolve a template spec: a bank name, ``"dataset"`` (its own template), a text or JSON file, a
    list, or per-class descriptions (a mapping, returned as `ClassDescriptions`)."""
    if isinstance(spec, Mapping):
        return parse_template_json(dict(spec), "templates", dataset)
    if not isinstance(spec, str):
        templates = [check_template(t, "templates") for t in spec]
        if not templates:
            raise VLPromptError("templates: the list is empty")
        return templates
    if spec in TEMPLATE_BANKS:
        return TEMPLATE_BANKS.get(spec)(dataset)
    if _has_slot(spec):  # a single literal template
        return [check_template(spec, "templates")]
    if Path(spec).expanduser().is_file() or "/" in spec or spec.endswith((".txt", ".json")):
        return read_template_file(spec, dataset)
    raise VLPromptError(
        unknown_name_message("template bank", spec, TEMPLATE_BANKS.names()) + ", a template with '{}', or a path to a text file"
    )


def prompt_classname(classname: str) -> str:
    """How a class name goes into a prompt: underscores become spaces, as in CoOp and CLIP."""
    return classname.replace("_", " ")


def fill_templates(templates: Sequence[str] | ClassDescriptions, classnames: Sequence[str]) -> list[list[str]]:
    """Prompts as ``[class][template]`` (per-class descriptions: each class's own sentences)."""
    if isinstance(templates, ClassDescriptions):
        templates.check_covers(classnames)
        return [templates.for_class(c) for c in classnames]
    templates = [check_template(t, "templates") for t in templates]
    return [[t.format(prompt_classname(c)) for t in templates] for c in classnames]


# -- banks of the LASP / KgCoOp releases and of the embedded world (data in vlprompt/prompts/banks/) --


@TEMPLATE_BANKS.register("lasp35")
def _lasp35(dataset: TemplateSource | None) -> list[str]:
    """The 35 templates of every released LASP config, duplicate included (see banks/lasp.py)."""
    return list(LASP_35)


@TEMPLATE_BANKS.register("lasp34")
def _lasp34(dataset: TemplateSource | None) -> list[str]:
    """LASP's list without its duplicate "a bad photo of the {}."."""
    return list(LASP_34)


@TEMPLATE_BANKS.register("promptsrc60")
def _promptsrc60(dataset: TemplateSource | None) -> list[str]:
    """PromptSRC's 60 ImageNet templates (its frozen-text ensemble; see banks/promptsrc.py)."""
    return list(PROMPTSRC_TEMPLATES)


@TEMPLATE_BANKS.register("world_captions")
def _world_captions(dataset: TemplateSource | None) -> list[str]:
    """The phrasings the embedded world's captions use (its text tower was pretrained on them)."""
    return [template.replace("{np}", SLOT) for template, _ in WORLD_CAPTION_TEMPLATES]
