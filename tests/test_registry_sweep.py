"""Every registered method, whatever its task, honours the one method contract on the tiny backbone:
build from (backbone, label space, default config), two training steps through the `train_step` hook
(or its one-shot fit), save, load (same logits), predict image files, and change its label space where
it may (refused with a clear error where it may not).

A method added to the registry is swept here with no change to this file.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlprompt.errors import VLPromptError
from vlprompt.methods import METHODS, ClassLabels, PairLabels, build_method
from vlprompt.zoo import export_classifier, load_prompt, predict, save_prompt

CLASSES = ClassLabels(("red circle", "blue square", "green star"))
PAIRS = PairLabels.create(["red", "blue", "old"], ["circle", "square"], [[0, 0], [1, 1], [2, 0], [0, 1]])
LABELS = {"classification": CLASSES, "czsl": PAIRS}
ALL = [(name, task) for name, task, _ in METHODS.items()]


def _batch(backbone, n_labels: int, needs_images: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.randn(4, 3, *backbone.image_size)
    labels = torch.arange(4) % n_labels
    if needs_images:
        return {"images": images, "labels": labels}
    with torch.no_grad():
        return {"features": F.normalize(backbone.encode_image(images), dim=-1), "labels": labels}


def _train_two_steps(method, batch) -> None:
    before = {k: v.clone() for k, v in method.trainable_state().items()}
    optimizer = torch.optim.SGD([g for g in method.param_groups(0.1)], lr=0.1)
    method.train()
    for _ in range(2):
        optimizer.zero_grad()
        loss, stats = method.train_step(batch, method, lambda loss: loss.backward())
        assert torch.isfinite(loss) and "loss" in stats
        optimizer.step()
    after = method.trainable_state()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no trainable tensor moved"


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, colour in enumerate([(220, 30, 30), (30, 30, 220)]):
        path = folder / f"{i}.png"
        Image.new("RGB", (40, 40), colour).save(path)
        paths.append(path)
    return paths


def test_the_registry_covers_both_tasks():
    assert {"coop", "cocoop", "kgcoop", "lasp", "linear-probe", "zero-shot"} <= set(METHODS.names("classification"))
    assert {"zero-shot", "coop", "csp", "dfsp"} <= set(METHODS.names("czsl"))


@pytest.mark.parametrize(("name", "task"), ALL, ids=[f"{t}:{n}" for n, t in ALL])
def test_method_contract(tiny_vit, image_files, tmp_path, name, task):
    labels = LABELS[task]
    torch.manual_seed(0)
    method = build_method(name, tiny_vit, labels, {})
    assert method.label_space == labels and method.classnames == labels.names and method.task == task
    batch = _batch(tiny_vit, len(labels.names), method.needs_images)

    if method.fits_in_one_shot:
        method.fit_features(batch["features"], batch["labels"])
    elif method.trainable_state():
        _train_two_steps(method, batch)

    method.eval()
    with torch.no_grad():
        logits = method(batch)
    assert logits.shape == (4, len(labels.names)) and torch.isfinite(logits).all()

    if method.trainable_state():
        path = save_prompt(tmp_path / name, method)
        loaded = load_prompt(path, tiny_vit)
        assert type(loaded) is type(method) and loaded.label_space == labels
        with torch.no_grad():
            torch.testing.assert_close(loaded(batch), logits, rtol=0, atol=1e-5)
        method = loaded

    text = method.class_features()
    if text is not None:  # a fixed classifier must reproduce the method's logits (what `zoo export` ships)
        image = method.image_features(batch).float()
        with torch.no_grad():
            torch.testing.assert_close(tiny_vit.logit_scale * image @ export_classifier(method), method(batch).float(),
                                       rtol=0, atol=1e-4)

    top = predict(method, image_files, top_k=2)
    assert [len(r["top"]) for r in top] == [2, 2]
    assert all(t["label"] in labels.names for r in top for t in r["top"])
    if task == "czsl":  # predictions name attribute and object
        assert all(f"{t['attr']} {t['obj']}" == t["label"] for r in top for t in r["top"])

    _check_label_space_change(method, task, batch)


def _check_label_space_change(method, task: str, batch) -> None:
    if task == "czsl":  # other candidate pairs over the same primitives
        method.set_label_space(PAIRS.with_pairs([[1, 0], [2, 1]]))
        with torch.no_grad():
            assert method(batch).shape == (4, 2)
        with pytest.raises(VLPromptError, match="candidate pairs"):
            method.set_label_space(["cat", "dog"])
        return
    new = ClassLabels(("yellow heart", "purple ring"))
    if method.class_agnostic:
        method.set_label_space(new)
        with torch.no_grad():
            assert method(batch).shape == (4, 2)
        assert method.classnames == new.names
    else:
        with pytest.raises(VLPromptError, match="cannot take new class names"):
            method.set_label_space(new)
    with pytest.raises(VLPromptError, match="cannot take czsl labels"):
        method.set_label_space(PAIRS)
