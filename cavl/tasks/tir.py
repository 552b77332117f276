"""TIR: image↔text retrieval on Flickr30k (Karpathy split), finetuned for image-text matching.

Examples: one row per caption (image_id, sentence_id, caption). The retrieval set of a split is
its images, in order of first appearance, and all their captions (`retrieval_set`).

Training — one item per caption with its own image; per batch (`forward`, a `TirOutput`):
  1. separate passes: E′ of each caption, F′ of each image, and their cosine matrix in the batch;
  2. in-batch hard negatives by that similarity (as ALBEF): for each caption an image of another
     picture drawn ∝ exp(cos / τ), for each image a caption likewise (the hardest at evaluation);
     a picture's own five captions are never negatives;
  3. the ITM head (linear on the pooled [CLS] state; it starts as pretraining's ITM head) on the
     B positive and up to 2B negative fused pairs: cross-entropy (`itm_loss`);
  4. auxiliary PwCL on (E′, F′) (`pwcl_weight`), every caption of a picture a positive (`masked_pwcl`).
Evaluation (`predict_split`): every image against every caption with cavl.retrieval (two-stage or
exhaustive; re-ranking score = ITM score + sim_weight · cos(E′, F′)); Recall@K per
cavl.metrics.retrieval. Significance (`report`): i2t_r@1 and t2i_r@1 against a uniformly random
ranking. Regions: the detected ones only (RegionSource with skip_given), as the standard protocol.

Predictions (one row per query): direction (i2t / t2i), query (image_id / sentence_id), image_id
(the query's picture), rank (0-based, of the best right candidate, pessimistic ties),
in_shortlist, top (the 10 best candidates' ids).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from cavl.adapters import TaskHead
from cavl.metrics.chance import prob_any_in_top_k, retrieval_chance
from cavl.metrics.retrieval import KS, recall_at_k
from cavl.metrics.significance import binomial_test, poisson_binomial_test
from cavl.model import WEIGHTS_NAME
from cavl.retrieval import (ModelScorer, image_embedding, itm_score, pair_batch, retrieve, text_embedding,
                            top_k)
from cavl.settings import task_options
from cavl.tasks.base import Encoded, Task, TaskLoss, TaskOutput, TextImage

log = logging.getLogger(__name__)

TOP = 10  # candidates kept per query in the predictions table


def retrieval_set(examples: pd.DataFrame) -> tuple[list, np.ndarray]:
    """(image ids in order of first appearance, image index of each caption row)."""
    codes, images = pd.factorize(examples["image_id"].astype(str))
    return list(images), codes.astype(np.int64)


def masked_pwcl(text_emb, image_emb, same, temperature: float):
    """PwCL (cavl.losses.PairwiseContrastiveLoss) with positives given by `same` (B, B) instead
    of the diagonal: L = logsumexp_{¬same}(cos/τ) − logsumexp_{same}(cos/τ). With `same` the
    identity it is PwCL itself; here a picture's other captions in the batch are positives too."""
    e = F.normalize(text_emb.float(), dim=-1)  # (B, H)
    f = F.normalize(image_emb.float(), dim=-1)  # (B, H)
    logits = e @ f.t() / temperature  # (B, B)
    return torch.logsumexp(logits[~same], 0) - torch.logsumexp(logits[same], 0)


def draw_negatives(similarity, same, sample: bool):
    """For each row, a column of another picture: drawn ∝ exp(similarity) (sample) or the most
    similar (not sample); -1 where the batch has no other picture."""
    logits = similarity.masked_fill(same, float("-inf"))  # (B, B)
    valid = (~same).any(1)  # (B,)
    out = torch.full((len(logits),), -1, dtype=torch.long, device=logits.device)
    if valid.any():
        x = logits[valid]
        out[valid] = torch.multinomial(torch.softmax(x, 1), 1).squeeze(1) if sample else x.argmax(1)
    return out


def pretrained_itm_head(backbone_dir) -> dict | None:
    """The ITM head tensors of a pretraining model folder (names as TirHead's), or None."""
    with safe_open(str(Path(backbone_dir) / WEIGHTS_NAME), framework="pt") as f:
        names = [k for k in f.keys() if k.startswith("itm_head.")]
        return {k[len("itm_head."):]: f.get_tensor(k) for k in names} or None


@dataclass
class TirOutput(TaskOutput):
    """TIR's training pass: `logits` (B + n, 2) ITM logits of the B positive pairs, then of the
    n hard negatives (caption i with image neg_image[i] where ≥ 0, then image i with caption
    neg_text[i] where ≥ 0), and the embeddings PwCL reads."""

    labels: torch.Tensor  # (B + n,) ITM labels: 1 for the positives, 0 for the negatives
    text_emb: torch.Tensor  # (B, H) E′ of each caption
    image_emb: torch.Tensor  # (B, H) F′ of each image
    same: torch.Tensor  # (B, B) bool: caption i and image j show one picture
    neg_image: torch.Tensor  # (B,) the negative image of caption i, -1 where none
    neg_text: torch.Tensor  # (B,) the negative caption of image i, -1 where none


