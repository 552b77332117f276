"""Chance baselines: analytic values against exact enumeration and Monte-Carlo simulation of the
same metric, and the majority predictors against hand computation."""

import itertools
import math

import numpy as np
import pytest

from cavl.metrics.chance import (majority_answer, nlvr2_majority_chance, prob_any_in_top_k,
                                 question_type_majorities, retrieval_chance, rpg_chance,
                                 vcr_chance, vqa_majority_chance, vqa_question_type_prior)
from cavl.metrics.grounding import rpg_recall
from cavl.metrics.retrieval import retrieval_recall
from cavl.metrics.vcr import vcr_accuracy


@pytest.mark.parametrize("n, m, k", [(6, 2, 1), (6, 2, 3), (7, 1, 5), (5, 4, 2), (4, 2, 10),
                                     (5, 0, 3), (8, 3, 8)])
def test_prob_any_in_top_k_matches_enumeration(n, m, k):
    right = set(range(m))
    top = list(itertools.combinations(range(n), min(k, n)))
    exact = sum(bool(right & set(t)) for t in top) / len(top)
    assert prob_any_in_top_k(n, m, k) == pytest.approx(exact)
    assert prob_any_in_top_k(n, m, k) == pytest.approx(
        1 - math.comb(n - m, min(k, n)) / math.comb(n, min(k, n)) if m else 0.0)


def test_retrieval_chance_matches_monte_carlo():
    rng = np.random.default_rng(0)
    per_image = np.array([5, 5, 5, 1, 2, 3, 5, 4])
    cap2img = rng.permutation(np.repeat(np.arange(len(per_image)), per_image))
    expected = retrieval_chance(cap2img)
    trials = [retrieval_recall(rng.random((len(per_image), len(cap2img))), cap2img)
              for _ in range(3000)]
    for key, value in expected.items():
        simulated = np.mean([t[key] for t in trials])
        tolerance = 6.0 if key == "rsum" else 1.5     # ~4 standard errors
        assert simulated == pytest.approx(value, abs=tolerance), key
    # t2i is exactly K / num_images
    assert expected["t2i_r@5"] == pytest.approx(100 * 5 / 8)
    assert expected["t2i_r@10"] == 100.0


def test_rpg_chance_matches_monte_carlo():
    rng = np.random.default_rng(1)
    gt = [[0, 0, 10, 10]]
    hit, miss = [0, 0, 10, 10], [40, 40, 50, 50]
    layouts = [(1, 11), (3, 17), (0, 6), (2, 2), (1, 0)]   # (right, wrong) candidates
    boxes = [[hit] * r + [miss] * w for r, w in layouts] + [[hit]]
    gts = [gt] * len(layouts) + [[]]                       # last phrase: no gt box
    expected, excluded = rpg_chance(boxes, gts)
    assert excluded == 1
    assert expected["upper_bound"] == pytest.approx(100 * 4 / 5)
    sums = dict.fromkeys(expected, 0.0)
    trials = 3000
    for _ in range(trials):
        scores = [rng.random(len(b)) for b in boxes]
        got, _ = rpg_recall(boxes, scores, gts)
        for key in sums:
            sums[key] += got[key]
    for key, value in expected.items():
        assert sums[key] / trials == pytest.approx(value, abs=2.0), key


def test_vcr_chance_matches_monte_carlo():
    assert vcr_chance() == {"q2a": 25.0, "qa2r": 25.0, "q2ar": 6.25}
    rng = np.random.default_rng(2)
    n = 40000
    m = vcr_accuracy(rng.integers(0, 4, n), rng.integers(0, 4, n),
                     rng.integers(0, 4, n), rng.integers(0, 4, n))
    assert m["q2a"] == pytest.approx(25.0, abs=1.0)
    assert m["qa2r"] == pytest.approx(25.0, abs=1.0)
    assert m["q2ar"] == pytest.approx(6.25, abs=0.6)


def test_vqa_majority_answer_scored_with_official_metric():
    train = ["yes", "Yes", "no", "2", "two", "yes."]           # yes ×3, 2 ×2, no ×1
    assert majority_answer(train) == "yes"
    answers = [["yes"] * 10, ["yes"] * 2 + ["no"] * 8, ["2"] * 10, ["red"] * 10]
    types = ["yes/no", "yes/no", "number", "other"]
    m = vqa_majority_chance(train, answers, types)
    assert m["accuracy"] == pytest.approx(100 * (1.0 + 0.6) / 4)
    assert m["yes/no"] == pytest.approx(80.0)
    assert m["number"] == 0.0 and m["other"] == 0.0
    train_types = ["yes/no", "yes/no", "yes/no", "number", "number", "yes/no"]
    m = vqa_majority_chance(train, answers, types, train_types, per_answer_type=True)
    assert m["number"] == 100.0                                  # "2" for number questions
    assert m["other"] == 0.0                                     # unseen type → overall "yes"
    assert m["accuracy"] == pytest.approx(100 * (1.0 + 0.6 + 1.0) / 4)


def test_nlvr2_majority_chance():
    ids = ["dev-1-0-0", "dev-1-1-0", "dev-1-0-1", "dev-2-0-0"]
    labels = np.array([True, False, True, True])
    m = nlvr2_majority_chance(ids, labels)                       # majority True
    assert m == {"accuracy": 75.0, "consistency": pytest.approx(100 * 2 / 3)}
    m = nlvr2_majority_chance(ids, labels, train_labels=np.array([False, False, True]))
    assert m == {"accuracy": 25.0, "consistency": 0.0}


def test_vqa_question_type_prior_hand_computed():
    train_types = ["how many", "how many", "how many", "is there a", "is there a",
                   "what color is the"]
    train = ["2", "two", "3", "no", "Yes", "Red."]        # overall: "2" ×2, the rest ×1
    best, overall = question_type_majorities(train_types, train)
    assert best == {"how many": "2", "is there a": "no", "what color is the": "red"}
    assert overall == "2"                                  # "is there a": tie → alphabetical
    eval_types = ["how many", "is there a", "what color is the", "what is the", "how many"]
    answers = [["2"] * 10,                                 # "2": 10 of 10 → 1.0
               ["yes"] * 7 + ["no"] * 3,                   # "no": 3 of 10 → 0.9
               ["red"] * 10,                               # "red" → 1.0
               ["blue"] * 10,                              # unseen type → "2" → 0.0
               ["3"] * 4 + ["2"] + ["4"] * 5]              # "2": 1 of 10 → 0.3
    scores = vqa_question_type_prior(train_types, train, eval_types, answers)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, [1.0, 0.9, 1.0, 0.0, 0.3])
    # the overall majority ("2") alone: 1.0, 0, 0, 0, 0.3
    overall_only = vqa_majority_chance(train, answers, ["number", "yes/no", "other", "other",
                                                         "number"])
    assert overall_only["accuracy"] == pytest.approx(100 * 1.3 / 5)


def test_vqa_question_type_prior_checks_lengths():
    with pytest.raises(ValueError):
        vqa_question_type_prior(["how many"], ["2", "3"], ["how many"], [["2"] * 10])
    with pytest.raises(ValueError):
        vqa_question_type_prior(["how many"], ["2"], ["how many", "is the"], [["2"] * 10])
