"""Which regions an image keeps: per-class NMS over the proposals, then a fixed or adaptive count.

The convention is the bottom-up-attention one (Anderson et al. 2018, `generate_tsv.py`): a region
*is* an RPN proposal, so its box, its pooled feature and its class scores all describe the same
rectangle. For every foreground class, NMS at `nms_threshold` runs over the proposals scored by that
class; a proposal survives if it survives in at least one class, and it is labelled with the
best-scoring class it survived in. Survivors are ranked by that score and the top ones kept:

- ``fixed``: exactly `max_boxes` per image (the fixed-100 convention of the paper);
- ``adaptive``: every survivor scoring at least `score_threshold`, clamped to
  [`min_boxes`, `max_boxes`].

When an image has fewer survivors than its quota (rare: tiny images, few proposals), the quota is
filled with the best suppressed proposals, reported with score 0 (as bottom-up's ``max_conf``) so
the scores stay sorted. Everything is batched over the images of a forward pass.
"""

from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

MODES = ("fixed", "adaptive")
GIVEN_MODES = ("none", "given", "given+detected")


@dataclass(frozen=True)
class BoxConfig:
    mode: str = "fixed"  # "fixed": exactly max_boxes per image; "adaptive": min..max by score_threshold
    max_boxes: int = 36  # regions per image (paper: 100); in adaptive mode the upper bound
    min_boxes: int = 10  # adaptive mode: lower bound on regions per image
    score_threshold: float = 0.2  # adaptive mode: keep survivors scoring at least this
    nms_threshold: float = 0.5  # IoU of the per-class NMS
    given: str = "none"  # manifest gt_boxes: "none" ignore, "given" only them, "given+detected" them first

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"box mode must be one of {MODES}, got {self.mode!r}")
        if self.given not in GIVEN_MODES:
            raise ValueError(f"given-box mode must be one of {GIVEN_MODES}, got {self.given!r}")
        if self.max_boxes < 1 or self.min_boxes < 1:
            raise ValueError(f"box counts must be positive, got {self.min_boxes}, {self.max_boxes}")
        if self.mode == "adaptive" and self.min_boxes > self.max_boxes:
            raise ValueError(f"adaptive mode needs min_boxes <= max_boxes, got {self.min_boxes}, {self.max_boxes}")
        if not 0.0 < self.nms_threshold <= 1.0:
            raise ValueError(f"nms_threshold must be in (0, 1], got {self.nms_threshold}")

    def quotas(self, num_given):
        """(min, max) detected regions per image, given how many given boxes each image has.

        With given boxes first, detected ones fill the image up to the same total; given boxes
        are never dropped, so an image with more of them than `max_boxes` gets no detected ones.
        """
        if self.given == "given":
            zero = torch.zeros_like(num_given)
            return zero, zero
        if self.given == "none":
            num_given = torch.zeros_like(num_given)
        hi = (self.max_boxes - num_given).clamp(min=0)
        lo = hi if self.mode == "fixed" else (self.min_boxes - num_given).clamp(min=0)
        return lo, hi


@dataclass
class Selection:
    """Kept regions of a batch, grouped by image, each image's regions by descending score."""

    index: torch.Tensor  # (S,) row of the proposal in the flat proposal tensors
    image: torch.Tensor  # (S,) image of each kept region (non-decreasing)
    score: torch.Tensor  # (S,) score of its class (0 for fill-up regions)
    label: torch.Tensor  # (S,) foreground class id, 0-based

    def take(self, rows):
        return Selection(self.index[rows], self.image[rows], self.score[rows], self.label[rows])


