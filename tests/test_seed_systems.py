"""Issue 14, parts 1, 2 and 6: Lester et al.'s context inits and prompt ensembles, Qin & Eisner's mixtures of
soft prompts, InfoPrompt's regularisers. Each test checks the defining mechanism numerically."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones.deep_prompts import DeepPrompts
from vlprompt.errors import VLPromptError
from vlprompt.methods import build_method
from vlprompt.methods.infoprompt import clamped_infonce, expected_class_feature, head_loss, representation_loss
from vlprompt.methods.mixture import effective_number, m_step, responsibilities
from vlprompt.methods.prompt_ensemble import combine_probabilities
from vlprompt.prompts.context import frequent_token_ids, initial_context, word_embeddings
from vlprompt.zoo import load_prompt, save_prompt

CLASSES = ["red circle", "blue square", "green star"]


def _features(backbone, n: int = 6) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    with torch.no_grad():
        images = torch.randn(n, 3, *backbone.image_size)
        return {"features": F.normalize(backbone.encode_image(images), dim=-1), "labels": torch.arange(n) % 3}


def _embedding_table(backbone) -> torch.Tensor:
    return backbone.model.token_embedding.weight.detach().float()


# -- context inits (Lester et al.) ------------------------------------------------------------------------


def test_uniform_init_is_uniform_in_half_range(tiny_vit):
    ctx = initial_context(tiny_vit, 64, strategy="uniform", seed=3)
    assert ctx.shape == (64, tiny_vit.identity.width)
    assert float(ctx.min()) >= -0.5 and float(ctx.max()) <= 0.5
    assert abs(float(ctx.mean())) < 0.02 and abs(float(ctx.var()) - 1 / 12) < 0.01  # U(-.5, .5): var 1/12
    torch.testing.assert_close(ctx, initial_context(tiny_vit, 64, strategy="uniform", seed=3), rtol=0, atol=0)


def test_frequent_tokens_are_the_earliest_bpe_word_merges(tiny_vit):
    tokenizer = tiny_vit._tokenizer
    ids = frequent_token_ids(tiny_vit)
    assert len(ids) == 5000 and len(set(ids.tolist())) == 5000
    assert tokenizer.decoder[int(ids[0])] == "the</w>"  # the first word-final merge
    assert all(tokenizer.decoder[int(i)].endswith("</w>") and int(i) >= 512 for i in ids[:50])
    assert ids.tolist() == sorted(ids.tolist())  # by merge rank


def test_vocab_init_copies_embeddings_of_frequent_tokens(tiny_vit):
    ctx = initial_context(tiny_vit, 8, strategy="vocab", seed=0)
    table = _embedding_table(tiny_vit)
    population = set(frequent_token_ids(tiny_vit).tolist())
    for row in ctx:
        matches = (table == row).all(dim=-1).nonzero().flatten().tolist()
        assert matches and set(matches) & population
    assert not torch.equal(ctx, initial_context(tiny_vit, 8, strategy="vocab", seed=1))


def test_class_label_init_equals_class_name_embeddings(tiny_vit):
    ctx = initial_context(tiny_vit, 5, strategy="class_label", classnames=CLASSES, seed=0)
    for i, name in enumerate(CLASSES):  # multi-token names averaged, as Lester et al.
        torch.testing.assert_close(ctx[i], word_embeddings(tiny_vit, name).mean(0), rtol=0, atol=0)
    vocab = initial_context(tiny_vit, 2, strategy="vocab", seed=0)
    torch.testing.assert_close(ctx[3:], vocab, rtol=0, atol=0)  # the rest: sampled vocabulary
    cycled = initial_context(tiny_vit, 5, strategy="class_label", classnames=CLASSES, class_label_fill="cycle")
    torch.testing.assert_close(cycled[3], cycled[0], rtol=0, atol=0)
    torch.testing.assert_close(cycled[4], cycled[1], rtol=0, atol=0)  # (`and` after a None skipped this one)


def test_coop_records_its_init_and_refuses_unknown_ones(tiny_vit, tmp_path):
    method = build_method("coop", tiny_vit, CLASSES, {"n_ctx": 3, "init": "class_label", "init_seed": 0})
    torch.testing.assert_close(method.ctx.data[0], word_embeddings(tiny_vit, "red circle").mean(0))
    assert method.result_metadata()["ctx_init"] == {"strategy": "class_label", "n_ctx": 3, "seed": 0, "words": None}
    loaded = load_prompt(save_prompt(tmp_path / "p", method), tiny_vit)
    assert loaded.config.init == "class_label" and torch.equal(loaded.ctx, method.ctx)
    with pytest.raises(VLPromptError, match="init 'gaussian' is not one of"):
        build_method("coop", tiny_vit, CLASSES, {"init": "gaussian"})
    with pytest.raises(VLPromptError, match="only used by init 'word'"):
        build_method("coop", tiny_vit, CLASSES, {"init": "vocab", "ctx_init": "a photo of a"})


# -- prompt ensembles ----------------------------------------------------------------------------------


def test_batched_member_pass_equals_separate_passes(tiny_vit):
    method = build_method("prompt_ensemble", tiny_vit, CLASSES, {"n_prompts": 3, "init": ["uniform", "vocab", "normal"],
                                                                  "init_seed": 0})
    calls = method.prompts.path_counts["shared"] + method.prompts.path_counts["plain"]
    with torch.no_grad():
        batched = method.member_features()
        assert method.prompts.path_counts["shared"] + method.prompts.path_counts["plain"] == calls + 1  # one call
        for m in range(3):
            alone = F.normalize(method.prompts.encode(ctx=method.ctx[m]), dim=-1)
            torch.testing.assert_close(batched[m], alone, rtol=0, atol=1e-5)
    assert method.result_metadata()["ensemble"]["inits"] == ["uniform", "vocab", "normal"]


def test_ensemble_of_identical_prompts_equals_one_prompt(tiny_vit):
    batch = _features(tiny_vit)
    coop = build_method("coop", tiny_vit, CLASSES, {"n_ctx": 4, "init": "uniform", "init_seed": 5})
    for combine in ("average", "vote"):
        ensemble = build_method("prompt_ensemble", tiny_vit, CLASSES, {"n_prompts": 3, "combine": combine})
        with torch.no_grad():
            ensemble.ctx.copy_(coop.ctx.data.expand(3, -1, -1))
            single = coop(batch)
            combined = ensemble(batch)
        if combine == "average":
            torch.testing.assert_close(combined, F.log_softmax(single, -1), rtol=0, atol=1e-5)
        else:
            assert torch.equal(combined.argmax(-1), single.argmax(-1))
            torch.testing.assert_close(combined.floor(), 3 * F.one_hot(single.argmax(-1), 3).float())


def test_vote_and_average_combine_by_hand():
    # three members, one image, two classes: members prefer class 0, 0, 1 (the third strongly)
    logits = torch.tensor([[[1.0, 0.0]], [[0.2, 0.0]], [[0.0, 5.0]]])
    probs = torch.softmax(logits, -1)
    average = combine_probabilities(logits, "average")
    torch.testing.assert_close(average.exp(), probs.mean(0))
    assert int(average.argmax()) == 1  # the confident member wins the average...
    vote = combine_probabilities(logits, "vote")
    assert int(vote.argmax()) == 0  # ...and loses the vote
    torch.testing.assert_close(vote, torch.tensor([[2.0, 1.0]]) + probs.mean(0))


def test_ensemble_loss_sums_member_losses(tiny_vit):
    batch = _features(tiny_vit)
    method = build_method("prompt_ensemble", tiny_vit, CLASSES, {"n_prompts": 2, "init": "uniform"}).train()
    loss, stats = method.loss(method(batch), batch)
    with torch.no_grad():
        member = method.member_logits(batch)
    expected = sum(F.cross_entropy(m, batch["labels"]) for m in member)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-5)
    assert stats["loss"] == pytest.approx(float(expected) / 2, abs=1e-5)


# -- mixtures of soft prompts (Qin & Eisner) -------------------------------------------------------------

TEMPLATES = ["a photo of a {}.", "{}", "there is a {}."]


def test_untrained_components_are_the_hand_written_templates(tiny_vit):
    method = build_method("mixture", tiny_vit, CLASSES, {"templates": TEMPLATES})
    with torch.no_grad():
        feats = method.component_features()
        for k, template in enumerate(TEMPLATES):
            hand = F.normalize(tiny_vit.encode_text([template.format(c) for c in CLASSES]), dim=-1)
            torch.testing.assert_close(feats[k], hand, rtol=0, atol=1e-5)


def test_one_hot_mixture_equals_that_prompt_alone(tiny_vit):
    batch = _features(tiny_vit)
    method = build_method("mixture", tiny_vit, CLASSES, {"templates": TEMPLATES}).eval()
    with torch.no_grad():
        for p in method.vectors.values():
            p.add_(0.01 * torch.randn_like(p))
        log_p = method.component_log_probs(batch["features"])
        for k in range(3):
            method.em_weights.copy_(F.one_hot(torch.tensor(k), 3).float())
            torch.testing.assert_close(method(batch), log_p[k], rtol=0, atol=1e-5)
        assert effective_number(method.em_weights) == pytest.approx(1.0)
        method.em_weights.fill_(1 / 3)
        torch.testing.assert_close(method(batch).exp(), log_p.exp().mean(0), rtol=0, atol=1e-5)
        assert effective_number(method.em_weights) == pytest.approx(3.0)


def test_em_step_matches_hand_computed_responsibilities():
    # w = (0.5, 0.5); p_k(y|x): x1 -> (0.8, 0.2), x2 -> (0.3, 0.6)
    log_w = torch.log(torch.tensor([0.5, 0.5]))
    log_p = torch.log(torch.tensor([[0.8, 0.2], [0.3, 0.6]]))
    r = responsibilities(log_w, log_p)
    torch.testing.assert_close(r, torch.tensor([[0.8, 0.2], [1 / 3, 2 / 3]]))
    torch.testing.assert_close(m_step(r), torch.tensor([(0.8 + 1 / 3) / 2, (0.2 + 2 / 3) / 2]))
    # unequal weights: w = (0.25, 0.75) -> r_x1 = (0.2, 0.15) / 0.35
    r2 = responsibilities(torch.log(torch.tensor([0.25, 0.75])), log_p[:1])
    torch.testing.assert_close(r2, torch.tensor([[0.2 / 0.35, 0.15 / 0.35]]))


def test_em_training_step_uses_responsibilities_and_refits_weights(tiny_vit):
    batch = _features(tiny_vit)
    method = build_method("mixture", tiny_vit, CLASSES, {"templates": TEMPLATES}).train()
    logits = method(batch)
    with torch.no_grad():
        log_p = method.component_log_probs(batch["features"])
        log_p_y = log_p[:, torch.arange(6), batch["labels"]].t()  # [B, K]
        r = torch.softmax(log_p_y + math.log(1 / 3), dim=-1)
    loss, stats = method.loss(logits, batch)
    torch.testing.assert_close(loss.detach(), -(r * log_p_y).sum(-1).mean(), rtol=0, atol=1e-5)
    torch.testing.assert_close(method.em_weights, r.sum(0) / r.sum(), rtol=0, atol=1e-6)  # closed-form M-step
    assert stats["effective_prompts"] == pytest.approx(effective_number(r.sum(0)), abs=1e-5)


def test_mixture_checkpoint_keeps_em_weights(tiny_vit, tmp_path):
    batch = _features(tiny_vit)
    method = build_method("mixture", tiny_vit, CLASSES, {"templates": TEMPLATES}).train()
    method.loss(method(batch), batch)
    method.eval()
    loaded = load_prompt(save_prompt(tmp_path / "m", method), tiny_vit)
    torch.testing.assert_close(loaded.em_weights, method.em_weights, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), method(batch), rtol=0, atol=1e-6)
    assert loaded.result_metadata()["mixture"]["effective_prompts"] < 3.0


def test_weight_modes_and_zero_deep_perturbation(tiny_vit):
    batch = _features(tiny_vit)
    plain = build_method("mixture", tiny_vit, CLASSES, {"templates": TEMPLATES}).eval()
    for mode in ("sgd", "data", "uniform"):  # zero-initialised weights are uniform
        other = build_method("mixture", tiny_vit, CLASSES, {"templates": TEMPLATES, "weights": mode}).eval()
        with torch.no_grad():
            torch.testing.assert_close(other(batch), plain(batch), rtol=0, atol=1e-5)
    deep = build_method("mixture", tiny_vit, CLASSES, {"templates": TEMPLATES, "deep": True}).eval()
    assert sorted(deep.deep) == ["deep0", "deep2"]  # "{}" has no prefix to perturb
    assert deep.deep["deep0"].shape == (1, 4, tiny_vit.identity.width)  # 2 blocks: offsets at block 1
    with torch.no_grad():
        torch.testing.assert_close(deep(batch), plain(batch), rtol=0, atol=1e-5)  # zero offsets: no change
        deep.deep["deep0"].copy_(torch.randn_like(deep.deep["deep0"]))  # (a constant shift would vanish in LayerNorm)
        assert not torch.allclose(deep.component_features()[0], plain.component_features()[0], atol=1e-3)
        torch.testing.assert_close(deep.component_features()[1], plain.component_features()[1], rtol=0, atol=1e-5)


def test_additive_deep_prompts_add_to_the_states(tiny_vit):
    ids = tiny_vit.tokenize(["a photo of a dog."])
    embeds, eot = tiny_vit.embed_tokens(ids), tiny_vit.eot_index(ids)
    with torch.no_grad():
        zero = DeepPrompts((torch.zeros(4, tiny_vit.identity.width),), start=1, additive=True)
        torch.testing.assert_close(tiny_vit.encode_text_embeds(embeds, eot, deep=zero),
                                   tiny_vit.encode_text_embeds(embeds, eot), rtol=0, atol=1e-6)
        # adding x to the states equals replacing them by (state + x): compute the states after block 0
        model = tiny_vit.model
        length = int(eot.max()) + 1
        x = embeds[:, :length] + model.positional_embedding[:length]
        after0 = model.transformer.resblocks[0](x, attn_mask=model.attn_mask[:length, :length])
        offset = torch.randn(4, tiny_vit.identity.width)
        added = DeepPrompts((offset,), start=1, additive=True)
        replaced = DeepPrompts((after0[0, 1:5] + offset,), start=1)
        torch.testing.assert_close(tiny_vit.encode_text_embeds(embeds, eot, deep=added),
                                   tiny_vit.encode_text_embeds(embeds, eot, deep=replaced), rtol=0, atol=1e-5)


# -- InfoPrompt -------------------------------------------------------------------------------------------


def test_infonce_terms_by_hand():
    # unit vectors in 2-D, scale 1: prompt p = (1, 0); classes (1, 0) and (0, 1) -> head h = (1, 1)/sqrt(2)
    p = torch.tensor([1.0, 0.0])
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    images = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    s = 1 / math.sqrt(2)
    # row 1: pos s, neg s -> -log(1/2); row 2: pos s, neg -s -> -log sigmoid(2s)
    expected = (math.log(2) + math.log(1 + math.exp(-2 * s))) / 2
    assert float(head_loss(p, classes, images, 1.0)) == pytest.approx(expected, abs=1e-6)
    # representation: prompted z = p, unprompted z0 = (0, 1): pos 1, neg 0 -> -log sigmoid(1)
    rep = representation_loss(p, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 1.0)
    assert float(rep) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # the clamp: a hopeless row costs at most `clamp`
    assert float(clamped_infonce(torch.tensor([-10.0]), torch.tensor([[10.0]]), 2.0)) == pytest.approx(2.0)
    # expected class feature: equal logits -> the normalised mean of the class features
    z = expected_class_feature(torch.tensor([[1.0, 1.0]]), classes, 1.0)
    torch.testing.assert_close(z, torch.tensor([[s, s]]))


def test_infoprompt_adds_its_terms_to_coop(tiny_vit):
    batch = _features(tiny_vit)
    coop = build_method("coop", tiny_vit, CLASSES, {"n_ctx": 4, "ctx_init": "a photo of a"}).train()
    off = build_method("infoprompt", tiny_vit, CLASSES, {"head_weight": 0.0, "rep_weight": 0.0}).train()
    torch.testing.assert_close(off.loss(off(batch), batch)[0], coop.loss(coop(batch), batch)[0], rtol=0, atol=1e-6)
    on = build_method("infoprompt", tiny_vit, CLASSES, {"head_weight": 0.5, "rep_weight": 2.0}).train()
    loss, stats = on.loss(on(batch), batch)
    assert loss.item() == pytest.approx(stats["ce"] + 0.5 * stats["head_loss"] + 2.0 * stats["rep_loss"], abs=1e-5)
    with torch.no_grad():
        text, image, scale = on.class_features(), batch["features"], tiny_vit.logit_scale
        prompt = F.normalize(tiny_vit.encode_text(["a photo of a."]), dim=-1)[0]  # untrained context = these words
        torch.testing.assert_close(F.normalize(on.prompt_feature(), dim=-1), prompt, rtol=0, atol=1e-5)
        assert stats["head_loss"] == pytest.approx(float(head_loss(prompt, text, image, scale)), abs=1e-5)
    loss.backward()
    assert on.ctx.grad is not None and on.ctx.grad.abs().sum() > 0


def test_bench_prompt_ensemble_smoke():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_prompt_ensemble.py"
    spec = importlib.util.spec_from_file_location("bench_prompt_ensemble", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--preset", "test"])["rows"]
    assert rows[0]["members"] == 2 and rows[0]["loss_diff"] < 1e-4  # one batched call = the separate calls
