"""VQA v2: the question with the image's regions; classification over the top-K train answers.

Answer vocabulary: the K most frequent normalised `multiple_choice_answer`s of the train split
(K = `answer_vocab_size`, 3,129 at paper scale); a prediction is written in its class's most
frequent train spelling ("t-shirt", not "t shirt"). Targets: the soft score of each vocabulary
answer from the 10 human answers (0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / ≥4 agreeing humans),
BCE loss summed over answers. Metric: the official VQA accuracy (cavl.metrics.vqa), overall and
per answer type; chance: the train majority answer; baseline (metrics.json `baselines`): the
train majority answer of each question type, with a sign test of the model against it, also the
task's `significance` record of the accuracy (a VQA answer has a soft score: no binomial).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cavl.metrics.chance import vqa_majority_chance, vqa_question_type_prior
from cavl.metrics.significance import sign_test
from cavl.metrics.vqa import build_answer_vocab, encode_soft_targets, surface_forms, vqa_accuracy, vqa_scores
from cavl.settings import task_options
from cavl.tasks.base import Encoded, MlpHead, Task, TaskLoss, TextImage


class VqaHead(MlpHead):
    def forward(self, enc: Encoded):
        return self.mlp(enc.pooled[:, 0])  # (B, A)


def _answers(values) -> list:
    return [[] if a is None else list(a) for a in values]


class VqaTask(Task):
    name = "vqa"
    label_columns = ("answers",)
    options = task_options("vqa")  # answer_vocab_size: answer classes (paper 3,129)

    def prepare(self, train: pd.DataFrame, options: dict) -> dict:
        k = int(options["answer_vocab_size"])
        answers = train["multiple_choice_answer"].dropna().astype(str)
        vocab = build_answer_vocab(answers, top_k=k)
        return {"answers": vocab, "written": surface_forms(answers, vocab)}

    def sequences(self, example, item, state):
        return [TextImage(example["question"].split(), example["image_id"])]

    def targets(self, examples, items, state):
        return {"vqa_targets": encode_soft_targets(_answers(examples["answers"]), state["answers"])}

    def make_head(self, hidden, state, eps, dropout):
        return VqaHead(hidden, hidden, len(state["answers"]), eps, dropout)

    def loss(self, out, batch, state):
        logits = out.logits  # (B, A)
        targets = batch["vqa_targets"].to(logits.dtype)  # (B, A)
        loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]
        return TaskLoss(loss, {"vqa_loss": loss})

    def decode(self, out, batch):
        probs = torch.sigmoid(out.logits.float())  # (B, A)
        score, index = probs.max(dim=1)
        return {"answer_index": index.cpu().numpy(), "score": score.cpu().numpy()}

    def predictions(self, examples, items, outputs, state):
        vocab = np.asarray(state.get("written", state["answers"]), dtype=object)  # as annotators write them
        rows = items["example"].to_numpy()
        return pd.DataFrame({
            "question_id": examples["question_id"].to_numpy()[rows],
            "image_id": examples["image_id"].astype(str).to_numpy()[rows],
            "answer": vocab[outputs["answer_index"]],
            "score": outputs["score"].astype(np.float32),
        })

    def metrics(self, predictions, examples, state):
        gold = self.gold(examples, predictions, "question_id")
        return vqa_accuracy(predictions["answer"].tolist(), _answers(gold["answers"]), gold["answer_type"].tolist())

    def chance(self, train, examples, state):
        return vqa_majority_chance(train["multiple_choice_answer"].dropna().astype(str).tolist(),
                                   _answers(examples["answers"]), examples["answer_type"].tolist())

    def report(self, predictions, examples, state, train=None):
        """A stronger baseline than chance: each question answered with its question type's train
        majority answer; the model against it by an exact one-sided sign test over questions,
        in `baselines` and as the accuracy's `significance` record (needs `train`)."""
        if train is None:
            return {}
        gold = self.gold(examples, predictions, "question_id")
        answers = _answers(gold["answers"])
        labelled = train.dropna(subset=["multiple_choice_answer"])
        prior = vqa_question_type_prior(labelled["question_type"].astype(str).tolist(),
                                        labelled["multiple_choice_answer"].astype(str).tolist(),
                                        gold["question_type"].astype(str).tolist(), answers)
        model = vqa_scores(predictions["answer"].tolist(), answers)
        test = sign_test(model, prior, "question-type prior: the train majority answer of each question's "
                                       "question_type, per-question VQA scores paired with the model's")
        return {"baselines": {"question_type_prior": {
                    "accuracy": 100.0 * float(prior.mean()),
                    "sign_test": {"wins": test["successes"], "losses": test["trials"] - test["successes"],
                                  "ties": test["ties"], "p_value": test["p_value"]}}},
                "significance": {"accuracy": test}}


TASK = VqaTask()
