"""NLVR2: is the statement true of the image pair? (the VisualBERT / MMF pair approach)

Each example becomes two sequences, (statement, left image) and (statement, right image); the
head classifies the concatenation of their two pooled states. Metrics: accuracy and
consistency (cavl.metrics.nlvr2); chance: the train majority label; significance (metrics.json
`significance`): accuracy against the stronger of a uniform random label (1/2) and the majority
label of the evaluated split, by an exact one-sided binomial over statements (`report`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cavl.metrics.chance import nlvr2_majority_chance
from cavl.metrics.nlvr2 import nlvr2_accuracy
from cavl.metrics.significance import binomial_test
from cavl.tasks.base import Encoded, MlpHead, Task, TextImage, cross_entropy_loss


class Nlvr2Head(MlpHead):
    def forward(self, enc: Encoded):
        B, K, H = enc.pooled.shape
        return self.mlp(enc.pooled.reshape(B, K * H))  # (B, 2): false, true


class Nlvr2Task(Task):
    name = "nlvr2"
    num_candidates = 2
    image_columns = ("left_image_id", "right_image_id")
    label_columns = ("label",)

    def sequences(self, example, item, state):
        words = example["sentence"].split()
        return [TextImage(words, example["left_image_id"]), TextImage(words, example["right_image_id"])]

    def targets(self, examples, items, state):
        labels = examples["label"].fillna(False).astype(bool).to_numpy()
        return {"nlvr2_labels": labels.astype(np.int64)}

    def make_head(self, hidden, state, eps, dropout):
        return Nlvr2Head(2 * hidden, hidden, 2, eps, dropout)

    def loss(self, out, batch, state):
        return cross_entropy_loss(out, batch["nlvr2_labels"], "nlvr2_loss")

    def decode(self, out, batch):
        return {"prob_true": torch.softmax(out.logits.float(), dim=1)[:, 1].cpu().numpy()}

    def predictions(self, examples, items, outputs, state):
        rows = items["example"].to_numpy()
        prob = outputs["prob_true"].astype(np.float32)
        return pd.DataFrame({"identifier": examples["identifier"].to_numpy()[rows],
                             "prediction": prob >= 0.5, "prob_true": prob})

    def metrics(self, predictions, examples, state):
        gold = self.gold(examples, predictions, "identifier")["label"].astype(bool)
        return nlvr2_accuracy(predictions["identifier"].tolist(), predictions["prediction"].to_numpy(bool),
                              gold.to_numpy(bool))

    def chance(self, train, examples, state):
        return nlvr2_majority_chance(examples["identifier"].tolist(), examples["label"].to_numpy(bool),
                                     train["label"].dropna().to_numpy(bool))

    def report(self, predictions, examples, state, train=None):
        """`significance` of the accuracy: each statement right or wrong, against the stronger
        (larger rate) of a uniform random label (1/2) and the evaluated split's majority label
        (its share of the split). The latter is the best any predictor that ignores the
        statement and images can expect (a label-independent guess is right with probability
        q·π + (1 − q)(1 − π) ≤ max(π, 1 − π)), so it also bounds the train-majority `chance`."""
        gold = self.gold(examples, predictions, "identifier")["label"].to_numpy(bool)
        right = predictions["prediction"].to_numpy(bool) == gold
        majority = nlvr2_majority_chance(predictions["identifier"].tolist(), gold)["accuracy"] / 100.0
        if majority > 0.5:
            label = bool(gold.sum() * 2 >= len(gold))
            chance, what = majority, f"majority label of the evaluated split ({label}) for every statement"
        else:
            chance, what = 0.5, "uniform random label (the evaluated split is balanced)"
        return {"significance": {"accuracy": binomial_test(int(right.sum()), len(right), chance, what)}}


TASK = Nlvr2Task()
