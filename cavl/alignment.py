"""Word↔region alignment of a pretrained model (the paper's §5.3): which region each word of a
caption goes with, under two scores, and how often that finds a Flickr30k Entities phrase's box.

    model = CavlModel.from_pretrained("results/pretrain/model")     # or CavlForPretraining
    tokenizer = AutoTokenizer.from_pretrained("results/pretrain/model")
    source = RegionSource("resources/features/flickr30k/index.parquet", max_regions=8, skip_given=True)
    regions = source.get("1000092795")                               # an ImageRegions
    words, cos = cosine_alignment(model, tokenizer, "Two dogs play .", regions, max_text_len=40)
    words, att = attention_alignment(model, tokenizer, "Two dogs play .", regions, max_text_len=40)
    summary, per_phrase = phrase_hits(model, tokenizer, pd.read_parquet("resources/tasks/rpg/val.parquet"),
                                      source, max_text_len=40)

Both scores give a (words × regions) matrix for one caption and one image's regions:

- **cosine** (`cosine_alignment`): cos(e_w, f_r) between word w's contextual state in a text-only
  pass (`CavlModel.encode_text`) and region r's in an image-only pass (`CavlModel.encode_image`) —
  PwCL's `separate` encoding, whose E′ and F′ are the masked means of exactly these states. PwCL
  applies **no projection** (the loss only L2-normalises them, cavl.losses), so none is applied
  here. (A model pretrained with the `joint` or `joint_clean` encoding trained PwCL on fused-pass
  states; its cosine here is still of its separate passes, and the record names its `pwcl_encoding`.)
- **attention** (`attention_alignment`): the attention the last layer's queries at the word's
  tokens put on each region key, averaged over heads, in the fused pass. scaled_dot_product_attention
  returns no weights, so `last_layer_attention` recomputes softmax(QKᵀ/√d + mask) from the last
  layer's input (a forward hook), and also returns the `recomputed` attention output beside the
  layer's real one (`actual`), which tests/test_alignment.py checks are equal.

Words, not wordpieces: a string caption is split by the tokenizer's pre-tokenizer (BERT: whitespace
and punctuation), a list of words is taken as is (the rpg tables' `sentence.split()`, which the
phrases' word indices count); words are tokenised with `is_split_into_words` (for BERT the ids of
the raw string), [CLS]/[SEP] dropped, and a word's row is the mean of its wordpieces'. Words cut by
`max_text_len` are left out.

Regions are read as every stage reads them (`RegionSource.get`, `pad_regions`); the model
standardises the features itself. Use a RegionSource with `skip_given` so that only DETECTED
regions are scored (flickr30k shards put the Entities gt boxes — the answers — first).

`phrase_hits` scores each detected region for a phrase by the mean over its words of the
word→region score (the whole sentence as the caption); the best region hits at IoU ≥ 0.5 with a gt
box (rpg's pessimistic tie rule). Against a uniformly random region (hit probability m_i/n_i), each
score gets an exact one-sided Poisson-binomial p-value, as rpg's R@1 significance.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cavl.data.regions import ImageRegions, RegionSource, pad_regions
from cavl.metrics.chance import prob_any_in_top_k
from cavl.metrics.grounding import IOU_THRESHOLD, as_boxes, box_iou, candidate_hits, hit_rank
from cavl.metrics.significance import poisson_binomial_test
from cavl.model import CavlModel

log = logging.getLogger(__name__)

SCORES = ("cosine", "attention")
RANDOM_PREDICTOR = ("uniformly random detected region (right with probability: regions at IoU >= 0.5 / "
                    "candidate regions of the phrase)")


def caption_words(tokenizer, caption) -> list:
    """The words of a caption: a string split by the tokenizer's pre-tokenizer (BERT: whitespace
    and punctuation; `str.split` for a tokenizer without one), a list of words as it is."""
    if not isinstance(caption, str):
        return [str(w) for w in caption]
    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if pre is None:
        return caption.split()
    return [w for w, _ in pre.pre_tokenize_str(caption)]


def tokenize_words(tokenizer, captions: Sequence[Sequence[str]], max_text_len: int):
    """Captions as word lists → ids, attention mask (B, L) int64 tensors and each row's word index
    per token (None: [CLS], [SEP], padding). Needs a fast tokenizer (word_ids)."""
    enc = tokenizer([list(c) for c in captions], is_split_into_words=True, truncation=True,
                    max_length=max_text_len, padding="longest", return_tensors="pt")
    try:
        word_ids = [enc.word_ids(i) for i in range(len(captions))]
    except ValueError as e:  # a slow (python) tokenizer keeps no word alignment
        raise ValueError(f"word alignment needs a fast tokenizer: {e}") from None
    return enc["input_ids"].long(), enc["attention_mask"].long(), word_ids


def merge_wordpieces(matrix, word_ids: Sequence) -> tuple[np.ndarray, list]:
    """Token rows (L, R) → word rows (W, R): each word's row is the mean of its wordpieces' rows;
    tokens with no word ([CLS], [SEP], padding: None) are dropped. → (rows, the word indices kept,
    in order: 0..W-1 unless truncation cut the tail)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.shape[0] != len(word_ids):
        raise ValueError(f"{matrix.shape[0]} token rows for {len(word_ids)} word ids")
    kept = sorted({w for w in word_ids if w is not None})
    out = np.zeros((len(kept), matrix.shape[1]))
    for row, w in enumerate(kept):
        tokens = [t for t, v in enumerate(word_ids) if v == w]
        out[row] = matrix[tokens].mean(0)
    return out, kept


