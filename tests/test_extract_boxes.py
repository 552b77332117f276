"""Box selection (extract/boxes.py) against a brute-force numpy reference, and its modes."""

import numpy as np
import pytest
import torch

from extract.boxes import BoxConfig, select_regions


def iou(a, b):
    """IoU matrix of (n, 4) and (m, 4) x1 y1 x2 y2 boxes, numpy only."""
    ix1, iy1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    ix2, iy2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def reference(boxes, probs, max_boxes, thr):
    """Greedy per-class NMS over all proposals of one image, best surviving class per proposal,
    top `max_boxes` by (score desc, proposal asc). Returns [(proposal, class, score)]."""
    P, K = probs.shape
    best = {}
    overlaps = iou(boxes, boxes)
    for c in range(K):
        order = sorted(range(P), key=lambda i: (-probs[i, c], i))
        alive = []
        for i in order:
            if all(overlaps[i, j] <= thr for j in alive):
                alive.append(i)
        for i in alive:
            if i not in best or probs[i, c] > best[i][1]:
                best[i] = (c, probs[i, c])
    ranked = sorted(best.items(), key=lambda kv: (-kv[1][1], kv[0]))
    return [(i, c, s) for i, (c, s) in ranked[:max_boxes]]


def random_proposals(rng, counts, K):
    xy = rng.uniform(0, 60, size=(sum(counts), 2))  # crowded: many overlaps around the threshold
    wh = rng.uniform(10, 40, size=(sum(counts), 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    probs = rng.dirichlet(np.ones(K + 1), size=sum(counts))[:, :K].astype(np.float32)
    owner = np.repeat(np.arange(len(counts)), counts)
    return boxes, probs, owner


@pytest.mark.parametrize("seed", [0, 1])
def test_fixed_selection_matches_bruteforce_reference(seed):
    rng = np.random.default_rng(seed)
    counts, K, max_boxes = [60, 40, 80], 3, 25
    boxes, probs, owner = random_proposals(rng, counts, K)
    cfg = BoxConfig(max_boxes=max_boxes, nms_threshold=0.5)
    quota = torch.full((3,), max_boxes)
    sel = select_regions(torch.from_numpy(boxes), torch.from_numpy(probs), torch.from_numpy(owner), 3,
                         quota, quota, cfg, min_candidates=8)  # small: exercises the doubling loop
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for b in range(3):
        lo, hi = start[b], start[b] + counts[b]
        want = reference(boxes[lo:hi], probs[lo:hi], max_boxes, 0.5)
        mine = sel.image.numpy() == b
        assert len(want) == max_boxes
        assert (sel.index.numpy()[mine] - lo).tolist() == [i for i, _, _ in want]
        assert sel.label.numpy()[mine].tolist() == [c for _, c, _ in want]
        np.testing.assert_allclose(sel.score.numpy()[mine], [s for _, _, s in want], rtol=1e-6)


def test_adaptive_mode_keeps_between_min_and_max_by_threshold():
    # Three images of far-apart boxes (no suppression); image b has 3, 8 and 30 boxes above 0.5.
    K, P = 2, 40
    above = [3, 8, 30]
    boxes = np.array([[i * 50, 0, i * 50 + 10, 10] for i in range(P)] * 3, np.float32)
    probs = np.zeros((3 * P, K), np.float32)
    for b, n in enumerate(above):
        probs[b * P: b * P + n, 0] = np.linspace(0.9, 0.6, n)
        probs[b * P + n: (b + 1) * P, 0] = np.linspace(0.4, 0.1, P - n)
    cfg = BoxConfig(mode="adaptive", min_boxes=5, max_boxes=20, score_threshold=0.5)
    lo, hi = cfg.quotas(torch.zeros(3, dtype=torch.long))
    sel = select_regions(torch.from_numpy(boxes), torch.from_numpy(probs),
                         torch.arange(3).repeat_interleave(P), 3, lo, hi, cfg)
    assert torch.bincount(sel.image, minlength=3).tolist() == [5, 8, 20]
    # Above-threshold boxes come first, in score order.
    assert (sel.score[sel.image == 1] >= 0.5).all()
    assert (sel.score[sel.image == 0][:3] >= 0.5).all() and (sel.score[sel.image == 0][3:] < 0.5).all()


def test_fill_up_when_nms_leaves_too_few():
    # 30 copies of one box, 3 classes: NMS leaves one survivor per class at most.
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0]]).repeat(30, 1)
    probs = torch.rand(30, 3, generator=torch.Generator().manual_seed(0))
    cfg = BoxConfig(max_boxes=10)
    quota = torch.tensor([10])
    sel = select_regions(boxes, probs, torch.zeros(30, dtype=torch.long), 1, quota, quota, cfg)
    assert len(sel.index) == 10 and len(set(sel.index.tolist())) == 10
    survivors = int((sel.score > 0).sum())
    assert 1 <= survivors <= 3
    assert (sel.score[survivors:] == 0).all()  # fill-ups after the survivors, score 0
    assert torch.all(sel.score[:-1] >= sel.score[1:])


def test_fewer_proposals_than_quota_gives_fewer_boxes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.7]])
    quota = torch.tensor([5])
    sel = select_regions(boxes, probs, torch.zeros(2, dtype=torch.long), 1, quota, quota, BoxConfig(max_boxes=5))
    assert sel.index.tolist() == [0, 1] and sel.label.tolist() == [0, 1]


def test_quotas_for_given_box_modes():
    n_given = torch.tensor([0, 3, 50])
    assert BoxConfig(max_boxes=36).quotas(n_given)[1].tolist() == [36, 36, 36]
    assert BoxConfig(max_boxes=36, given="given+detected").quotas(n_given)[1].tolist() == [36, 33, 0]
    assert BoxConfig(max_boxes=36, given="given").quotas(n_given)[1].tolist() == [0, 0, 0]
    lo, hi = BoxConfig(mode="adaptive", min_boxes=10, max_boxes=36, given="given+detected").quotas(n_given)
    assert lo.tolist() == [10, 7, 0] and hi.tolist() == [36, 33, 0]


def test_bad_box_config_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        BoxConfig(mode="top-k")
    with pytest.raises(ValueError, match="min_boxes"):
        BoxConfig(mode="adaptive", min_boxes=50, max_boxes=36)
    with pytest.raises(ValueError, match="given-box mode"):
        BoxConfig(given="gt")
