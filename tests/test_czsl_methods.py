"""Pair methods (zero-shot, CoOp prefix, CSP, DFSP): prompts, decomposition, fusion, training, eval."""

from __future__ import annotations

import pytest
import torch

from vlprompt.cli import main
from vlprompt.config import ExperimentConfig
from vlprompt.czsl.data import CZSLDataset
from vlprompt.czsl.evaluate import EvalOptions, evaluate_phase, image_features, stream_scores
from vlprompt.czsl.metrics import dense_metrics
from vlprompt.czsl.synthetic import write_miniature
from vlprompt.engine.cache import FeatureCache
from vlprompt.methods import PairLabels, build_method
from vlprompt.methods.dfsp import DFSP, image_token_count
from vlprompt.methods.pairs import group_mean, mean_token_embeddings
from vlprompt.runner import run_experiment

ATTRS, OBJS = ["red", "wet", "old"], ["apple", "car"]


def run_czsl(cfg: dict, output_dir: str, **kwargs) -> dict:
    return run_experiment(ExperimentConfig.from_dict({"task": "czsl", **cfg, "output_dir": output_dir}), **kwargs)
PAIRS = torch.tensor([[0, 0], [1, 1], [2, 0]])


def test_group_mean_vectorised_and_nan_free():
    values = torch.arange(12.0).view(4, 3)
    groups = torch.tensor([0, 2, 0, 2])
    out = group_mean(values, groups, 4, empty=-7.0)
    assert torch.equal(out[0], (values[0] + values[2]) / 2) and torch.equal(out[2], (values[1] + values[3]) / 2)
    assert (out[1] == -7).all() and (out[3] == -7).all() and not out.isnan().any()
    cols = group_mean(values.t(), groups, 4, dim=1)  # along another axis
    assert torch.equal(cols.t()[0], out[0]) and (cols[:, 1] == 0).all()


def test_zero_shot_and_csp_prompts_match_the_text_tower(tiny_vit):
    zs = build_method("zero-shot", tiny_vit, PairLabels.create(ATTRS, OBJS, PAIRS))
    ref = tiny_vit.encode_text(["a photo of red apple", "a photo of wet car", "a photo of old apple"])
    assert torch.allclose(zs.pair_text_features(PAIRS), ref, atol=1e-5)
    csp = build_method("csp", tiny_vit, PairLabels.create(ATTRS, OBJS, PAIRS)).eval()
    # single-token words: CSP's mean-BPE init is the word's embedding, so the prompt equals the text
    assert torch.allclose(csp.pair_text_features(PAIRS), ref, atol=1e-5)
    vocab = mean_token_embeddings(tiny_vit, ["Faux.Fur"])
    ids = tiny_vit.tokenize(["faux fur"])[0]
    emb = tiny_vit.embed_tokens(ids[None])[0, 1 : int(tiny_vit.eot_index(ids[None])[0])]
    assert torch.allclose(vocab[0], emb.mean(0), atol=1e-6)
    assert [n for n, p in csp.named_parameters() if p.requires_grad] == ["vocab"]
    coop = build_method("coop", tiny_vit, PairLabels.create(ATTRS, OBJS, PAIRS)).eval()
    assert [n for n, p in coop.named_parameters() if p.requires_grad] == ["ctx"]
    assert torch.allclose(coop.pair_text_features(PAIRS), ref, atol=1e-5)  # ctx starts at "a photo of"