def region_tensors(regions: ImageRegions, feature_dim: int | None = None):
    """One image's regions → visual_feats (1, R, D), visual_boxes (1, R, 5), visual_mask (1, R)
    tensors (cavl.data.regions.pad_regions: R ≥ 1; an image with no region has an all-zero mask)."""
    D = feature_dim if feature_dim is not None else regions.features.shape[1]
    feats, boxes, mask = pad_regions([regions], max(len(regions.features), 1), D)
    return torch.from_numpy(feats), torch.from_numpy(boxes), torch.from_numpy(mask)


def backbone_of(model) -> CavlModel:
    """The CavlModel of a CavlForPretraining (or another wrapper's `bert`), or the model itself."""
    bert = model if isinstance(model, CavlModel) else getattr(model, "bert", None)
    if not isinstance(bert, CavlModel):
        raise TypeError(f"expected a CavlModel or CavlForPretraining, got {type(model).__name__}")
    return bert


@contextmanager
def _evaluating(module: torch.nn.Module):
    """Eval mode (no dropout) and no autograd inside; the module's mode is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield module
    finally:
        module.train(was_training)


def token_cosines(model, input_ids, attention_mask, visual_feats, visual_boxes, visual_mask) -> torch.Tensor:
    """(B, L, R) cosines between the text-only pass's token states (B, L, H) and the image-only
    pass's region states (B, R, H) (PwCL's separate passes; no projection: module docstring)."""
    bert = backbone_of(model)
    with _evaluating(bert):
        text = bert.encode_text(input_ids, attention_mask).text_states  # (B, L, H)
        image = bert.encode_image(visual_feats, visual_boxes, visual_mask).region_states  # (B, R, H)
        return F.normalize(text.float(), dim=-1) @ F.normalize(image.float(), dim=-1).transpose(1, 2)


@dataclass
class LastLayerAttention:
    """The last layer's attention of one fused pass, recomputed from the layer's input."""

    weights: torch.Tensor  # (B, heads, T, T) softmax(QKᵀ/√d + mask), rows: queries, columns: keys
    recomputed: torch.Tensor  # (B, T, H) weights @ V through the layer's output projection
    actual: torch.Tensor  # (B, T, H) what the layer's attention module returned in the pass
    text_len: int  # L: the first L positions are text tokens, the rest regions


def last_layer_attention(model, input_ids, attention_mask, visual_feats, visual_boxes,
                         visual_mask) -> LastLayerAttention:
    """One fused pass `[CLS] text [SEP]` + regions; the last layer's attention weights recomputed
    with its own projections from the input and mask its attention module received (a forward
    hook: scaled_dot_product_attention returns no weights)."""
    bert = backbone_of(model)
    attention = bert.encoder.layers[-1].attention
    seen = {}

    def hook(module, args, output):
        seen["x"], seen["mask"], seen["out"] = args[0], args[1], output

    handle = attention.register_forward_hook(hook)
    try:
        with _evaluating(bert):
            out = bert(input_ids, attention_mask, visual_feats, visual_boxes, visual_mask)
            x, mask = seen["x"], seen["mask"]  # (B, T, H), (B, 1, 1, T) bool: True = may be attended to
            B, T, H = x.shape
            nh, hd = attention.num_heads, attention.head_dim

            def heads(t):
                return t.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)

            q, k, v = heads(attention.query(x)), heads(attention.key(x)), heads(attention.value(x))
            logits = (q.float() @ k.float().transpose(-1, -2)) / float(hd) ** 0.5  # (B, nh, T, T)
            logits = logits.masked_fill(~mask, float("-inf"))
            weights = torch.softmax(logits, dim=-1)  # (B, nh, T, T)
            y = (weights.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, H)  # (B, T, H)
            recomputed = attention.out(y)
    finally:
        handle.remove()
    return LastLayerAttention(weights, recomputed, seen["out"], out.text_len)


def token_attention(model, input_ids, attention_mask, visual_feats, visual_boxes, visual_mask) -> torch.Tensor:
    """(B, L, R): the attention of each text token (query) on each region (key) in the last layer
    of the fused pass, averaged over heads."""
    att = last_layer_attention(model, input_ids, attention_mask, visual_feats, visual_boxes, visual_mask)
    return att.weights[:, :, : att.text_len, att.text_len :].mean(1)  # (B, L, R)


@dataclass
class Alignment:
    """One caption against one image's regions (n of them)."""

    words: list  # the caption's words that have a row (those max_text_len kept)
    scores: dict  # score name → (W, n) float64 matrix, words × regions


