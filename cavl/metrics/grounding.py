"""Box IoU and region-to-phrase grounding (RPG) recall on Flickr30k Entities, in percent.

Protocol (Plummer et al. 2015, as BAN / VisualBERT with detector proposals): each phrase whose
entity has a ground-truth box is a query ranking the image's candidate regions; it is right at
K when any of the top-K candidates has IoU ≥ 0.5 with *any* gt box of its entity.
``upper_bound``: the share of phrases for which *some* candidate reaches IoU 0.5. Phrases whose
entity has no box are counted apart.

Boxes are ``x1, y1, x2, y2`` pixels treated as continuous coordinates (width = x2 − x1, no
"+1"): our 0-based gt boxes differ from the continuous extent by at most a pixel per side (IoU
moves < 1% for boxes wider than ~100 px). ``pixel_inclusive=True``: the PASCAL-VOC convention.
Ties are pessimistic, as for retrieval.
"""

from collections.abc import Sequence

import numpy as np

KS = (1, 5, 10)
IOU_THRESHOLD = 0.5


def as_boxes(name, boxes):
    """`boxes` as a float64 N×4 array (an empty input gives 0×4). Accepts nested lists and
    the object arrays of per-box arrays that pandas gives for a Parquet list<list<float>>."""
    if isinstance(boxes, np.ndarray) and boxes.dtype == object:
        boxes = [np.asarray(b, dtype=np.float64) for b in boxes]
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must be N×4 (x1, y1, x2, y2), got shape {arr.shape}")
    return arr


def box_iou(boxes_a, boxes_b, pixel_inclusive: bool = False) -> np.ndarray:
    """Pairwise IoU matrix [len(a), len(b)] of x1y1x2y2 boxes (degenerate boxes have zero area;
    a zero union gives IoU 0)."""
    a, b = as_boxes("boxes_a", boxes_a), as_boxes("boxes_b", boxes_b)
    one = 1.0 if pixel_inclusive else 0.0
    wa = np.clip(a[:, 2] - a[:, 0] + one, 0, None)
    ha = np.clip(a[:, 3] - a[:, 1] + one, 0, None)
    wb = np.clip(b[:, 2] - b[:, 0] + one, 0, None)
    hb = np.clip(b[:, 3] - b[:, 1] + one, 0, None)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)             # (A, B)
    union = (wa * ha)[:, None] + (wb * hb)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def candidate_hits(candidate_boxes, gt_boxes, iou_threshold: float = IOU_THRESHOLD,
                   pixel_inclusive: bool = False) -> np.ndarray:
    """Boolean per candidate: IoU ≥ threshold with at least one gt box."""
    iou = box_iou(candidate_boxes, gt_boxes, pixel_inclusive)
    if iou.shape[1] == 0:
        return np.zeros(iou.shape[0], dtype=bool)
    return iou.max(axis=1) >= iou_threshold


def hit_rank(scores, hits) -> float:
    """0-based rank of the best-scored right candidate under the pessimistic tie rule
    (number of wrong candidates scored ≥ it); ``inf`` when no candidate is right."""
    scores = np.asarray(scores, dtype=np.float64)
    hits = np.asarray(hits, dtype=bool)
    if scores.shape != hits.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and hits {hits.shape} must be equal 1-D")
    if np.isnan(scores).any():
        raise ValueError("candidate scores contain NaN")
    if not hits.any():
        return float("inf")
    best = scores[hits].max()
    return float(((scores >= best) & ~hits).sum())


def rpg_recall(candidate_boxes: Sequence, candidate_scores: Sequence, gt_boxes: Sequence,
               ks=KS, iou_threshold: float = IOU_THRESHOLD,
               pixel_inclusive: bool = False) -> tuple[dict, int]:
    """RPG recall over phrases → (``{"r@K"..., "upper_bound"}`` in percent, number excluded).

    One entry per phrase in each sequence: `candidate_boxes` (N_i×4), `candidate_scores` (N_i,
    higher = better), `gt_boxes` (M_i×4, all gt boxes of the phrase's entity). Phrases with
    M_i = 0 are excluded and counted; a phrase with no candidates is a miss.
    """
    if not (len(candidate_boxes) == len(candidate_scores) == len(gt_boxes)):
        raise ValueError("candidate_boxes, candidate_scores and gt_boxes differ in length")
    ranks, excluded = [], 0
    for boxes, scores, gt in zip(candidate_boxes, candidate_scores, gt_boxes):
        gt = as_boxes("gt_boxes", gt)
        if len(gt) == 0:
            excluded += 1
            continue
        boxes = as_boxes("candidate_boxes", boxes)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(scores)} scores for {len(boxes)} candidate boxes")
        ranks.append(hit_rank(scores, candidate_hits(boxes, gt, iou_threshold, pixel_inclusive)))
    if not ranks:
        raise ValueError("no phrase with a ground-truth box to evaluate")
    ranks = np.asarray(ranks)
    out = {f"r@{k}": 100.0 * float((ranks < k).mean()) for k in ks}
    out["upper_bound"] = 100.0 * float(np.isfinite(ranks).mean())
    return out, excluded
