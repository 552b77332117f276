"""Two-stage image↔text retrieval: shortlist by E′·F′, re-rank the shortlist with the ITM cross-encoder.

Exhaustive cross-encoder scoring fuses every (image, caption) pair: I·C passes, 5M for the
Flickr30k test split (1k images × 5k captions). Two-stage retrieval:

  1. embeddings, once each: E′ of every caption (a text-only pass), F′ of every image (an
     image-only pass) — PwCL's `separate` encoding — and their cosine matrix S (I, C);
  2. shortlists by S: for each image its top-k captions (i2t), for each caption its top-k images (t2i);
  3. the ITM cross-encoder scores every shortlisted pair once (a pair in both shortlists is
     fused once): at most k·(I + C) passes. The re-ranking score is, as in ALBEF's evaluation,
     the ITM score (logit of "match" − logit of "no match") plus `sim_weight` · S of the pair
     (sim_weight = 0: the cross-encoder alone).

A query's candidates rank the shortlist first, by its re-ranking score, then every other
candidate by S: one score matrix per direction whose order (ties included) is exactly that
ranking (`combine`), and Recall@K is the official one on it (cavl.metrics.retrieval, pessimistic
ties). Exhaustive mode gives every pair the re-ranking score; with k ≥ the number of candidates
the ranks are the exhaustive ones, identically; k = 0 ranks by S alone (the dual encoder).

    scorer = ModelScorer(model, tokenizer, regions, DataSettings(max_text_len=32, max_regions=36), batch_size=64)
    result = retrieve(scorer, image_ids, captions, caption_to_image, mode="two_stage", k=16, sim_weight=1.0)
    result.metrics()            # {"i2t_r@1": ..., "rsum": ...}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from cavl.data.regions import pad_regions
from cavl.metrics.retrieval import KS, i2t_ranks, recall_at_k, t2i_ranks
from cavl.model import masked_mean

MODES = ("two_stage", "exhaustive")


def pair_batch(batch: dict, text_rows, image_rows) -> dict:
    """Fused inputs pairing caption text_rows[n] with the regions of image_rows[n]."""
    out = {k: batch[k][text_rows] for k in ("input_ids", "attention_mask", "token_type_ids")}
    out.update({k: batch[k][image_rows] for k in ("visual_feats", "visual_boxes", "visual_mask")})
    return out


def text_embedding(model, batch: dict) -> torch.Tensor:
    """E′ (N, H): mean of the text states of a text-only pass (`model.encode_text`: backbone,
    adapters, shortcut), as CavlForPretraining.text_embedding."""
    out = model.encode_text(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return masked_mean(out.text_states, batch["attention_mask"])


def image_embedding(model, batch: dict) -> torch.Tensor:
    """F′ (N, H): mean of the region states of an image-only pass (`model.encode_image`: the
    regions behind `[CLS] [SEP]`), as CavlForPretraining.image_embedding."""
    out = model.encode_image(batch["visual_feats"], batch["visual_boxes"], batch["visual_mask"])
    return masked_mean(out.region_states, batch["visual_mask"])


def itm_score(logits: torch.Tensor) -> torch.Tensor:
    """ITM logits (N, 2) [no match, match] → one score per pair: the log-odds of a match."""
    logits = logits.float()
    return logits[:, 1] - logits[:, 0]


class ModelScorer:
    """Embeddings and ITM scores from a finetuning model over a fixed set of images and captions.

    Captions are tokenized once (words = caption.split(), as the task's training sequences) and
    images' regions read once; every batch is rows of those padded arrays, cut to the batch's
    longest caption / region count.
    """

    def __init__(self, model, tokenizer, regions, data, batch_size: int = 64, device="cpu"):
        self.model, self.tokenizer, self.regions, self.data = model, tokenizer, regions, data
        self.batch_size, self.device = int(batch_size), torch.device(device)
        self.text = self.images = None

    def set_items(self, image_ids: list, captions: list):
        enc = self.tokenizer([str(c).split() for c in captions], is_split_into_words=True, truncation=True,
                             max_length=self.data.max_text_len, padding="longest", return_tensors="np")
        ids = enc["input_ids"].astype(np.int64)  # (C, L)
        types = enc["token_type_ids"].astype(np.int64) if "token_type_ids" in enc else np.zeros_like(ids)
        self.text = {"input_ids": ids, "attention_mask": enc["attention_mask"].astype(np.int64),
                     "token_type_ids": types}
        regs = [self.regions.get(i, self.data.max_regions) for i in image_ids]
        feats, boxes, mask = pad_regions(regs, self.data.max_regions, self.regions.feature_dim)
        self.images = {"visual_feats": feats, "visual_boxes": boxes, "visual_mask": mask}

    def _batch(self, text_rows, image_rows) -> dict:
        """Model inputs for caption text_rows[n] with image image_rows[n] (None: a zero-width side)."""
        out = {}
        if text_rows is not None:
            L = max(1, int(self.text["attention_mask"][text_rows].sum(1).max()))
            out.update({k: torch.from_numpy(v[text_rows, :L]) for k, v in self.text.items()})
        if image_rows is not None:
            R = max(1, int(self.images["visual_mask"][image_rows].sum(1).max()))
            out.update({k: torch.from_numpy(v[image_rows, :R]) for k, v in self.images.items()})
        return {k: v.to(self.device) for k, v in out.items()}

    @torch.no_grad()
    def _embeddings(self, embedding, n: int, text: bool) -> np.ndarray:
        """`embedding` (text_ or image_embedding) of all n captions or images, batch_size at a time."""
        out = []
        for s in range(0, n, self.batch_size):
            rows = np.arange(s, min(s + self.batch_size, n))
            batch = self._batch(rows, None) if text else self._batch(None, rows)
            out.append(embedding(self.model, batch).float().cpu().numpy())
        return np.concatenate(out)  # (n, H)

    def text_embeddings(self) -> np.ndarray:
        return self._embeddings(text_embedding, len(self.text["input_ids"]), text=True)  # (C, H)

    def image_embeddings(self) -> np.ndarray:
        return self._embeddings(image_embedding, len(self.images["visual_feats"]), text=False)  # (I, H)

    @torch.no_grad()
    def pair_scores(self, pairs: np.ndarray) -> np.ndarray:
        """ITM score of each (image, caption) row of `pairs` (P, 2), in order, batch_size at a time."""
        out = np.empty(len(pairs), np.float32)
        for s in range(0, len(pairs), self.batch_size):
            p = pairs[s : s + self.batch_size]
            logits = self.model.head(self.model.encode(self._batch(p[:, 1], p[:, 0])))  # (B, 2)
            out[s : s + len(p)] = itm_score(logits).cpu().numpy()
        return out


def cosine(image_emb: np.ndarray, text_emb: np.ndarray) -> np.ndarray:
    """S (I, C): cosine of every image's F′ with every caption's E′."""
    f = image_emb / np.maximum(np.linalg.norm(image_emb, axis=1, keepdims=True), 1e-12)
    e = text_emb / np.maximum(np.linalg.norm(text_emb, axis=1, keepdims=True), 1e-12)
    return (f @ e.T).astype(np.float32)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices (Q, min(k, N)) of each row's k best columns, best first (ties: lower index first)."""
    Q, N = scores.shape
    k = min(int(k), N)
    if k <= 0:
        return np.zeros((Q, 0), np.int64)
    if k < N:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (Q, k) unordered, boundary ties arbitrary
    else:
        part = np.broadcast_to(np.arange(N), (Q, N))
    vals = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -vals), axis=1)  # by score desc, then index
    return np.take_along_axis(part, order, 1).astype(np.int64)