def align(model, tokenizer, captions: Sequence, regions: ImageRegions, max_text_len: int,
          scores: Sequence[str] = SCORES) -> list:
    """Each caption (a string or a list of words) against one image's regions → an Alignment per
    caption; the captions of one image share one image-only pass, and run as one batch."""
    unknown = [s for s in scores if s not in SCORES]
    if unknown:
        raise ValueError(f"unknown score(s) {unknown}; known: {list(SCORES)}")
    words = [caption_words(tokenizer, c) for c in captions]
    if not words:
        return []
    bert = backbone_of(model)
    ids, mask, word_ids = tokenize_words(tokenizer, words, max_text_len)
    feats, boxes, vmask = region_tensors(regions, bert.config.visual_dim)
    n = len(regions.features)
    per_score = {}
    if "cosine" in scores:  # (1 or B, L, R): regions broadcast
        per_score["cosine"] = token_cosines(bert, ids, mask, feats, boxes, vmask)
    if "attention" in scores:
        S = len(words)
        per_score["attention"] = token_attention(bert, ids, mask, feats.expand(S, -1, -1),
                                                 boxes.expand(S, -1, -1), vmask.expand(S, -1))
    out = []
    for i, w in enumerate(words):
        kept = sorted({v for v in word_ids[i] if v is not None})
        matrices = {name: merge_wordpieces(t[i].cpu().numpy()[:, :n], word_ids[i])[0] for name, t in per_score.items()}
        out.append(Alignment([w[j] for j in kept], matrices))
    return out


def cosine_alignment(model, tokenizer, caption, regions: ImageRegions, max_text_len: int) -> tuple[list, np.ndarray]:
    """(words, (W, n) cosines) of one caption against one image's regions (module docstring)."""
    a = align(model, tokenizer, [caption], regions, max_text_len, ("cosine",))[0]
    return a.words, a.scores["cosine"]


def attention_alignment(model, tokenizer, caption, regions: ImageRegions, max_text_len: int) -> tuple[list, np.ndarray]:
    """(words, (W, n) last-layer word→region attention, mean over heads) of one caption against
    one image's regions in the fused pass (module docstring)."""
    a = align(model, tokenizer, [caption], regions, max_text_len, ("attention",))[0]
    return a.words, a.scores["attention"]