class TirHead(TaskHead):
    """Image-text matching on the pooled [CLS] state: logits (no match, match). Its parameter
    names are those of pretraining's ItmHead, so the pretrained head loads into it (zs_tir)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.classifier = nn.Linear(hidden, 2)
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, enc: Encoded):
        return self.classifier(enc.pooled[:, 0])  # (B, 2)


class TirTask(Task):
    name = "tir"
    main_metric = "rsum"
    label_columns = ("caption",)
    skip_given = True
    # retrieval: two_stage | exhaustive; shortlist_k: candidates re-ranked per query (0 = E′·F′ only);
    # sim_weight: re-ranking score = ITM score + sim_weight · cos(E′, F′) (ALBEF's; 0 = ITM alone);
    # pwcl_weight: auxiliary PwCL on E′, F′ (0 = off); temperature: its τ and that of negative sampling
    options = task_options("tir")

    # -- data -----------------------------------------------------------------------------------

    def prepare(self, train, options):
        """The task's options (validated by the config schema) over their defaults."""
        state = {**self.options, **options}
        return {k: state[k] for k in self.options}

    def sequences(self, example, item, state):
        return [TextImage(str(example["caption"]).split(), example["image_id"])]

    def targets(self, examples, items, state):
        codes, _ = pd.factorize(examples["image_id"].astype(str))
        return {"tir_image": codes.astype(np.int64)}  # same code = same picture (within the batch)

    # -- model ----------------------------------------------------------------------------------

    def make_head(self, hidden, state, eps, dropout):
        return TirHead(hidden)

    def init_from_pretrained(self, model, backbone_dir) -> bool:
        """Load pretraining's ITM head (`itm_head.*` of the pretraining folder) into the head;
        False when the folder has none (a bare backbone: the head stays freshly initialised)."""
        head = pretrained_itm_head(backbone_dir)
        if head is None:
            log.warning("%s: %s has no ITM head; the ITM head starts from scratch", self.name, backbone_dir)
            return False
        model.head.load_state_dict(head, strict=True)
        return True

    def forward(self, model, batch) -> TirOutput:
        """Positives, in-batch hard negatives by E′·F′, and the embeddings for PwCL (module docstring)."""
        tau = float(model.state["temperature"])
        B = batch["input_ids"].shape[0]
        pos = model.head(model.encode(batch))  # (B, 2) — cached backbone states when there are
        e = text_embedding(model, batch)  # (B, H)
        f = image_embedding(model, batch)  # (B, H)
        picture = batch["tir_image"]
        same = picture[:, None] == picture[None, :]  # (B, B) caption i, image j of one picture
        with torch.no_grad():
            sim = F.normalize(e.float(), dim=-1) @ F.normalize(f.float(), dim=-1).t() / tau  # (B, B)
            neg_image = draw_negatives(sim, same, model.training)  # (B,) for caption i
            neg_text = draw_negatives(sim.t(), same.t(), model.training)  # (B,) for image i
        rows = torch.arange(B, device=picture.device)
        a, b = neg_image >= 0, neg_text >= 0
        text_rows = torch.cat([rows[a], neg_text[b]])
        image_rows = torch.cat([neg_image[a], rows[b]])
        logits, labels = pos, torch.ones(B, dtype=torch.long, device=pos.device)
        if len(text_rows):
            neg = model.head(model.encode(pair_batch(batch, text_rows, image_rows)))  # (n, 2)
            logits = torch.cat([pos, neg])
            labels = torch.cat([labels, torch.zeros(len(neg), dtype=torch.long, device=pos.device)])
        return TirOutput(logits, labels, e, f, same, neg_image, neg_text)

    def loss(self, out: TirOutput, batch, state):
        """ITM cross-entropy, plus state["pwcl_weight"] · PwCL at τ = state["temperature"]."""
        itm = F.cross_entropy(out.logits.float(), out.labels)
        losses, total = {"itm_loss": itm}, itm
        weight = float(state["pwcl_weight"])
        if weight > 0:
            same = out.same
            pwcl = (masked_pwcl(out.text_emb, out.image_emb, same, float(state["temperature"])) if (~same).any()
                    else out.text_emb.sum() * 0.0)
            losses["pwcl_loss"] = pwcl
            total = total + weight * pwcl
        return TaskLoss(total, losses)

    # -- evaluation -----------------------------------------------------------------------------

    def decode(self, out: TirOutput, batch):
        """Per caption (in-training evaluation only): ITM score of its own pair and of its negatives."""
        scores = itm_score(out.logits).cpu().numpy()
        B = len(out.neg_image)
        a, b = (out.neg_image >= 0).cpu().numpy(), (out.neg_text >= 0).cpu().numpy()
        neg_image, neg_text = np.full(B, np.nan, np.float32), np.full(B, np.nan, np.float32)
        neg_image[a] = scores[B : B + a.sum()]
        neg_text[b] = scores[B + a.sum() :]
        return {"match_score": scores[:B], "neg_image_score": neg_image, "neg_text_score": neg_text}

    def predictions(self, examples, items, outputs, state):
        rows = items["example"].to_numpy()
        return pd.DataFrame({"sentence_id": examples["sentence_id"].to_numpy()[rows], **outputs})

    def predict_split(self, model, examples, regions, tokenizer, data, batch_size, device):
        """Rank every caption for every image and every image for every caption (cavl.retrieval)."""
        images, cap2img = retrieval_set(examples)
        scorer = ModelScorer(model, tokenizer, regions, data, batch_size, device)
        state = model.state
        was_training = model.training
        model.eval()
        try:
            result = retrieve(scorer, images, examples["caption"].astype(str).tolist(), cap2img,
                              state["retrieval"], int(state["shortlist_k"]), float(state.get("sim_weight", 0.0)))
        finally:
            model.train(was_training)
        log.info("%s: %d images × %d captions, %s (k=%d): %d fused pairs of %d; %s", self.name, len(images),
                 len(cap2img), result.mode, result.k, result.pairs_scored, len(images) * len(cap2img),
                 ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items()))
        caption_ids = examples["sentence_id"].astype(str).to_numpy()
        image_ids = np.asarray(images, dtype=object)
        i2t_top = top_k(result.i2t_scores.astype(np.float64), TOP)  # (I, 10)
        t2i_top = top_k(result.t2i_scores.T.astype(np.float64), TOP)  # (C, 10)
        table = pd.concat([
            pd.DataFrame({"direction": "i2t", "query": image_ids, "image_id": image_ids,
                          "rank": result.i2t_ranks, "in_shortlist": result.i2t_in_shortlist,
                          "top": [caption_ids[r].tolist() for r in i2t_top]}),
            pd.DataFrame({"direction": "t2i", "query": caption_ids, "image_id": image_ids[cap2img],
                          "rank": result.t2i_ranks, "in_shortlist": result.t2i_in_shortlist,
                          "top": [image_ids[r].tolist() for r in t2i_top]}),
        ], ignore_index=True)
        table.attrs["retrieval"] = {"mode": result.mode, "shortlist_k": result.k, "sim_weight": result.sim_weight,
                                    "pairs_scored": int(result.pairs_scored),
                                    "pairs_exhaustive": len(images) * len(cap2img),
                                    "seconds": {k: round(v, 3) for k, v in result.seconds.items()}}
        return table

    def metrics(self, predictions, examples, state):
        if "direction" not in predictions:  # per-batch predictions of the in-training evaluation
            pos, ni, nt = (predictions[c].to_numpy() for c in ("match_score", "neg_image_score", "neg_text_score"))
            right = np.concatenate([pos > 0, ni[~np.isnan(ni)] <= 0, nt[~np.isnan(nt)] <= 0])
            return {"itm_accuracy": 100.0 * float(right.mean())}
        ranks = {d: predictions.loc[predictions["direction"] == d, "rank"].to_numpy() for d in ("i2t", "t2i")}
        out = {f"{d}_r@{k}": v for d in ranks for k, v in recall_at_k(ranks[d], KS).items()}
        out["rsum"] = sum(out.values())
        return out

    def chance(self, train, examples, state):
        images, cap2img = retrieval_set(examples)
        return retrieval_chance(cap2img, len(images))

    def report(self, predictions, examples, state, train=None):
        images, cap2img = retrieval_set(examples)
        out = {"num_images": len(images), "num_captions": len(cap2img),
               "retrieval": predictions.attrs.get("retrieval", {})}
        if "direction" in predictions:  # the whole-split predictions (predict_split)
            out["significance"] = self.significance(predictions, examples)
        return out

    def significance(self, predictions, examples) -> dict:
        """i2t_r@1 and t2i_r@1, each query right when its rank is 0, against a uniformly random
        ranking: a caption's one image is first with probability 1/#images (exact binomial); an
        image has one of its m captions first with probability m/#captions, m per image (exact
        Poisson-binomial)."""
        images, cap2img = retrieval_set(examples)
        captions_of = dict(zip(images, np.bincount(cap2img, minlength=len(images)).tolist()))
        i2t = predictions[predictions["direction"] == "i2t"]
        t2i = predictions[predictions["direction"] == "t2i"]
        rates = prob_any_in_top_k(len(cap2img), np.array([captions_of[str(i)] for i in i2t["query"]]), 1)
        return {
            "i2t_r@1": poisson_binomial_test(int((i2t["rank"].to_numpy() < 1).sum()), rates,
                                             "uniformly random ranking of the captions (right with probability: "
                                             "the image's captions / all captions)"),
            "t2i_r@1": binomial_test(int((t2i["rank"].to_numpy() < 1).sum()), len(t2i),
                                     float(prob_any_in_top_k(len(images), 1, 1)),
                                     "uniformly random ranking of the images (one right image per caption)"),
        }


TASK = TirTask()