def combine(similarity: np.ndarray, shortlist: np.ndarray, itm: np.ndarray) -> np.ndarray:
    """Scores (Q, N) whose per-row order is: shortlisted candidates first by their ITM score,
    then the others by similarity — as dense ranks (int64, higher = better), so the order and
    every tie are exact (no float offsets). `shortlist` (Q, k) candidate indices, `itm` (Q, k)
    their scores."""
    Q, N = similarity.shape
    tier = np.zeros((Q, N), np.int8)
    value = similarity.astype(np.float64)  # (Q, N)
    if shortlist.shape[1]:
        rows = np.arange(Q)[:, None]
        tier[rows, shortlist] = 1
        value[rows, shortlist] = itm
    order = np.lexsort((value, tier), axis=1)  # ascending: (tier, value)
    t, v = np.take_along_axis(tier, order, 1), np.take_along_axis(value, order, 1)
    step = np.ones((Q, N), np.int64)
    step[:, 1:] = (t[:, 1:] != t[:, :-1]) | (v[:, 1:] != v[:, :-1])  # a new (tier, value) level
    dense = np.cumsum(step, axis=1)  # 1 … levels, equal (tier, value) → equal rank
    out = np.empty((Q, N), np.int64)
    np.put_along_axis(out, order, dense, 1)
    return out


@dataclass
class RetrievalResult:
    caption_to_image: np.ndarray  # (C,) image index of each caption
    i2t_scores: np.ndarray  # (I, C) ranking scores of image → text queries (rows)
    t2i_scores: np.ndarray  # (I, C) ranking scores of text → image queries (columns)
    i2t_ranks: np.ndarray  # (I,) 0-based rank of each image's best own caption (pessimistic ties)
    t2i_ranks: np.ndarray  # (C,) 0-based rank of each caption's image
    mode: str = "two_stage"
    k: int = 0  # shortlist size (two_stage)
    sim_weight: float = 0.0  # re-ranking score = ITM score + sim_weight · S
    pairs_scored: int = 0  # fused ITM passes
    i2t_in_shortlist: np.ndarray | None = None  # (I,) some own caption is shortlisted
    t2i_in_shortlist: np.ndarray | None = None  # (C,) the caption's image is shortlisted
    seconds: dict = field(default_factory=dict)  # wall time per phase

    def metrics(self, ks=KS) -> dict:
        """`i2t_r@K`, `t2i_r@K`, `rsum` in percent (cavl.metrics.retrieval)."""
        i2t, t2i = recall_at_k(self.i2t_ranks, ks), recall_at_k(self.t2i_ranks, ks)
        out = {f"i2t_r@{k}": v for k, v in i2t.items()}
        out.update({f"t2i_r@{k}": v for k, v in t2i.items()})
        out["rsum"] = sum(i2t.values()) + sum(t2i.values())
        return out


