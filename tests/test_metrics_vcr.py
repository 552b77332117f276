"""VCR Q→A, QA→R and the joint Q→AR."""

import numpy as np
import pytest

from cavl.metrics.vcr import vcr_accuracy


def test_joint_metric_needs_both_right():
    answer_gold = [0, 1, 2, 3, 0, 1, 2, 3]
    answer_pred = [0, 1, 2, 0, 1, 1, 2, 3]       # right: 0,1,2,5,6,7 (6/8)
    rationale_gold = [3, 3, 3, 3, 2, 2, 2, 2]
    rationale_pred = [3, 0, 3, 3, 2, 2, 1, 2]    # right: 0,2,3,4,5,7 (6/8)
    m = vcr_accuracy(answer_pred, answer_gold, rationale_pred, rationale_gold)
    assert m["q2a"] == pytest.approx(75.0)
    assert m["qa2r"] == pytest.approx(75.0)
    assert m["q2ar"] == pytest.approx(100 * 4 / 8)   # both right: 0, 2, 5, 7


def test_joint_is_not_the_product_of_marginals():
    # answers right exactly where rationales are wrong: each 50%, joint 0%
    m = vcr_accuracy(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0]),
                     np.array([1, 1, 0, 0]), np.array([0, 0, 0, 0]))
    assert m == {"q2a": 50.0, "qa2r": 50.0, "q2ar": 0.0}


def test_unlabelled_and_mismatched_inputs_are_rejected():
    with pytest.raises(ValueError):
        vcr_accuracy([0], [-1], [0], [0])
    with pytest.raises(ValueError):
        vcr_accuracy([0, 1], [0], [0], [0])
    with pytest.raises(ValueError):
        vcr_accuracy([0.0], [0.0], [0], [0])
