"""LASP: the text-to-text loss by hand, gradients, groups, virtual classes, re-calibration."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import colour_items

from vlprompt.errors import VLPromptError
from vlprompt.methods import build_method
from vlprompt.methods.lasp import split_templates
from vlprompt.methods.text_losses import lasp_text_loss, text_to_text_loss
from vlprompt.prompts.handcrafted import handcrafted_features

CLASSES = ["cat", "dog", "red car"]
TWO = ["a photo of a {}.", "a drawing of a {}."]
BASE = {"templates": TWO, "noise_prob": 0.0}  # deterministic unless a test turns noise on


def lasp(backbone, classnames=CLASSES, **config):
    return build_method("lasp", backbone, classnames, {**BASE, **config})


def feature_batch(backbone, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(n, backbone.identity.embed_dim, generator=g), dim=-1)
    return {"features": feats, "labels": torch.arange(n) % len(CLASSES)}


def image_batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(n, 3, 32, 32, generator=g), "labels": torch.arange(n) % len(CLASSES)}


def perturb(method, seed=1, std=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        method.ctx.add_(std * torch.randn(method.ctx.shape, generator=g))


# -- the loss on a hand-computed case -----------------------------------------------------------

S_VECS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]]  # soft class features, unit vectors
H_VECS = [  # hand-crafted [template][class], unit vectors
    [[0.8, 0.6, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]],
    [[0.6, 0.0, 0.8], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
]
SCALE = 2.0


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _by_hand(direction):
    """-mean log softmax, written out with math (no torch)."""
    terms = []
    for hand in H_VECS:
        for k in range(3):
            if direction == "soft_as_classifier":  # hand[k] is the query, soft features the classes
                scores = [SCALE * _dot(S_VECS[i], hand[k]) for i in range(3)]
            else:  # soft[k] is the query, this template's hand-crafted features the classes
                scores = [SCALE * _dot(S_VECS[k], hand[j]) for j in range(3)]
            terms.append(-(scores[k] - math.log(sum(math.exp(s) for s in scores))))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("direction", ["soft_as_classifier", "handcrafted_as_classifier", "symmetric"])
def test_text_to_text_loss_equals_hand_computation(direction):
    soft, hand = torch.tensor(S_VECS), torch.tensor(H_VECS)
    got = float(text_to_text_loss(soft, hand, SCALE, direction))
    if direction == "symmetric":
        want = _by_hand("soft_as_classifier") + _by_hand("handcrafted_as_classifier")
    else:
        want = _by_hand(direction)
    assert got == pytest.approx(want, rel=1e-6)
    assert _by_hand("soft_as_classifier") != pytest.approx(_by_hand("handcrafted_as_classifier"))


def test_directions_agree_on_a_symmetric_similarity():
    soft = torch.eye(3)
    hand = torch.eye(3).unsqueeze(0)  # <soft_i, hand_j> symmetric in i, j
    a = text_to_text_loss(soft, hand, 5.0, "soft_as_classifier")
    b = text_to_text_loss(soft, hand, 5.0, "handcrafted_as_classifier")
    assert float(a) == pytest.approx(float(b))
    with pytest.raises(VLPromptError, match="direction"):
        text_to_text_loss(soft, hand, 5.0, "sideways")


def test_handcrafted_features_match_the_backbone(tiny_vit):
    hand = handcrafted_features(tiny_vit, ["red car", "dog"], TWO)
    assert hand.shape == (2, 2, tiny_vit.identity.embed_dim)
    with torch.no_grad():
        direct = F.normalize(tiny_vit.encode_text(["a drawing of a red car."]).float(), dim=-1)[0]
    torch.testing.assert_close(hand[1, 0], direct)


# -- the method ---------------------------------------------------------------------------------


def test_soft_equals_handcrafted_at_init(tiny_vit):
    """ctx from "a photo of a", no bias: the soft prompt is the template "a photo of a {}."."""
    method = lasp(tiny_vit)
    cos = (method.class_features() * method.handcrafted[0]).sum(-1)
    torch.testing.assert_close(cos, torch.ones(3), atol=1e-5, rtol=0)


def test_total_loss_is_ce_plus_weighted_text_loss(tiny_vit):
    method = lasp(tiny_vit, text_loss_weight=5.0)
    perturb(method)
    method.train()
    batch = feature_batch(tiny_vit)
    logits = method(batch)
    loss, stats = method.loss(logits, batch)
    with torch.no_grad():
        text = method.class_features()
        ce = F.cross_entropy(tiny_vit.logit_scale * batch["features"] @ text.t(), batch["labels"])
        tt = text_to_text_loss(text, method.handcrafted, tiny_vit.logit_scale, "soft_as_classifier")
    assert float(loss.detach()) == pytest.approx(float(ce + 5.0 * tt), rel=1e-5)
    assert stats["ce"] == pytest.approx(float(ce), rel=1e-5)
    assert stats["text_loss"] == pytest.approx(float(tt), rel=1e-5)
    method.eval()  # evaluation: no text loss, and nothing left over from training
    loss_eval, stats_eval = method.loss(method(batch), batch)
    assert "text_loss" not in stats_eval and float(loss_eval.detach()) == pytest.approx(float(ce), rel=1e-5)


def test_gradients_reach_only_the_prompt(tiny_vit):
    method = lasp(tiny_vit, text_bias=True)
    method.train()
    batch = feature_batch(tiny_vit)
    loss, _ = method.loss(method(batch), batch)
    loss.backward()
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"ctx", "text_bias"}
    assert method.ctx.grad is not None and method.ctx.grad.abs().sum() > 0
    assert method.text_bias.grad is not None and method.text_bias.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_vit.parameters())
    assert method.handcrafted.grad is None and not method.handcrafted.requires_grad
    assert float(method.text_bias.detach().abs().sum()) == 0.0  # zero-initialised


def test_text_bias_changes_features_and_is_switchable(tiny_vit):
    plain = lasp(tiny_vit)
    assert plain.text_bias is None and set(plain.trainable_state()) == {"ctx"}
    biased = lasp(tiny_vit, text_bias=True)
    torch.testing.assert_close(biased.class_features(), plain.class_features())  # zero at init
    with torch.no_grad():
        biased.text_bias.fill_(0.3)
    assert not torch.allclose(biased.class_features(), plain.class_features())


def test_handcrafted_features_stay_frozen_and_noise_is_transient(tiny_vit):
    method = lasp(tiny_vit, noise_prob=1.0)
    before = method.handcrafted.clone()
    feats = method.group_features(method.loss_prompts)
    torch.manual_seed(0)
    noisy = method.text_loss(feats)
    clean = method.text_loss(feats, noise=False)
    assert float(noisy.detach()) != pytest.approx(float(clean.detach()))
    torch.testing.assert_close(method.handcrafted, before, rtol=0, atol=0)


# -- groups -------------------------------------------------------------------------------------


def test_split_templates():
    assert split_templates(5, 2) == [[0, 2, 4], [1, 3]]
    assert split_templates(3, 1) == [[0, 1, 2]]
    assert split_templates(3, 2, [[2], [0, 1]]) == [[2], [0, 1]]
    with pytest.raises(VLPromptError, match="at least as many templates"):
        split_templates(2, 3)
    with pytest.raises(VLPromptError, match="indices"):
        split_templates(2, 2, [[0], [5]])


def test_groups_use_their_own_templates_and_average_at_inference(tiny_vit):
    method = lasp(tiny_vit, groups=2)
    assert method.ctx.shape[0] == 2 and method.group_templates == [[0], [1]]
    perturb(method)
    feats = method.group_features(method.loss_prompts)
    hand = method.handcrafted
    scale = tiny_vit.logit_scale
    want = 0.5 * (text_to_text_loss(feats[0], hand[[0]], scale) + text_to_text_loss(feats[1], hand[[1]], scale))
    torch.testing.assert_close(method.text_loss(feats, noise=False), want)
    torch.testing.assert_close(method.class_features(), F.normalize(feats.mean(0), dim=-1), atol=1e-6, rtol=0)

    # group 0's gradient does not depend on template 1 (group 1's), and the other way round
    def grad():
        loss = method.text_loss(method.group_features(method.loss_prompts), noise=False)
        return torch.autograd.grad(loss, method.ctx)[0]

    before = grad()
    method._handcrafted[1] = F.normalize(hand[1] + 0.5 * torch.randn_like(hand[1]), dim=-1)
    after = grad()
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])


def test_group_one_equals_plain_lasp(tiny_vit):
    """G=1 over templates {0, 1} == G=2 whose groups share context and templates; and G=1's class
    features are CoOp's with the same context."""
    one = lasp(tiny_vit)
    two = lasp(tiny_vit, groups=2, group_templates=[[0, 1], [0, 1]])
    perturb(one)
    with torch.no_grad():
        two.ctx.copy_(one.ctx.expand_as(two.ctx))
    for m in (one, two):
        m.train()
    batch = feature_batch(tiny_vit)
    l1, s1 = one.loss(one(batch), batch)
    l2, s2 = two.loss(two(batch), batch)
    assert float(l1.detach()) == pytest.approx(float(l2.detach()), rel=1e-5)
    assert s1["text_loss"] == pytest.approx(s2["text_loss"], rel=1e-5)
    coop = build_method("coop", tiny_vit, CLASSES, {"n_ctx": 4, "ctx_init": "a photo of a"})
    with torch.no_grad():
        coop.ctx.copy_(one.ctx[0])
        torch.testing.assert_close(one.class_features(), coop.class_features())
    per_group = lasp(tiny_vit, groups=2, group_templates=[[0, 1], [0, 1]], group_ce="per_group")
    with torch.no_grad():
        per_group.ctx.copy_(two.ctx)
    per_group.train()
    l3, _ = per_group.loss(per_group(batch), batch)
    assert float(l3.detach()) == pytest.approx(float(l1.detach()), rel=1e-5)