def exhaustive_pairs(num_images: int, num_captions: int) -> np.ndarray:
    """Every (image, caption) pair, image-major — the canonical order pairs are scored in."""
    ii, cc = np.meshgrid(np.arange(num_images), np.arange(num_captions), indexing="ij")
    return np.stack([ii.ravel(), cc.ravel()], 1).astype(np.int64)


def two_stage(similarity: np.ndarray, score_pairs: Callable[[np.ndarray], np.ndarray], k: int,
              caption_to_image, sim_weight: float = 0.0) -> RetrievalResult:
    """Two-stage ranking from the similarity S (I, C) and an ITM scorer of (image, caption) pairs."""
    cap2img = np.asarray(caption_to_image, dtype=np.int64)
    I, C = similarity.shape
    t0 = time.perf_counter()
    i2t = top_k(similarity, k)  # (I, k) captions per image
    t2i = top_k(similarity.T, k)  # (C, k) images per caption
    pairs = np.concatenate([np.stack([np.repeat(np.arange(I), i2t.shape[1]), i2t.ravel()], 1),
                            np.stack([t2i.ravel(), np.repeat(np.arange(C), t2i.shape[1])], 1)]).reshape(-1, 2)
    pairs = np.unique(pairs, axis=0)  # sorted image-major: the exhaustive order, restricted
    t1 = time.perf_counter()
    scores = score_pairs(pairs) if len(pairs) else np.zeros(0, np.float32)
    t2 = time.perf_counter()
    code = pairs[:, 0] * C + pairs[:, 1]  # sorted, since pairs are

    def lookup(img, cap):  # the re-ranking score of pairs (img, cap), broadcast
        img, cap = np.broadcast_arrays(img, cap)
        return scores[np.searchsorted(code, img * C + cap)] + sim_weight * similarity[img, cap]

    rows = np.arange(I)[:, None]
    i2t_scores = combine(similarity, i2t, lookup(rows, i2t))
    cols = np.arange(C)[:, None]
    t2i_scores = combine(similarity.T, t2i, lookup(t2i, cols)).T
    result = RetrievalResult(
        cap2img, i2t_scores, t2i_scores, i2t_ranks(i2t_scores, cap2img), t2i_ranks(t2i_scores, cap2img),
        "two_stage", int(k), float(sim_weight), len(pairs),
        i2t_in_shortlist=(cap2img[i2t] == rows).any(1) if i2t.shape[1] else np.zeros(I, bool),
        t2i_in_shortlist=(t2i == cap2img[:, None]).any(1) if t2i.shape[1] else np.zeros(C, bool))
    result.seconds.update({"shortlist": t1 - t0, "rerank": t2 - t1, "rank": time.perf_counter() - t2})
    return result


def exhaustive(num_images: int, score_pairs: Callable[[np.ndarray], np.ndarray], caption_to_image,
               similarity: np.ndarray | None = None, sim_weight: float = 0.0) -> RetrievalResult:
    """The reference: every pair fused and ranked by its re-ranking score (ITM + sim_weight · S;
    `similarity` S is needed when sim_weight ≠ 0)."""
    cap2img = np.asarray(caption_to_image, dtype=np.int64)
    C = len(cap2img)
    t0 = time.perf_counter()
    scores = score_pairs(exhaustive_pairs(num_images, C)).reshape(num_images, C)
    if sim_weight:
        scores = scores + sim_weight * similarity
    t1 = time.perf_counter()
    result = RetrievalResult(cap2img, scores, scores, i2t_ranks(scores, cap2img), t2i_ranks(scores, cap2img),
                             "exhaustive", 0, float(sim_weight), num_images * C,
                             i2t_in_shortlist=np.ones(num_images, bool), t2i_in_shortlist=np.ones(C, bool))
    result.seconds.update({"rerank": t1 - t0, "rank": time.perf_counter() - t1})
    return result


def retrieve(scorer: ModelScorer, image_ids: list, captions: list, caption_to_image, mode: str = "two_stage",
             k: int = 16, sim_weight: float = 0.0) -> RetrievalResult:
    """Rank every image for every caption and vice versa with a model (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"retrieval mode must be one of {MODES}, got {mode!r}")
    if k < 0:
        raise ValueError(f"shortlist_k must be >= 0, got {k}")
    t0 = time.perf_counter()
    scorer.set_items(image_ids, captions)
    t1 = time.perf_counter()
    sim = None
    if mode == "two_stage" or sim_weight:
        sim = cosine(scorer.image_embeddings(), scorer.text_embeddings())  # (I, C)
    t2 = time.perf_counter()
    if mode == "exhaustive":
        result = exhaustive(len(image_ids), scorer.pair_scores, caption_to_image, sim, sim_weight)
    else:
        result = two_stage(sim, scorer.pair_scores, k, caption_to_image, sim_weight)
    result.seconds.update({"load": t1 - t0, "embed": t2 - t1})
    return result
