"""RPG: region-to-phrase grounding on Flickr30k Entities — rank an image's detected regions per phrase.

Items: one per annotated phrase whose entity has a box (the others are excluded, as in the
standard protocol, and counted: `num_excluded` in metrics.json). The sequence is
`[CLS] sentence [SEP] phrase [SEP]` + the image's regions: the phrase is the second segment
(token type 1), so the head finds the phrase's tokens by their type.

Candidates: the image's first `max_regions` DETECTED regions only (`region_source`, skip_given):
the manifest's ground-truth boxes stored first in a flickr30k shard are the answers, so neither
candidates nor inputs; `upper_bound` is the share of phrases one candidate reaches IoU 0.5 for.

Head: the mean state p of the phrase tokens, each region's state r and its box b (x1/W, y1/H,
x2/W, y2/H, area) → score = MLP([p ⊙ r, r, b]). Loss: cross-entropy against a soft target ∝ IoU
over the candidates with IoU ≥ 0.5 with a gt box of the entity; when none reaches 0.5, the best
overlapping candidate(s); a phrase no candidate overlaps adds no loss.

Metrics: cavl.metrics.grounding.rpg_recall (R@1/5/10 over phrases, right at IoU ≥ 0.5) and
upper_bound; chance: a uniformly random ranking (cavl.metrics.chance.rpg_chance); significance
(`report`): R@1 against a uniformly random candidate, by an exact one-sided Poisson-binomial.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cavl.metrics.chance import prob_any_in_top_k, rpg_chance
from cavl.metrics.grounding import IOU_THRESHOLD, as_boxes, box_iou, candidate_hits, hit_rank, rpg_recall
from cavl.metrics.significance import poisson_binomial_test
from cavl.model import masked_mean
from cavl.tasks.base import Encoded, MlpHead, Task, TaskLoss, TextImage

MASKED = -1e4  # score of padding regions (finite: soft targets multiply it by 0)


def phrase_ids(examples: pd.DataFrame) -> np.ndarray:
    """A key per phrase row: image, sentence and first word."""
    return (examples["image_id"].astype(str) + ":" + examples["sentence_index"].astype(str) + ":"
            + examples["first_word_index"].astype(str)).to_numpy()


def has_box(examples: pd.DataFrame) -> np.ndarray:
    return examples["gt_boxes"].map(lambda b: len(as_boxes("gt_boxes", b)) > 0).to_numpy(bool)


class RpgHead(MlpHead):
    def forward(self, enc: Encoded):
        L, b = enc.text_len, enc.batch
        h = enc.states[:, 0]  # (B, T, H)
        phrase = (b["token_type_ids"] == 1) & (b["attention_mask"] == 1)  # (B, L) the phrase's tokens
        p = masked_mean(h[:, :L], phrase)  # (B, H)
        r = h[:, L:]  # (B, R, H)
        box = b["visual_boxes"].to(r.dtype)  # (B, R, 5) the candidate's geometry, as the scorer's own input
        scores = self.mlp(torch.cat([r * p[:, None], r, box], dim=-1)).squeeze(-1)  # (B, R)
        return scores.masked_fill(b["visual_mask"] == 0, MASKED)


class RpgTask(Task):
    name = "rpg"
    main_metric = "r@1"
    skip_given = True  # the candidates: the first max_regions detected regions
    label_columns = ()  # phrases without a box stay in the table: excluded and counted by the metric

    # -- data -----------------------------------------------------------------------------------

    def with_features(self, examples, regions, what):
        """Phrases of images with features, each with its candidates' pixel boxes (`candidate_boxes`)."""
        if not getattr(regions, "skip_given", False):
            raise TypeError("rpg's candidates are the detected regions: a RegionSource with skip_given "
                            "(task.region_source)")
        examples = super().with_features(examples, regions, what).copy()
        boxes = {i: regions.pixel_boxes(i) for i in examples["image_id"].astype(str).unique()}
        examples["candidate_boxes"] = [boxes[i] for i in examples["image_id"].astype(str)]
        return examples

    def items(self, examples):
        return pd.DataFrame({"example": np.flatnonzero(has_box(examples))})

    def sequences(self, example, item, state):
        return [TextImage(str(example["sentence"]).split(), example["image_id"], str(example["phrase"]).split())]

    def targets(self, examples, items, state):
        """`rpg_iou` (B, N): each candidate's best IoU with a gt box of the phrase's entity."""
        ious = [box_iou(c, g).max(axis=1) if len(as_boxes("gt", g)) and len(c) else np.zeros(len(c))
                for c, g in zip(examples["candidate_boxes"], examples["gt_boxes"])]
        out = np.zeros((len(ious), max(1, max(len(i) for i in ious))), np.float32)
        for row, iou in enumerate(ious):
            out[row, : len(iou)] = iou
        return {"rpg_iou": out}

    # -- model ----------------------------------------------------------------------------------

    def make_head(self, hidden, state, eps, dropout):
        return RpgHead(2 * hidden + 5, hidden, 1, eps, dropout)

    def loss(self, out, batch, state):
        logits = out.logits  # (B, R)
        R = logits.shape[1]
        iou = batch["rpg_iou"][:, :R].float()
        iou = F.pad(iou, (0, R - iou.shape[1]))  # (B, R)
        target = torch.where(iou >= IOU_THRESHOLD, iou, torch.zeros_like(iou))
        best = iou.max(dim=1, keepdim=True).values  # (B, 1)
        fallback = ((iou == best) & (best > 0)).float()  # the best-overlapping candidate(s)
        target = torch.where(target.sum(1, keepdim=True) > 0, target, fallback)
        mass = target.sum(1)  # (B,)
        logp = F.log_softmax(logits.float(), dim=1)  # (B, R)
        per_item = -(target * logp).sum(1) / mass.clamp(min=1e-12)
        keep = mass > 0
        loss = per_item[keep].mean() if keep.any() else logp.sum() * 0.0
        return TaskLoss(loss, {"rpg_loss": loss})

    # -- evaluation -----------------------------------------------------------------------------

    def decode(self, out, batch):
        counts = batch["visual_mask"].sum(1).tolist()
        scores = out.logits.float().cpu().numpy()
        out = np.empty(len(counts), dtype=object)
        for i, n in enumerate(counts):
            out[i] = scores[i, :n].astype(np.float32)
        return {"scores": out}

    def predictions(self, examples, items, outputs, state):
        rows = items["example"].to_numpy()
        ex = examples.iloc[rows]
        scores = list(outputs["scores"])
        cands = list(ex["candidate_boxes"])
        for s, c in zip(scores, cands):
            if len(s) != len(c):
                raise ValueError(f"{len(s)} region scores for {len(c)} candidates (features changed?)")
        best = [c[int(np.argmax(s))].tolist() if len(s) else [] for s, c in zip(scores, cands)]
        return pd.DataFrame({
            "phrase_id": phrase_ids(ex), "image_id": ex["image_id"].astype(str).to_numpy(),
            "sentence_index": ex["sentence_index"].to_numpy(), "entity_id": ex["entity_id"].astype(str).to_numpy(),
            "phrase": ex["phrase"].to_numpy(), "best_box": best, "scores": [s.tolist() for s in scores],
        })

    def _per_phrase(self, predictions, examples):
        """Candidate boxes, scores and gt boxes of every phrase of `examples` (no-box phrases included,
        for the metric to exclude and count)."""
        scored = dict(zip(predictions["phrase_id"], predictions["scores"]))
        cands, scores = [], []
        for pid, c, ok in zip(phrase_ids(examples), examples["candidate_boxes"], has_box(examples)):
            if ok and pid not in scored:
                raise ValueError(f"phrase {pid} has no prediction")
            cands.append(c)
            scores.append(np.asarray(scored[pid], np.float64) if ok else np.zeros(len(c)))
        return cands, scores, list(examples["gt_boxes"])

    def metrics(self, predictions, examples, state):
        metrics, _ = rpg_recall(*self._per_phrase(predictions, examples))
        return metrics

    def chance(self, train, examples, state):
        metrics, _ = rpg_chance(list(examples["candidate_boxes"]), list(examples["gt_boxes"]))
        return metrics

    def report(self, predictions, examples, state, train=None):
        return {"num_excluded": int((~has_box(examples)).sum()), "candidates": "detected",
                "significance": {"r@1": self.significance(predictions, examples)}}

    def significance(self, predictions, examples) -> dict:
        """R@1 per phrase with a gt box (the phrases `rpg_recall` scores): right when the top-scored
        candidate reaches IoU 0.5 (pessimistic ties, as the metric), against a uniformly random
        candidate, right with probability m/n (m of the n candidates reach IoU 0.5; 1/n when one
        does; 0 when none does or there is none): an exact one-sided Poisson-binomial."""
        right, rates = [], []
        for boxes, scores, gt in zip(*self._per_phrase(predictions, examples)):
            gt = as_boxes("gt_boxes", gt)
            if len(gt) == 0:
                continue
            boxes = as_boxes("candidate_boxes", boxes)
            hits = candidate_hits(boxes, gt)
            right.append(hit_rank(np.asarray(scores, np.float64).reshape(-1), hits) < 1)
            rates.append(float(prob_any_in_top_k(len(hits), int(hits.sum()), 1)))
        return poisson_binomial_test(int(np.sum(right)), rates,
                                     "uniformly random candidate region (right with probability: candidates at "
                                     "IoU >= 0.5 / candidates of the phrase)")


TASK = RpgTask()
