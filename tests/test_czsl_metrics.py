"""The CZSL protocol on hand-computed score matrices; streaming == dense; open-world masking."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vlprompt.czsl.feasibility import feasibility_scores, glove_vectors
from vlprompt.czsl.metrics import (
    apply_feasibility,
    dense_metrics,
    feasibility_thresholds,
    summarize,
    summary_metrics,
)

# 2 attrs x 2 objs, pairs in sorted order: 0=(a0,o0) 1=(a0,o1) 2=(a1,o0) 3=(a1,o1); seen = {0, 1}
PAIRS = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
SEEN = torch.tensor([True, True, False, False])


def both(scores, gt, seen=SEEN, closed=None, pairs=PAIRS):
    gt = torch.tensor(gt)
    d = dense_metrics(scores, pairs[gt, 0], pairs[gt, 1], gt, pairs, seen, closed)
    s = summary_metrics(summarize(scores, gt, seen, closed, k=2, chunk=3), pairs[gt, 0], pairs[gt, 1], gt, pairs, seen)
    for key, value in d.items():
        other = s[key]
        if isinstance(value, list):
            same = [a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(value, other)]
            assert len(value) == len(other) and all(same), key
        else:
            assert value == other or (math.isnan(value) and math.isnan(other)), key
    return d


def test_hand_computed_sweep():
    S = torch.tensor([[5.0, 1, 4, 0], [0, 3, 2, 1], [3, 0, 2, 1], [1, 0, 0, 4]])
    r = both(S, [0, 1, 2, 3])
    # bias 0: img2 -> pair 0 (attr wrong, obj right); bias 1e3: seen imgs -> pair 2, unseen both right.
    # gaps of correct unseen: 3-2=1, 1-4=-3 -> biases [-3.0001, 0.9999]:
    #   seen/unseen = (1, 0), (1, 0.5), then the 1e3 point (0, 1)
    assert r["curve_seen"] == [100.0, 100.0, 0.0]
    assert r["curve_unseen"] == [0.0, 50.0, 100.0]
    assert r["AUC"] == pytest.approx(75.0)  # 0.5 * (1 + 1) / 2 + 0.5 * (1 + 0) / 2
    assert r["best_hm"] == pytest.approx(200 / 3)  # 2 * 1 * 0.5 / 1.5
    assert r["biasterm"] == pytest.approx(0.9999, abs=1e-6)
    assert (r["best_seen"], r["best_unseen"]) == (100.0, 100.0)
    assert (r["attr_acc"], r["obj_acc"]) == (75.0, 100.0)


def test_ties_break_to_lowest_index():
    S = torch.zeros(2, 4)
    r = both(S, [0, 2])
    # bias 0 -> pair 0 for both; bias 1e3 -> pair 2 for both; gap 0 -> bias -1e-4 -> pair 0 again
    assert r["curve_seen"] == [100.0, 0.0] and r["curve_unseen"] == [0.0, 100.0]
    assert r["AUC"] == pytest.approx(50.0) and r["best_hm"] == 0.0
    assert r["biasterm"] == pytest.approx(-1e-4)


def test_all_correct():
    S = torch.zeros(4, 4)
    S[0, 0] = S[1, 1] = 10.0
    S[2, 2], S[3, 3] = 10.0, 5.0  # unseen gaps -10 and -5
    r = both(S, [0, 1, 2, 3])
    assert (r["attr_acc"], r["obj_acc"], r["best_seen"], r["best_unseen"]) == (100.0, 100.0, 100.0, 100.0)
    assert r["curve_seen"] == [100.0, 100.0, 0.0] and r["curve_unseen"] == [0.0, 50.0, 100.0]
    assert r["AUC"] == pytest.approx(75.0) and r["best_hm"] == pytest.approx(200 / 3)


def test_all_wrong():
    S = torch.zeros(4, 4)
    S[0, 1] = S[1, 0] = 5.0  # seen images predict the other seen pair
    S[2, 3] = S[3, 2] = 5.0  # unseen images predict the other unseen pair
    r = both(S, [0, 1, 2, 3])
    assert r["AUC"] == 0.0 and r["best_hm"] == 0.0 and r["best_unseen"] == 0.0 and r["best_seen"] == 0.0
    assert r["curve_seen"] == [0.0] and r["biasterm"] == 1e3  # no correct unseen image: empty bias list


def test_empty_unseen_set_follows_the_reference():
    S = torch.tensor([[2.0, 1, 0, 0], [0, 2, 1, 0]])
    r = both(S, [0, 1])
    # reference: unseen accuracy of an empty set is NaN, the curve is one point -> AUC 0, HM NaN
    assert r["n_unseen_images"] == 0 and r["AUC"] == 0.0
    assert math.isnan(r["best_unseen"]) and math.isnan(r["best_hm"])
    assert r["attr_acc"] == 100.0 and r["biasterm"] == 1e3


def test_closed_mask_excludes_other_phase_pairs():
    S = torch.tensor([[0.0, 0, 9, 1], [0, 0, 9, 1]])
    closed = torch.tensor([True, True, False, True])  # pair 2 belongs to the other phase
    r = both(S, [3, 3], closed=closed)
    assert r["best_unseen"] == 100.0 and r["obj_acc"] == 100.0


def test_streaming_equals_dense_on_random_matrices():
    torch.manual_seed(0)
    pairs = torch.tensor(list(itertools.product(range(4), range(5))))
    for trial in range(30):
        seen = torch.rand(20) < 0.4
        seen[0] = True
        closed = seen | (torch.rand(20) < 0.5)
        cand = closed.nonzero().squeeze(1)
        gt = cand[torch.randint(len(cand), (25,))]
        S = torch.randint(0, 4, (25, 20)).float() if trial % 2 else torch.randn(25, 20) * 20
        both(S, gt.tolist(), seen, closed, pairs)


def test_open_world_masking():
    scores = torch.tensor([[3.0, 2.0, 9.0, 1.0]])
    feas = torch.tensor([0.0, 0.0, 0.1, 0.5])
    masked = apply_feasibility(scores, feas, SEEN, threshold=0.3, rule="mask")
    assert masked.tolist() == [[3.0, 2.0, float("-inf"), 1.0]]
    legacy = apply_feasibility(scores, feas, SEEN, threshold=0.3, rule="multiply")
    assert legacy.tolist() == [[3.0, 2.0, 0.0, 1.0]]
    doubled = apply_feasibility(scores, feas, SEEN, threshold=-0.1, legacy=True)  # published quirk (older keyword)
    assert doubled.tolist() == [[6.0, 4.0, 9.0, 1.0]]
    # masking the infeasible top-scoring pair makes the unseen image correct at bias 1e3
    gt = torch.tensor([3])
    before = dense_metrics(scores, PAIRS[gt, 0], PAIRS[gt, 1], gt, PAIRS, SEEN)
    after = dense_metrics(masked, PAIRS[gt, 0], PAIRS[gt, 1], gt, PAIRS, SEEN)
    assert before["best_unseen"] == 0.0 and after["best_unseen"] == 100.0
    grid = feasibility_thresholds(feas, SEEN, trials=5)
    assert grid[0] == pytest.approx(0.1) and grid[-1] == pytest.approx(0.5) and len(grid) == 5


def test_feasibility_hand_computed(tmp_path):
    attrs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    objs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    train = torch.tensor([[0, 0], [0, 1], [1, 0]])
    allp = torch.tensor(list(itertools.product(range(3), range(2))))
    f = feasibility_scores(attrs, objs, train, allp).view(3, 2)
    assert f[0, 0] == 0 and f[0, 1] == 0 and f[1, 0] == 0  # seen
    assert f[1, 1] == pytest.approx(0.0)  # (cos(o1,o0) + cos(a1,a0)) / 2
    assert f[2, 1] == pytest.approx((-1 + 2**-0.5) / 2)  # no (a2, o') in train -> -1
    assert f[2, 0] == pytest.approx((-1 + 2**-0.5) / 2)  # attr term: a0 with o0 -> cos(a2, a0)
    glove = tmp_path / "glove.txt"
    glove.write_text("faux 1 0\nfur 0 1\nred 2 2\n")
    v = glove_vectors(glove, ["Faux.Fur", "red"])  # UT-Zappos custom map: faux_fur -> mean(faux, fur)
    assert v.tolist() == [[0.5, 0.5], [2.0, 2.0]]