def test_dfsp_forward_loss_and_missing_primitive(tiny_vit):
    torch.manual_seed(0)
    dfsp: DFSP = build_method("dfsp", tiny_vit, PairLabels.create(ATTRS, OBJS, PAIRS))
    n_tokens, width = image_token_count(tiny_vit)
    # [SOS] a photo of [attr] [obj] [EOT] + one padding position: the released context length 8
    assert dfsp.decompose_level == "tokens" and int(dfsp.prompt.assembler.eot_index[0]) + 1 == 7
    seq = dfsp.text_length
    assert seq == 8 and dfsp.pair_token_states(PAIRS)[0].shape[1] == 8
    assert dfsp.fusion.n_tokens == n_tokens + 1 and dfsp.fusion.txt2img_2.in_features == (len(ATTRS) + len(OBJS)) * seq
    # the current pairs leave attribute "wet" and object "car" without a pair: no NaN anywhere
    dfsp.set_pairs(torch.tensor([[0, 0], [2, 0]]))
    images = torch.randn(3, 3, *tiny_vit.image_size)
    batch = {"images": images, "labels": torch.tensor([0, 1, 0])}
    logits = dfsp(batch)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    assert (dfsp._aux["attr"][:, 1] == dfsp.config.empty_logit).all()
    loss, stats = dfsp.loss(logits, batch)
    assert torch.isfinite(loss)
    expected = stats["ce_pair"] + 0.01 * stats["ce_prim"] + 0.1 * stats["ce_sp"]
    assert stats["loss"] == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert dfsp.image_level == "tokens" and not hasattr(dfsp.fusion, "out")  # the tower's own head pools
    for name in ("ctx", "vocab", "fusion.txt2img_2.weight", "fusion.cross.attn.in_proj_weight"):
        grad = dict(dfsp.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all(), name


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_miniature(tmp_path_factory.mktemp("czsl") / "mit", "mit-states")


@pytest.mark.parametrize("name", ["csp", "dfsp"])
def test_streamed_evaluation_equals_dense_protocol(tiny_vit, mini, name, tmp_path):
    torch.manual_seed(0)
    ds = CZSLDataset.load(mini)
    method = build_method(name, tiny_vit, PairLabels.create(ds.attrs, ds.objs, ds.train_pair_index)).eval()
    options = EvalOptions(pair_chunk=5, k=3)
    cache = FeatureCache(tmp_path / "cache")
    result = evaluate_phase(method, ds, "test", options, cache=cache)
    state = method.prepare_eval(ds.all_pair_index)
    feats = image_features(method, ds.items["test"], state, options, cache)
    dense = torch.cat([b for _, b in stream_scores(method, state, feats, len(ds.pairs), 100)], dim=1)
    lab = ds.labels("test")
    ref = dense_metrics(dense, lab["attr"], lab["obj"], lab["pair"], ds.all_pair_index, ds.seen_mask(), ds.closed_mask("test"))
    for key in ("AUC", "best_hm", "best_seen", "best_unseen", "attr_acc", "obj_acc"):
        assert result[key] == pytest.approx(ref[key]), key


def test_training_with_the_engine_then_open_world(tiny_vit, mini, tmp_path):
    torch.manual_seed(0)
    cfg = {"dataset": {"name": "mini", "root": str(mini)}, "method": {"name": "csp"},
           "train": {"optimizer": "adam", "lr": 1e-2, "epochs": 2, "batch_size": 4, "warmup_epochs": 0,
                     "device": "cpu", "progress": False},
           "eval": {"phases": ["test"], "worlds": ["closed", "open"], "feasibility": "backbone", "threshold_trials": 5}}
    out = run_czsl(cfg, str(tmp_path / "run"), backbone=tiny_vit, cache=FeatureCache(tmp_path / "cache"))
    assert out["training"]["train"]["epoch"] == 2 and "loss" in out["training"]["train"]
    assert set(out["metrics"]) == {"closed/test", "open/val", "open/test"}
    assert "threshold" in out["metrics"]["open/test"]
    assert (tmp_path / "run" / "experiment.json").is_file()
    # the saved prompt evaluates through the CLI
    code = main(["czsl", "eval", "--root", str(mini), "--prompt", str(tmp_path / "run" / "prompt.safetensors"),
                 "backbone.name=vlprompt-test-vit", "backbone.pretrained=none", "method.name=csp"])
    assert code == 0


def test_dfsp_trains_with_the_engine(tiny_vit, mini, tmp_path):
    torch.manual_seed(0)
    cfg = {"dataset": {"name": "mini", "root": str(mini)}, "method": {"name": "dfsp"},
           "train": {"optimizer": "adam", "lr": 1e-3, "epochs": 1, "batch_size": 6, "warmup_epochs": 0,
                     "schedule": "step3", "device": "cpu", "progress": False},
           "eval": {"phases": ["val"], "worlds": ["closed"]}}
    out = run_czsl(cfg, str(tmp_path / "run"), backbone=tiny_vit, cache=FeatureCache(tmp_path / "cache"))
    assert torch.isfinite(torch.tensor(out["training"]["train"]["loss"]))
    assert 0 <= out["metrics"]["closed/val"]["AUC"] <= 100


def test_dfsp_token_states_pool_to_the_pair_features_and_decompose_per_token(tiny_vit):
    """The token path is the text tower split in two: pooling the states gives the pair features; the
    decomposition averages each token position over the pairs sharing an attribute / an object."""
    torch.manual_seed(0)
    dfsp: DFSP = build_method("dfsp", tiny_vit, PairLabels.create(ATTRS, OBJS, PAIRS)).eval()
    states, eot = dfsp.pair_token_states(PAIRS)
    assert states.shape == (3, 8, tiny_vit.identity.width)  # context length 8: one padding state
    torch.testing.assert_close(tiny_vit.pool_text_states(states, eot), dfsp.pair_text_features(PAIRS), rtol=0, atol=1e-5)
    prims = dfsp.decompose(states, PAIRS)  # attrs red, wet, old; objs apple, car
    torch.testing.assert_close(prims[0], states[0])
    torch.testing.assert_close(prims[3], (states[0] + states[2]) / 2)  # apple: pairs 0 and 2
    torch.testing.assert_close(prims[4], states[1])
    images = torch.randn(2, 3, *tiny_vit.image_size)
    with torch.no_grad():  # the image side too: the tower split in two
        torch.testing.assert_close(tiny_vit.pool_image_states(tiny_vit.image_token_states(images)),
                                   tiny_vit.encode_image(images), rtol=0, atol=1e-5)
    labels = PairLabels.create(ATTRS, OBJS, PAIRS)
    pooled: DFSP = build_method("dfsp", tiny_vit, labels, {"decompose": "pooled", "image_side": "features"})
    assert pooled.decompose_level == "pooled" and pooled.fusion.txt2img_2.in_features == len(ATTRS) + len(OBJS)
    assert pooled.image_level == "features" and hasattr(pooled.fusion, "out")
    logits = pooled({"images": images, "labels": torch.tensor([0, 1])})
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    with pytest.raises(Exception, match="decompose 'sideways' is not one of"):
        build_method("dfsp", tiny_vit, PairLabels.create(ATTRS, OBJS, PAIRS), {"decompose": "sideways"})
