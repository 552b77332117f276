"""Box IoU and the region-to-phrase grounding recall on hand-made boxes."""

import numpy as np
import pytest

from cavl.metrics.grounding import box_iou, rpg_recall


def test_iou_hand_cases():
    a = [[0, 0, 10, 10]]
    assert box_iou(a, a)[0, 0] == pytest.approx(1.0)
    assert box_iou(a, [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)
    assert box_iou(a, [[0, 0, 5, 10]])[0, 0] == pytest.approx(0.5)      # contained half
    assert box_iou(a, [[10, 0, 20, 10]])[0, 0] == 0.0                  # touching edge
    assert box_iou(a, [[20, 20, 30, 30]])[0, 0] == 0.0
    assert box_iou([[3, 3, 3, 3]], [[3, 3, 3, 3]])[0, 0] == 0.0        # zero area, no NaN


def test_iou_pixel_conventions_differ_as_documented():
    a, b = [[0, 0, 9, 9]], [[0, 0, 4, 9]]
    assert box_iou(a, b)[0, 0] == pytest.approx(36 / 81)                      # continuous
    assert box_iou(a, b, pixel_inclusive=True)[0, 0] == pytest.approx(50 / 100)  # VOC +1


def test_iou_matrix_shape_and_symmetry():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, size=(7, 2))
    a = np.hstack([xy, xy + rng.uniform(1, 30, size=(7, 2))])
    b = a[:4] + 3
    m = box_iou(a, b)
    assert m.shape == (7, 4)
    np.testing.assert_allclose(m, box_iou(b, a).T)
    assert box_iou(a, np.zeros((0, 4))).shape == (7, 0)


def test_rpg_recall_hand_made_phrases():
    gt = [[0, 0, 10, 10]]
    hit = [0, 0, 10, 10]          # IoU 1
    half = [0, 0, 5, 10]          # IoU exactly 0.5: counts
    miss = [0, 0, 4, 10]          # IoU 0.4
    far = [50, 50, 60, 60]
    phrases = [
        # 1: right candidate ranked 2nd → r@5, r@10
        ([miss, hit, far], [0.9, 0.5, 0.1], gt),
        # 2: entity without a box → excluded
        ([hit], [1.0], []),
        # 3: no candidate reaches 0.5 → miss everywhere, not in upper bound
        ([miss, far], [0.3, 0.2], gt),
        # 4: right candidate ties with a wrong one at the top → pessimistic rank 1
        ([far, half], [0.7, 0.7], gt),
        # 5: right candidate 6th → r@10 only
        ([far] * 5 + [hit], [0.9] * 5 + [0.1], gt),
        # 6: candidate matching the second of two gt boxes, ranked first
        ([[100, 100, 120, 120], far], [0.8, 0.1], [[0, 0, 10, 10], [100, 100, 121, 120]]),
    ]
    boxes, scores, gts = zip(*phrases)
    metrics, excluded = rpg_recall(boxes, scores, gts)
    assert excluded == 1
    assert metrics["r@1"] == pytest.approx(100 * 1 / 5)       # phrase 6
    assert metrics["r@5"] == pytest.approx(100 * 3 / 5)       # 1, 4, 6
    assert metrics["r@10"] == pytest.approx(100 * 4 / 5)      # 1, 4, 5, 6
    assert metrics["upper_bound"] == pytest.approx(100 * 4 / 5)


def test_rpg_threshold_is_inclusive_and_empty_candidates_miss():
    gt = [[0, 0, 10, 10]]
    metrics, excluded = rpg_recall([[[0, 0, 5, 10]], np.zeros((0, 4))], [[1.0], []], [gt, gt])
    assert excluded == 0
    assert metrics == {"r@1": 50.0, "r@5": 50.0, "r@10": 50.0, "upper_bound": 50.0}


def test_rpg_rejects_bad_input():
    with pytest.raises(ValueError):
        rpg_recall([[[0, 0, 1, 1]]], [[1.0, 2.0]], [[[0, 0, 1, 1]]])    # scores ≠ boxes
    with pytest.raises(ValueError):
        rpg_recall([[[0, 0, 1, 1]]], [[1.0]], [[]])                     # nothing to evaluate