def phrase_hits(model, tokenizer, phrases: pd.DataFrame, source: RegionSource, max_text_len: int,
                scores: Sequence[str] = SCORES) -> tuple[dict, pd.DataFrame]:
    """How often the region a phrase aligns with best is its box, per score, against random.

    `phrases`: rows of an rpg table; `source`: a RegionSource with skip_given, whose regions are both
    the model's input and the candidates. Returns (summary, per_phrase). summary: `phrases` (scored,
    with a box), `excluded_no_box`, `missing_features`, `truncated` (every word past max_text_len),
    `upper_bound` (share of phrases some candidate hits), `baseline` (random region) and `scores`:
    per score {hits, phrases, hit_rate, baseline_rate, expected_hits, p_value, log10_p_value,
    significance}; rates in percent. per_phrase: one row per scored phrase — its key, words,
    candidates, the random hit probability and per score the chosen region, its IoU and its hit."""
    if not getattr(source, "skip_given", False):
        raise TypeError("phrase_hits scores the detected regions only: give a RegionSource with skip_given")
    phrases = phrases.reset_index(drop=True)
    boxed = phrases["gt_boxes"].map(lambda b: len(as_boxes("gt_boxes", b)) > 0).to_numpy(bool)
    image_ids = phrases["image_id"].astype(str)
    available = image_ids.map(lambda i: i in source).to_numpy(bool)
    missing = int((boxed & ~available).sum())
    if missing:
        log.warning("%d phrases (with a box) are of images without features; skipped", missing)
    todo = phrases[boxed & available]
    rows, truncated = [], 0
    for image_id in sorted(todo["image_id"].astype(str).unique(), key=image_order_key):
        group = todo[todo["image_id"].astype(str) == image_id]
        regions = source.get(image_id)
        candidates = source.pixel_boxes(image_id)  # (n, 4) pixels, the regions `get` returned
        sentences = (group[["sentence_index", "sentence"]].drop_duplicates("sentence_index")
                     .sort_values("sentence_index"))
        aligned = dict(zip(sentences["sentence_index"].tolist(),
                           align(model, tokenizer, [str(s).split() for s in sentences["sentence"]], regions,
                                 max_text_len, scores)))
        for _, p in group.sort_values(["sentence_index", "first_word_index"], kind="stable").iterrows():
            a = aligned[p["sentence_index"]]
            first = int(p["first_word_index"])
            span = list(range(first, first + len(str(p["phrase"]).split())))
            rows_in = [j for j in span if j < len(a.words)]
            if not rows_in:
                truncated += 1
                continue
            gt = as_boxes("gt_boxes", p["gt_boxes"])
            hits = candidate_hits(candidates, gt) if len(candidates) else np.zeros(0, bool)
            iou = box_iou(candidates, gt).max(axis=1) if len(candidates) else np.zeros(0)
            row = {"image_id": image_id, "sentence_index": int(p["sentence_index"]), "first_word_index": first,
                   "phrase": str(p["phrase"]), "words_scored": len(rows_in), "num_candidates": len(candidates),
                   "num_right": int(hits.sum()),
                   "random_rate": float(prob_any_in_top_k(len(hits), int(hits.sum()), 1))}
            for name in scores:
                region_scores = a.scores[name][rows_in].mean(0)  # (n,)
                if len(region_scores):
                    best = int(np.argmax(region_scores))
                    hit = bool(hit_rank(region_scores, hits) < 1)
                    row.update({f"{name}_region": best, f"{name}_iou": float(iou[best]), f"{name}_hit": hit})
                else:
                    row.update({f"{name}_region": -1, f"{name}_iou": 0.0, f"{name}_hit": False})
            rows.append(row)
    per_phrase = pd.DataFrame(rows, columns=_PER_PHRASE_COLUMNS + [f"{s}_{c}" for s in scores
                                                                   for c in ("region", "iou", "hit")])
    if truncated:
        log.warning("%d phrases lie wholly past max_text_len %d of their sentence; not scored", truncated, max_text_len)
    summary = {"phrases": len(per_phrase), "excluded_no_box": int((~boxed).sum()), "missing_features": missing,
               "truncated": truncated, "candidates": "detected", "max_regions": source.max_regions,
               "iou_threshold": IOU_THRESHOLD, "scores": {}}
    if len(per_phrase) == 0:
        summary.update({"upper_bound": None, "baseline": None})
        return summary, per_phrase
    rates = per_phrase["random_rate"].to_numpy(np.float64)
    summary["upper_bound"] = 100.0 * float((per_phrase["num_right"] > 0).mean())
    summary["baseline"] = {"predictor": RANDOM_PREDICTOR, "expected_hits": float(rates.sum()),
                           "rate": 100.0 * float(rates.mean())}
    for name in scores:
        k = int(per_phrase[f"{name}_hit"].sum())
        record = poisson_binomial_test(k, rates, RANDOM_PREDICTOR)
        summary["scores"][name] = {"hits": k, "phrases": len(per_phrase), "hit_rate": 100.0 * k / len(per_phrase),
                                   "baseline_rate": record["chance_value"],
                                   "expected_hits": record["expected_successes"], "p_value": record["p_value"],
                                   "log10_p_value": record["log10_p_value"], "significance": record}
    return summary, per_phrase


_PER_PHRASE_COLUMNS = ["image_id", "sentence_index", "first_word_index", "phrase", "words_scored", "num_candidates",
                       "num_right", "random_rate"]


def image_order_key(image_id: str):
    """Image ids in numeric order where they are numbers (then the others, as strings)."""
    s = str(image_id)
    return (0, int(s), s) if s.isdigit() else (1, 0, s)