def select_regions(boxes, probs, owner, num_images, min_count, max_count, cfg, min_candidates=2048):
    """Keep the regions of every image of a batch.

    boxes: (P, 4) proposal boxes of all images, image by image; probs: (P, K) foreground class
    probabilities; owner: (P,) image of each proposal (non-decreasing); min_count/max_count: (B,)
    per-image quotas (see `BoxConfig.quotas`).
    """
    device = boxes.device
    B, (P, K) = num_images, probs.shape
    counts = torch.bincount(owner, minlength=B)  # (B,)
    start = torch.cumsum(counts, 0) - counts  # (B,)
    if P == 0 or int(max_count.max()) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return Selection(empty, empty, probs.new_zeros(0), empty)

    p_max = int(counts.max())
    local = torch.arange(P, device=device) - start[owner]  # (P,) proposal index within its image
    dense = probs.new_full((B, p_max, K), -1.0)  # padding scores -1: never a candidate
    dense[owner, local] = probs
    dense = dense.view(B, p_max * K)  # (B, p_max*K) every (proposal, class) pair

    # A pair outside the top M of its image scores below every candidate, so it cannot suppress
    # one: NMS over the candidates alone is exact for them. M doubles until each image has enough
    # survivors or all its pairs are candidates.
    m = min(p_max * K, max(min_candidates, 20 * int(max_count.max())))
    while True:
        sel = _nms_survivors(boxes, dense, start, K, m, cfg.nms_threshold)
        n_surv = torch.bincount(sel.image, minlength=B)
        complete = (n_surv >= max_count) | (counts * K <= m)
        if bool(complete.all()) or m == p_max * K:
            break
        m = min(2 * m, p_max * K)

    # Rank within each image (sel is grouped by image, each by descending score).
    first_of_image = torch.cumsum(n_surv, 0) - n_surv
    rank = torch.arange(len(sel.index), device=device) - first_of_image[sel.image]
    if cfg.mode == "adaptive":
        above = torch.bincount(sel.image[sel.score >= cfg.score_threshold], minlength=B)
        target = torch.minimum(torch.maximum(above, min_count), max_count)
    else:
        target = max_count
    keep = rank < target[sel.image]
    sel = sel.take(keep)

    short = torch.nonzero(n_surv < target).flatten().tolist()
    if short:
        sel = _fill_up(sel, probs, start, counts, target, short)
    return sel


def _nms_survivors(boxes, dense, start, K, m, iou):
    """Proposals that survive per-class NMS among the top-m pairs of each image, best class each.

    Ties (common with random weights, whose class scores saturate) are broken by proposal index,
    then class, everywhere: the result does not depend on how images are batched.
    """
    B = dense.shape[0]
    top_s, top_i = torch.sort(dense, dim=1, descending=True, stable=True)
    top_s, top_i = top_s[:, :m], top_i[:, :m]  # (B, m)
    valid = top_s >= 0
    img = torch.arange(B, device=dense.device)[:, None].expand(B, m)[valid]
    score = top_s[valid]
    label = (top_i % K)[valid]
    index = start[img] + (top_i // K)[valid]  # flat proposal row
    # torchvision's NMS is stable: equal scores are visited in input order, (index, class) here.
    keep = batched_nms(boxes[index].float(), score.float(), img * K + label, iou)
    index, img, score, label = index[keep], img[keep], score[keep], label[keep]
    # Order by (image, -score, proposal, class); the first pair of a proposal is its best class.
    order = torch.arange(len(index), device=index.device)
    for key, descending in ((label, False), (index, False), (score, True), (img, False)):
        order = order[torch.sort(key[order], descending=descending, stable=True).indices]
    sel = Selection(index, img, score, label).take(order)
    uniq, inverse = torch.unique(sel.index, return_inverse=True)
    first = torch.full((len(uniq),), len(order), dtype=torch.long, device=order.device)
    first = first.scatter_reduce(0, inverse, torch.arange(len(order), device=order.device), "amin")
    return sel.take(first.sort().values)  # back to (image, -score, proposal) order


def _fill_up(sel, probs, start, counts, target, short):
    """Fill images with too few NMS survivors with their best suppressed proposals (score 0)."""
    parts = [sel]
    taken = torch.zeros(len(probs), dtype=torch.bool, device=probs.device)
    taken[sel.index] = True
    have = torch.bincount(sel.image, minlength=len(counts))
    for b in short:
        lo, n = int(start[b]), int(counts[b])
        best, label = probs[lo:lo + n].max(dim=1)
        best = best.masked_fill(taken[lo:lo + n], -1.0)
        need = min(int(target[b] - have[b]), int((~taken[lo:lo + n]).sum()))
        extra = torch.sort(best, descending=True, stable=True).indices[:need]
        parts.append(Selection(lo + extra, torch.full_like(extra, b), torch.zeros_like(best[extra]),
                               label[extra]))
    fields = ("index", "image", "score", "label")
    merged = Selection(*(torch.cat([getattr(p, f) for p in parts]) for f in fields))
    # fill-ups land after the survivors of their image
    return merged.take(torch.sort(merged.image, stable=True).indices)