# -- virtual classes ----------------------------------------------------------------------------


def test_virtual_classes_join_only_the_text_loss(tiny_vit):
    plain = lasp(tiny_vit)
    virtual = lasp(tiny_vit, virtual_classes=["bird", "cat", "blue boat", "bird"])
    assert plain.text_loss_classnames == CLASSES
    assert virtual.text_loss_classnames == CLASSES + ["bird", "blue boat"]  # training names first, no repeats
    assert virtual.handcrafted.shape[1] == 5 and virtual.classnames == CLASSES
    perturb(plain)
    with torch.no_grad():
        virtual.ctx.copy_(plain.ctx)
    plain.train()
    virtual.train()
    batch = feature_batch(tiny_vit)
    logits_p, logits_v = plain(batch), virtual(batch)
    assert logits_v.shape == (4, 3)  # the image-text CE is over the training classes only
    torch.testing.assert_close(logits_v, logits_p)
    _, stats_p = plain.loss(logits_p, batch)
    _, stats_v = virtual.loss(logits_v, batch)
    assert stats_v["ce"] == pytest.approx(stats_p["ce"], rel=1e-6)
    assert stats_v["text_loss"] != pytest.approx(stats_p["text_loss"], rel=1e-4)


def test_virtual_classes_from_a_file_are_recorded_as_names(tiny_vit, tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("# extra names\nbird\n\nblue boat\n")
    method = lasp(tiny_vit, virtual_classes=str(path))
    assert method.virtual_classnames == ["bird", "blue boat"]
    assert method.config.virtual_classes == ["bird", "blue boat"]
    with pytest.raises(VLPromptError, match="virtual_classes"):
        lasp(tiny_vit, virtual_classes=str(tmp_path / "missing.txt"))


def test_no_text_loss_when_weight_is_zero(tiny_vit):
    method = lasp(tiny_vit, text_loss_weight=0.0, virtual_classes=["bird"])
    assert method.text_loss_classnames == []
    method.train()
    batch = feature_batch(tiny_vit)
    _, stats = method.loss(method(batch), batch)
    assert "text_loss" not in stats


def test_new_classes_at_evaluation_keep_the_text_loss_set(tiny_vit):
    method = lasp(tiny_vit)
    method.set_classnames(["bird", "blue boat"])
    assert method.class_features().shape == (2, tiny_vit.identity.embed_dim)
    assert method.text_loss_classnames == CLASSES


# -- image-side LayerNorm re-calibration --------------------------------------------------------


def test_image_layernorms_train_only_when_switched_on(tiny_vit):
    off = lasp(tiny_vit)
    assert not off.needs_images and len(off.image_ln) == 0
    assert [g["name"] for g in off.param_groups(0.032)] == ["prompt"]

    on = lasp(tiny_vit, image_ln=True, templates=TWO[:1])
    assert on.needs_images
    names = list(on.image_ln)
    assert names and all(("ln_1" in n or "ln_2" in n) and "visual" in n for n in names)
    groups = {g["name"]: g for g in on.param_groups(0.032)}
    assert groups["image_ln"]["lr"] == pytest.approx(0.0032) and groups["prompt"]["lr"] == 0.032
    assert len(groups["image_ln"]["params"]) == len(names)
    assert {id(p) for p in groups["prompt"]["params"]} == {id(on.ctx)}
    assert set(on.trainable_state()) == {"ctx"} | {f"image_ln.{n}" for n in names}

    backbone_before = {n: p.detach().clone() for n, p in tiny_vit.named_parameters()}
    batch = image_batch()
    on.train()
    with torch.no_grad():
        first_ln = next(iter(on.image_ln.values()))
        first_ln.mul_(1.5)  # tuned LayerNorms change the image features...
        assert not torch.allclose(on.image_features(batch), off.image_features(batch))
        first_ln.div_(1.5)  # ...and untouched copies give the backbone's own
        torch.testing.assert_close(on.image_features(batch), off.image_features(batch))
    optimizer = torch.optim.SGD(on.param_groups(1.0), lr=1.0)
    loss, _ = on.loss(on(batch), batch)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in on.image_ln.values())
    optimizer.step()
    assert not torch.allclose(first_ln, backbone_before[on._image_ln_names[names[0]].removeprefix("backbone.")])
    for n, p in tiny_vit.named_parameters():  # the shared backbone is never modified
        assert torch.equal(p, backbone_before[n]) and p.grad is None and not p.requires_grad

    state = {k: v.clone() for k, v in on.trainable_state().items()}
    fresh = lasp(tiny_vit, image_ln=True, templates=TWO[:1])
    fresh.load_trainable_state(state)
    fresh.eval()
    on.eval()
    torch.testing.assert_close(fresh.image_features(batch), on.image_features(batch))
    with pytest.raises(VLPromptError, match="needs images"):
        on.image_features({"features": torch.zeros(1, tiny_vit.identity.embed_dim)})


