"""VCR: Q→A and QA→R as 4-way multiple choice over the images' given object boxes.

Each example gives two items: Q→A (question + each answer choice) and QA→R (question + the
gold answer, + each rationale choice; the protocol gives the model the gold answer). Each
candidate is scored from its pooled state, softmax over the 4; one head and one loss serve
both sub-tasks. Metrics q2a, qa2r and q2ar (both right); chance 25 / 25 / 6.25; significance
(metrics.json `significance`, cavl.metrics.significance): each of the three against the uniform
random choice by an exact one-sided binomial over questions (rates 1/16, 1/4, 1/4).

Object references: a token `[i, j]` of the official token lists becomes the objects' names
("person and car"), and each name word is linked to region i (j) — the vcr feature shards
hold the manifest's ground-truth boxes first, in annotation order (`num_given` of them), so
object i is region i. The model turns a link into the VisualBERT alignment: the region token
gets the position embeddings of the words that refer to it (see cavl.finetune_model).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from cavl.metrics.chance import vcr_chance
from cavl.metrics.significance import binomial_test
from cavl.metrics.vcr import vcr_accuracy
from cavl.tasks.base import Encoded, MlpHead, Task, TextImage, cross_entropy_loss

Q2A, QA2R = 0, 1  # item modes


def render(tokens: list, objects: list) -> tuple[list, list]:
    """Official VCR tokens → (words, per-word list of the object indices the word refers to).

    `["Is", [0, 2], "happy", "?"]` with objects `["person", "dog", "person"]` →
    `["Is", "person", "and", "person", "happy", "?"]`, `[[], [0], [], [2], [], []]`.
    """
    words, links = [], []
    for tok in tokens:
        if isinstance(tok, list):
            for k, index in enumerate(tok):
                if k:
                    words.append("and")
                    links.append([])
                for w in str(objects[index]).split():
                    words.append(w)
                    links.append([int(index)])
        else:
            words.append(str(tok))
            links.append([])
    return words, links


class VcrHead(MlpHead):
    def forward(self, enc: Encoded):
        return self.mlp(enc.pooled).squeeze(-1)  # (B, 4): one score per candidate


class VcrTask(Task):
    name = "vcr"
    num_candidates = 4
    main_metric = "q2ar"

    def labelled_mask(self, examples):
        return ((examples["answer_label"] >= 0) & (examples["rationale_label"] >= 0)).to_numpy()

    def items(self, examples):
        n = len(examples)
        return pd.DataFrame({"example": np.repeat(np.arange(n), 2), "mode": np.tile([Q2A, QA2R], n)})

    def sequences(self, example, item, state):
        objects = list(example["objects"])
        question, q_links = render(json.loads(example["question"]), objects)
        answers = [render(a, objects) for a in json.loads(example["answer_choices"])]
        if item["mode"] == Q2A:
            return [TextImage(question, example["image_id"], words, q_links, links) for words, links in answers]
        gold_words, gold_links = answers[int(example["answer_label"])]
        context, context_links = question + gold_words, q_links + gold_links
        rationales = [render(r, objects) for r in json.loads(example["rationale_choices"])]
        return [TextImage(context, example["image_id"], words, context_links, links) for words, links in rationales]

    def targets(self, examples, items, state):
        mode = items["mode"].to_numpy()
        labels = np.where(mode == Q2A, examples["answer_label"].to_numpy(), examples["rationale_label"].to_numpy())
        return {"vcr_labels": labels.astype(np.int64)}

    def make_head(self, hidden, state, eps, dropout):
        return VcrHead(hidden, hidden, 1, eps, dropout)

    def loss(self, out, batch, state):
        return cross_entropy_loss(out, batch["vcr_labels"], "vcr_loss")

    def decode(self, out, batch):
        return {"scores": torch.softmax(out.logits.float(), dim=1).cpu().numpy()}  # (B, 4)

    def predictions(self, examples, items, outputs, state):
        scores, mode, example = outputs["scores"], items["mode"].to_numpy(), items["example"].to_numpy()
        by_mode = {m: pd.Series(list(scores[mode == m]), index=example[mode == m]) for m in (Q2A, QA2R)}
        rows = sorted(set(by_mode[Q2A].index) & set(by_mode[QA2R].index))
        a, r = np.stack(by_mode[Q2A].loc[rows].to_numpy()), np.stack(by_mode[QA2R].loc[rows].to_numpy())
        ex = examples.iloc[rows]
        return pd.DataFrame({
            "annot_id": ex["annot_id"].to_numpy(),
            "answer_pred": a.argmax(1).astype(np.int32), "rationale_pred": r.argmax(1).astype(np.int32),
            "answer_scores": list(a.astype(np.float32)), "rationale_scores": list(r.astype(np.float32)),
        })

    def metrics(self, predictions, examples, state):
        gold = self.gold(examples, predictions, "annot_id")
        return vcr_accuracy(predictions["answer_pred"].to_numpy(), gold["answer_label"].to_numpy(),
                            predictions["rationale_pred"].to_numpy(), gold["rationale_label"].to_numpy())

    def chance(self, train, examples, state):
        return vcr_chance(4, 4)

    def report(self, predictions, examples, state, train=None):
        """`significance`: q2ar (the headline), q2a and qa2r, each question right or wrong, against
        a uniform random choice of the 4 answers (and 4 rationales): exact one-sided binomials."""
        gold = self.gold(examples, predictions, "annot_id")
        answer = predictions["answer_pred"].to_numpy() == gold["answer_label"].to_numpy()
        rationale = predictions["rationale_pred"].to_numpy() == gold["rationale_label"].to_numpy()
        rates = vcr_chance(4, 4)
        right = {"q2ar": answer & rationale, "q2a": answer, "qa2r": rationale}
        what = {"q2ar": "uniform random choice of 4 answers and 4 rationales",
                "q2a": "uniform random choice of 4 answers", "qa2r": "uniform random choice of 4 rationales"}
        return {"significance": {metric: binomial_test(int(ok.sum()), len(ok), rates[metric] / 100.0, what[metric])
                                 for metric, ok in right.items()}}


TASK = VcrTask()
