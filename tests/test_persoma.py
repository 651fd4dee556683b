"""PERSOMA's prompt adapter: untrained it is the shared context (CoOp), a user's examples give a prompt
with no gradient step (order-free, parameters untouched), episodes train the resampler, and the adapter
saves, loads and personalises `vlprompt predict` from a folder of the user's images."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlprompt.cli import main
from vlprompt.errors import VLPromptError
from vlprompt.methods import build_method
from vlprompt.zoo import load_prompt, predict, save_prompt

CLASSES = ["red circle", "blue square", "green star"]


def _users(backbone, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    d = backbone.identity.embed_dim
    return F.normalize(torch.randn(k, d, generator=g), dim=-1), F.normalize(torch.randn(k, d, generator=g) + 2, dim=-1)


def _trained(backbone):
    torch.manual_seed(0)
    method = build_method("persoma", backbone, CLASSES, {"n_ctx": 2})
    with torch.no_grad():  # as if trained: a non-zero output projection
        method.resampler.out.weight.normal_(0, 0.5)
    return method.eval()


def test_untrained_adapter_is_the_shared_context(tiny_vit):
    torch.manual_seed(0)
    method = build_method("persoma", tiny_vit, CLASSES, {"n_ctx": 2}).eval()
    coop = build_method("coop", tiny_vit, CLASSES, {"n_ctx": 2}).eval()
    with torch.no_grad():
        coop.ctx.copy_(method.ctx)
        user, _ = _users(tiny_vit)
        torch.testing.assert_close(method.features_for(user), coop.class_features(), rtol=0, atol=0)


def test_examples_give_a_prompt_without_a_gradient_step(tiny_vit):
    method = _trained(tiny_vit)
    before = {k: v.clone() for k, v in method.trainable_state().items()}
    a, b = _users(tiny_vit)
    with torch.no_grad():
        shared = method.class_features()
        method.set_user_examples(a)
        for_a = method.class_features()
        method.set_user_examples(a[torch.randperm(len(a))])  # a set: the order of examples does not matter
        torch.testing.assert_close(method.class_features(), for_a, rtol=0, atol=1e-6)
        method.set_user_examples(b)
        for_b = method.class_features()
    assert not torch.allclose(for_a, for_b, atol=1e-3) and not torch.allclose(for_a, shared, atol=1e-3)
    assert all(torch.equal(before[k], v) for k, v in method.trainable_state().items())
    with pytest.raises(VLPromptError, match="user examples must be"):
        method.set_user_examples(torch.randn(3, 7))


def test_offsets_are_bounded(tiny_vit):
    method = _trained(tiny_vit)
    with torch.no_grad():
        method.resampler.out.weight.mul_(1e4)
        a, _ = _users(tiny_vit)
        norms = method.resampler(a).norm(dim=-1)
    assert (norms <= 1.0 + 1e-5).all() and (norms > 0.99).all()


def test_episode_loss_trains_the_resampler(tiny_vit):
    torch.manual_seed(0)
    method = build_method("persoma", tiny_vit, CLASSES, {"n_ctx": 2})
    a, _ = _users(tiny_vit)
    loss, stats = method.episode_loss(a, ["yellow heart", "purple ring"], a[:4], torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert method.classnames == ["yellow heart", "purple ring"] and "loss" in stats
    assert method.resampler.out.weight.grad.abs().sum() > 0 and method.ctx.grad.abs().sum() > 0


def test_saves_loads_and_personalises_predict(tiny_vit, tmp_path, capsys):
    method = _trained(tiny_vit)
    path = save_prompt(tmp_path / "adapter", method)
    loaded = load_prompt(path, tiny_vit)
    folder = tmp_path / "user"
    folder.mkdir()
    for i, colour in enumerate([(200, 40, 40), (190, 60, 30), (210, 30, 50)]):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i}.png")
    query = tmp_path / "query.png"
    Image.new("RGB", (40, 40), (30, 30, 220)).save(query)
    plain = predict(loaded, [query], top_k=3)
    personal = predict(path, [query], top_k=3, backbone=tiny_vit, user_examples=folder)
    scores = lambda r: {t["label"]: t["score"] for t in r[0]["top"]}  # noqa: E731
    assert scores(plain) != pytest.approx(scores(personal), abs=1e-4)
    from vlprompt.zoo.predict import set_user_examples

    assert set_user_examples(loaded, folder) == 3
    with torch.no_grad():
        method.set_user_examples(loaded.user_features)
        torch.testing.assert_close(loaded.class_features(), method.class_features(), rtol=0, atol=1e-6)
    coop = build_method("coop", tiny_vit, CLASSES, {})
    with pytest.raises(VLPromptError, match="takes no user examples"):
        set_user_examples(coop, folder)
    code = main(["predict", str(query), "--prompt", str(path), "--user-examples", str(tmp_path / "missing"),
                 "--device", "cpu"])
    assert code == 2 and "user examples folder not found" in capsys.readouterr().err