def test_image_layernorms_need_a_vit(tiny_rn):
    with pytest.raises(VLPromptError, match="LayerNorms"):
        build_method("lasp", tiny_rn, CLASSES, {**BASE, "image_ln": True})


def test_lasp35_bank(tiny_vit):
    from vlprompt.prompts.templates import get_templates

    bank = get_templates("lasp35")
    assert len(bank) == 35 and len(set(bank)) == 34 and bank.count("a bad photo of the {}.") == 2
    method = build_method("lasp", tiny_vit, CLASSES, {"groups": 5})
    assert method.handcrafted.shape[:2] == (35, 3)
    assert sorted(t for idx in method.group_templates for t in idx) == list(range(35))


# -- with the engine ----------------------------------------------------------------------------


def _items(folder, n_per_class=2, size=40):
    return colour_items(folder, CLASSES, n_per_class, size)


@pytest.mark.parametrize("image_ln", [False, True])
def test_trains_with_the_engine(tiny_vit, tmp_path, image_ln):
    from vlprompt.engine.cache import FeatureCache
    from vlprompt.engine.evaluate import evaluate_method
    from vlprompt.engine.trainer import TrainConfig, Trainer

    items = _items(tmp_path / "images")
    method = lasp(tiny_vit, image_ln=image_ln, text_bias=True, virtual_classes=["bird"], noise_prob=0.5)
    cfg = TrainConfig(epochs=2, batch_size=3, lr=0.05, warmup_epochs=0, output_dir=str(tmp_path / "run"), progress=False)
    before = {n: p.detach().clone() for n, p in tiny_vit.named_parameters()}
    result = Trainer(method, cfg, cache=FeatureCache(tmp_path / "cache", progress=False)).fit(items)
    assert math.isfinite(result["train"]["loss"]) and "text_loss" in result["train"]
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["trainable"]
    assert any(k.startswith("image_ln.") for k in saved) == image_ln
    assert evaluate_method(method, tiny_vit, items)["n_images"] == len(items)
    assert all(torch.equal(p, before[n]) for n, p in tiny_vit.named_parameters())


