"""The CZSL training pipeline as released: augmentation, best-validation-epoch selection, name cleaning,
the open-world rule (multiply by default, recorded), the threshold fallback, the curves and the public
open-world protocol on a score matrix."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T

from vlprompt.cli import main
from vlprompt.config import ExperimentConfig
from vlprompt.czsl.augment import czsl_train_transform
from vlprompt.czsl.data import CZSLDataset
from vlprompt.czsl.evaluate import EvalOptions, evaluate_phase, image_features, stream_scores, validation_loss
from vlprompt.czsl.feasibility import backbone_vectors, feasibility_scores
from vlprompt.czsl.metrics import NO_THRESHOLD, pick_threshold
from vlprompt.czsl.protocol import open_world_protocol, seen_mask_of
from vlprompt.czsl.synthetic import write_miniature
from vlprompt.engine.cache import FeatureCache
from vlprompt.engine.selection import EpochSelector
from vlprompt.engine.views import SeededImages
from vlprompt.methods import PairLabels, build_method
from vlprompt.methods.pairs import clean_name, mean_token_embeddings
from vlprompt.runner import run_experiment
from vlprompt.tasks.czsl import plan
from vlprompt.zoo.checkpoint import load_prompt


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    return write_miniature(tmp_path_factory.mktemp("czsl") / "mit", "mit-states")


def _config(mini, tmp_path, **sections) -> ExperimentConfig:
    cfg = {"task": "czsl", "dataset": {"name": "mini", "root": str(mini)}, "method": {"name": "csp"},
           "backbone": {"name": "vlprompt-test-vit", "pretrained": None},
           "train": {"optimizer": "adam", "lr": 1e-2, "epochs": 3, "batch_size": 4, "warmup_epochs": 0,
                     "device": "cpu", "progress": False},
           "eval": {"phases": ["test"], "worlds": ["closed", "open"], "feasibility": "backbone", "threshold_trials": 5},
           "output_dir": str(tmp_path / "run")}
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return ExperimentConfig.from_dict(cfg)


def test_released_augmentation_and_switch(tiny_vit, mini, tmp_path):
    aug = czsl_train_transform(tiny_vit)
    kinds = [type(t) for t in aug.transforms]
    at = kinds.index(T.RandomHorizontalFlip)
    assert kinds[at : at + 3] == [T.RandomHorizontalFlip, T.RandomPerspective, T.RandomRotation]
    assert isinstance(aug.transforms[at + 3], T.ToTensor) and aug.transforms[at + 2].degrees == [-5.0, 5.0]
    on = plan(_config(mini, tmp_path))  # plans run before the backbone loads: the transform is a factory
    assert on.train_transform(tiny_vit).transforms[at + 1].distortion_scale == 0.5  # torchvision default, as released
    assert on.train_overrides == {"augment_views": 8}  # cached-feature methods: 8 augmented views
    assert on.summary["czsl_rules"] == {"augment": True, "select": "best_val", "select_metric": "AUC",
                                        "feasibility_rule": "multiply"}
    off = plan(_config(mini, tmp_path, protocol={"augment": False}))
    assert off.train_transform(tiny_vit) is tiny_vit.eval_transform and off.train_overrides == {}
    mine = plan(_config(mini, tmp_path, train={"augment_views": 2}))
    assert mine.train_overrides == {}  # the user's own views count wins
    with pytest.raises(Exception, match="protocol.select_metric: 'acc' is not one of"):
        _config(mini, tmp_path, protocol={"select_metric": "acc"})


def test_epoch_selector_keeps_the_first_best_epoch(tiny_vit):
    labels = PairLabels.create(["red", "wet"], ["apple", "car"], torch.tensor([[0, 0], [1, 1]]))
    csp = build_method("csp", tiny_vit, labels)
    scores = iter([1.0, 3.0, 3.0, 2.0])
    selector = EpochSelector("AUC", lambda method, cache: next(scores))
    states = []
    for epoch in range(1, 5):
        with torch.no_grad():
            csp.vocab.fill_(float(epoch))
        states.append(csp.vocab.detach().clone())
        selector.after_epoch(epoch, csp)
    selector.restore(csp)
    assert selector.best_epoch == 2 and torch.equal(csp.vocab, states[1])  # ties keep the earlier epoch
    assert selector.summary() == {"rule": "best_val", "metric": "AUC", "best_epoch": 2, "values": [1.0, 3.0, 3.0, 2.0]}


@pytest.mark.parametrize(("select", "metric"), [("best_val", "best_unseen"), ("best_val", "loss"), ("final", "AUC")])
def test_runs_select_the_validation_epoch_and_record_the_rules(tiny_vit, mini, tmp_path, select, metric):
    torch.manual_seed(0)
    config = _config(mini, tmp_path, protocol={"select": select, "select_metric": metric, "augment_views": 2})
    out = run_experiment(config, backbone=tiny_vit, cache=FeatureCache(tmp_path / "cache"))
    training = out["training"]
    if select == "final":
        assert "selection" not in training and out["czsl_rules"]["select_metric"] is None
        return
    sel = training["selection"]
    assert sel["metric"] == metric and len(sel["values"]) == 3
    assert sel["best_epoch"] == 1 + max(range(3), key=lambda i: (sel["values"][i], -i))
    assert out["metrics"]["open/test"]["feasibility_rule"] == "multiply"
    saved = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert saved["czsl_rules"]["select_metric"] == metric
    # the kept prompt is the best epoch's: re-scoring it on val gives the recorded value
    if metric != "loss":
        ds = CZSLDataset.load(mini, open_world=False, name="mini")
        method = load_prompt(tmp_path / "run" / "prompt.safetensors", tiny_vit)
        val = evaluate_phase(method, ds, "val", EvalOptions(), cache=FeatureCache(tmp_path / "cache"))
        assert val[metric] == pytest.approx(max(sel["values"]), abs=1e-6)


def test_name_cleaning_follows_the_released_rule(tiny_vit):
    assert clean_name("Faux.Fur") == "faux fur" and clean_name("traffic_light") == "traffic_light"
    assert clean_name("traffic_light", underscores=True) == "traffic light"
    released = mean_token_embeddings(tiny_vit, ["traffic_light"])
    spaced = mean_token_embeddings(tiny_vit, ["traffic_light"], underscores=True)
    assert not torch.allclose(released, spaced)
    labels = PairLabels.create(["red"], ["traffic_light"], torch.tensor([[0, 0]]))
    assert torch.equal(build_method("csp", tiny_vit, labels).vocab[1], released[0])
    opt = build_method("csp", tiny_vit, labels, {"underscores_as_spaces": True})
    assert torch.equal(opt.vocab[1], spaced[0])


def _scores(n_img: int = 12, seed: int = 0):
    pairs = torch.tensor(list(itertools.product(range(3), range(3))))
    train = pairs[[0, 4, 8, 1]]
    g = torch.Generator().manual_seed(seed)
    gt = torch.randint(len(pairs), (n_img,), generator=g)
    scores = torch.rand(n_img, len(pairs), generator=g) * 10 + 20
    feas = torch.rand(len(pairs), generator=g) * 2 - 1
    return scores, gt, pairs, train, feas


def test_open_world_protocol_on_a_score_matrix():
    scores, gt, pairs, train, feas = _scores()
    seen = seen_mask_of(pairs, train)
    assert seen.nonzero()[:, 0].tolist() == [0, 1, 4, 8]
    out = open_world_protocol(scores, gt, pairs, train, feas, trials=7)
    assert out["feasibility_rule"] == "multiply" and len(out["threshold_aucs"]) == 7
    best = pick_threshold(out["threshold_aucs"], out["threshold_grid"])
    assert out["threshold"] == pytest.approx(out["threshold_grid"][best])
    again = open_world_protocol(scores, gt, pairs, train, feas, threshold=out["threshold"])
    assert again["AUC"] == out["AUC"] and again["curve_seen"] == out["curve_seen"]
    assert len(out["biaslist"]) == len(out["curve_seen"]) == len(out["curve_hm"]) == len(out["curve_unseen"])
    assert max(out["curve_hm"]) == pytest.approx(out["best_hm"])
    masked = open_world_protocol(scores, gt, pairs, train, feas, threshold=out["threshold"], rule="mask")
    assert masked["feasibility_rule"] == "mask"
    # every threshold gives AUC 0 (no unseen image can be right): threshold and statistics both at -10
    wrong = scores.clone()
    wrong[torch.arange(len(gt)), gt] = -100.0
    none = open_world_protocol(wrong, gt, pairs, train, feas, trials=7)
    assert max(none["threshold_aucs"]) == 0 and none["threshold"] == NO_THRESHOLD
    at_start = open_world_protocol(wrong, gt, pairs, train, feas, threshold=NO_THRESHOLD)
    assert {k: none[k] for k in at_start if k != "threshold"} == {k: at_start[k] for k in at_start if k != "threshold"}
    with pytest.raises(Exception, match="scores must be"):
        open_world_protocol(scores[:, :4], gt, pairs, train, feas)


def test_streamed_open_world_search_equals_the_public_protocol(tiny_vit, mini, tmp_path):
    torch.manual_seed(0)
    ds = CZSLDataset.load(mini, open_world=True, name="mini")
    csp = build_method("csp", tiny_vit, PairLabels.create(ds.attrs, ds.objs, ds.train_pair_index)).eval()
    feas = feasibility_scores(backbone_vectors(tiny_vit, ds.attrs), backbone_vectors(tiny_vit, ds.objs),
                              ds.train_pair_index, ds.all_pair_index)
    options = EvalOptions(threshold_trials=6)
    cache = FeatureCache(tmp_path / "cache")
    streamed = evaluate_phase(csp, ds, "val", options, feas, cache=cache, search_threshold=True)
    state = csp.prepare_eval(ds.all_pair_index)
    feats = image_features(csp, ds.items["val"], state, options, cache)
    dense = torch.cat([b for _, b in stream_scores(csp, state, feats, len(ds.all_pair_index), 10**6)], dim=1)
    public = open_world_protocol(dense, ds.labels("val")["pair"], ds.all_pair_index, ds.train_pair_index, feas, trials=6)
    assert streamed["threshold"] == pytest.approx(public["threshold"])
    for key in ("AUC", "best_hm", "best_seen", "best_unseen", "feasibility_rule"):
        assert streamed[key] == pytest.approx(public[key]), key
    assert streamed["threshold_aucs"] == pytest.approx(public["threshold_aucs"])


def test_czsl_eval_writes_the_curve_plot(mini, tmp_path):
    png = tmp_path / "curves.png"
    code = main(["czsl", "eval", "--config", "czsl/world", "--root", str(mini), "--out", str(tmp_path / "zs"),
                 "--plot", str(png), "backbone.name=vlprompt-test-vit", "backbone.pretrained=none",
                 "method.name=zero-shot", "eval.worlds=[closed]", "eval.phases=[test]"])
    assert code == 0 and png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def test_validation_loss_encodes_the_pairs_text_once(tiny_vit, mini, monkeypatch):
    """The loss of best-epoch selection reuses the pairs' text across batches, with the same value as
    re-encoding it per batch (eval mode: the text does not depend on the images)."""
    torch.manual_seed(0)
    ds = CZSLDataset.load(mini, open_world=False, name="mini")
    labels = PairLabels.create(ds.attrs, ds.objs, ds.train_pair_index)
    dfsp = build_method("dfsp", tiny_vit, labels, {"fusion": "txt2img"})
    options = EvalOptions(batch_size=2)
    calls = []
    encode = dfsp._text_sides
    monkeypatch.setattr(dfsp, "_text_sides", lambda pairs: calls.append(len(pairs)) or encode(pairs))
    reused = validation_loss(dfsp, ds, "val", labels, options)
    assert calls == [len(ds.all_pair_index)] and len(ds.items["val"]) > 2
    dfsp.eval()
    dfsp.set_pairs(ds.all_pair_index)
    y = ds.labels("val")["pair"]
    with torch.no_grad():
        per_batch = []
        for images, _, index in DataLoader(SeededImages(ds.items["val"], tiny_vit.eval_transform, int), batch_size=2):
            batch = {"images": images, "labels": y[index]}
            per_batch.append(float(dfsp.loss(dfsp(batch), batch)[0]))
    assert len(calls) == 1 + len(per_batch)
    assert reused == pytest.approx(sum(per_batch) / len(per_batch), rel=1e-5)