def test_shipped_configs_parse():
    """Every shipped experiment, CZSL and sweep base config loads: each section becomes its checked dataclass."""
    from pathlib import Path

    from vlprompt.config import CONFIG_ROOT, ExperimentConfig
    from vlprompt.methods import METHODS

    paths = sorted(Path(CONFIG_ROOT, "experiments").glob("*.yaml")) + sorted(Path(CONFIG_ROOT, "czsl").glob("*.yaml"))
    assert len(paths) >= 35
    for path in paths:
        config = ExperimentConfig.load(str(path))
        assert isinstance(config.method, METHODS.get(config.method_name, config.task).config_class), path


def test_prompt_checkpoint_round_trip(tiny_vit, tmp_path):
    from vlprompt.zoo import load_prompt, save_prompt

    method = lasp(tiny_vit, image_ln=True, text_bias=True, virtual_classes=["bird"], templates=TWO[:1])
    perturb(method)
    with torch.no_grad():
        method.text_bias.fill_(0.1)
        next(iter(method.image_ln.values())).mul_(1.2)
    path = save_prompt(tmp_path / "prompt", method)
    loaded = load_prompt(path, tiny_vit)
    assert loaded.needs_images and loaded.text_loss_classnames == CLASSES + ["bird"]
    method.eval()
    batch = image_batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), method(batch))


def test_public_lasp_text_loss_reproduces_the_step_from_features(tiny_vit):
    """`lasp_text_loss` from raw features, the bias and a given noise tensor equals the method's L_TT."""
    torch.manual_seed(0)
    method = build_method("lasp", tiny_vit, CLASSES, {"groups": 2, "text_bias": True, "noise_std": 0.05})
    with torch.no_grad():
        method.text_bias.normal_(0, 0.1)
    G, n, W = method.ctx.shape
    ctx = method.ctx.unsqueeze(1).expand(G, method.loss_prompts.n_prompts, n, W)
    raw = method.loss_prompts.encode(ctx=ctx)  # [G, C, D] before bias and normalisation
    hand = method.handcrafted
    noise = 0.05 * torch.randn(hand.shape, generator=torch.Generator().manual_seed(4))
    scale = tiny_vit.logit_scale.detach().float()
    public = lasp_text_loss(raw, hand, scale, bias=method.text_bias, noise=noise, group_templates=method.group_templates)
    torch.testing.assert_close(public, method.text_loss(method.group_features(method.loss_prompts), noise=noise),
                               rtol=1e-6, atol=1e-6)
    clean = lasp_text_loss(raw, hand, scale, bias=method.text_bias, group_templates=method.group_templates)
    torch.testing.assert_close(clean, method.text_loss(method.group_features(method.loss_prompts), noise=False),
                               rtol=1e-6, atol=1e-6)
    assert not torch.allclose(public, clean)
    # one group over all templates: the plain text_to_text_loss of the normalised features
    single = lasp_text_loss(raw[0], hand, scale)
    torch.testing.assert_close(single, text_to_text_loss(F.normalize(raw[0], dim=-1), hand, scale))
    with pytest.raises(VLPromptError, match="noise must have hand's shape"):
        lasp_text_loss(raw, hand, scale, noise=noise[:1], group_templates=method.group_templates)
