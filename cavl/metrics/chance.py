"""Chance baselines: the ``chance`` block of ``metrics.json``, same keys as each task's metrics.

Each figure is what a trivial predictor scores with the *same* metric on the *same* split,
computed exactly (analytically or as an expectation), so it is deterministic:

- VQA: the train split's majority normalised ``multiple_choice_answer`` ("yes" on VQA v2) for
  every question (``per_answer_type=True``: the majority of the question's annotated answer
  type, which peeks at the gt and is not the default); :func:`vqa_question_type_prior`: the
  train majority of each question's ``question_type``, a language-only prior.
- VCR: a uniform random choice among the 4 answers and 4 rationales: 25 / 25 / 6.25.
- NLVR2: the majority label (of the train labels when given, else of the evaluated split).
- Retrieval: a uniformly random ranking. With N candidates of which m are right, P(some right
  one in the top K) = 1 − C(N−m, K) / C(N, K); i2t averages it over images (m = the image's
  captions, N = all captions), t2i is K / num_images.
- RPG: the same formula per phrase with m = the candidates reaching IoU 0.5; ``upper_bound``
  does not depend on the ranking, so it is the metric's own.
"""

from collections.abc import Sequence

import numpy as np

from . import grounding, retrieval
from .nlvr2 import nlvr2_accuracy
from .vqa import aggregate_scores, build_answer_vocab, vqa_question_score, vqa_scores


def prob_any_in_top_k(num_candidates, num_right, k: int) -> np.ndarray:
    """P(at least one of `num_right` right candidates is in the top `k` of a uniformly random
    ranking of `num_candidates`) = 1 − C(N−m, K)/C(N, K), elementwise over arrays of N, m.
    Zero where N = 0 or m = 0."""
    n, m = np.broadcast_arrays(np.asarray(num_candidates, dtype=np.float64),
                               np.asarray(num_right, dtype=np.float64))
    if (m > n).any() or (m < 0).any():
        raise ValueError("num_right must lie in 0..num_candidates")
    none_in_top = np.ones(n.shape)
    for j in range(int(k)):
        # the j-th pick (without replacement) avoids every right candidate with probability
        # (N−m−j)/(N−j); once K exceeds N there are no more picks (factor 1).
        remaining = n - j
        factor = np.ones(n.shape)
        np.divide(np.clip(n - m - j, 0, None), remaining, out=factor, where=remaining > 0)
        none_in_top = none_in_top * factor
    return np.where(m > 0, 1.0 - none_in_top, 0.0)


def majority_answer(train_answers: Sequence[str]) -> str:
    """Most frequent normalised answer (ties: alphabetical) of a list of answers."""
    vocab = build_answer_vocab(train_answers, top_k=1)
    if not vocab:
        raise ValueError("no non-empty train answers")
    return vocab[0]


def vqa_majority_chance(train_answers: Sequence[str], answers: Sequence[Sequence[str]],
                        answer_types: Sequence[str], train_answer_types: Sequence[str] = None,
                        per_answer_type: bool = False) -> dict:
    """VQA metric keys for the majority-answer predictor.

    `train_answers`: the train split's ``multiple_choice_answer``; `answers`, `answer_types`: the
    evaluated split's. ``per_answer_type=True`` (needs `train_answer_types`): the train majority
    of each question's answer type (the overall majority for a type unseen in train).
    """
    overall = majority_answer(train_answers)
    if not per_answer_type:
        predictions = [overall] * len(answers)
    else:
        if train_answer_types is None or len(train_answer_types) != len(train_answers):
            raise ValueError("per_answer_type needs one train answer type per train answer")
        best = {t: majority_answer(v) for t, v in _grouped(train_answer_types, train_answers).items()}
        predictions = [best.get(t, overall) for t in answer_types]
    return aggregate_scores(vqa_scores(predictions, answers), answer_types)


def question_type_majorities(train_question_types: Sequence[str],
                             train_answers: Sequence[str]) -> tuple[dict, str]:
    """({question_type: most frequent normalised train answer of that type}, overall train
    majority); ties alphabetical, as :func:`majority_answer`."""
    if len(train_question_types) != len(train_answers):
        raise ValueError(f"{len(train_question_types)} train question types for "
                         f"{len(train_answers)} train answers")
    best = {t: majority_answer(answers)
            for t, answers in _grouped(train_question_types, train_answers).items()
            if build_answer_vocab(answers, top_k=1)}  # a type with only empty answers: no prior
    return best, majority_answer(train_answers)


def _grouped(keys, values) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for k, v in zip(keys, values):
        groups.setdefault(k, []).append(v)
    return groups


def vqa_question_type_prior(train_question_types: Sequence[str], train_answers: Sequence[str],
                            eval_question_types: Sequence[str],
                            eval_answers: Sequence[Sequence[str]]) -> np.ndarray:
    """Per-question official accuracies (0–1, float64 array) of the question-type prior: the
    most frequent normalised train ``multiple_choice_answer`` of the question's ``question_type``
    (the overall train majority for a type unseen in train).
    """
    if len(eval_question_types) != len(eval_answers):
        raise ValueError(f"{len(eval_question_types)} question types for {len(eval_answers)} "
                         "evaluated questions")
    best, overall = question_type_majorities(train_question_types, train_answers)
    return np.array([vqa_question_score(best.get(t, overall), humans)
                     for t, humans in zip(eval_question_types, eval_answers)], dtype=np.float64)


def vcr_chance(num_answer_choices: int = 4, num_rationale_choices: int = 4) -> dict:
    """Uniform random choice: ``q2a`` = 1/A, ``qa2r`` = 1/R, ``q2ar`` = 1/(A·R), in percent."""
    if num_answer_choices < 1 or num_rationale_choices < 1:
        raise ValueError("need at least one choice")
    return {"q2a": 100.0 / num_answer_choices,
            "qa2r": 100.0 / num_rationale_choices,
            "q2ar": 100.0 / (num_answer_choices * num_rationale_choices)}


def nlvr2_majority_chance(identifiers: Sequence[str], labels, train_labels=None) -> dict:
    """``accuracy`` and ``consistency`` of predicting the majority label (of `train_labels` when
    given, else of `labels`; a tie goes to True) everywhere."""
    labels = np.asarray(labels)
    source = labels if train_labels is None else np.asarray(train_labels)
    if source.dtype != bool or len(source) == 0:
        raise ValueError("labels must be a non-empty boolean array")
    majority = 2 * int(source.sum()) >= len(source)
    return nlvr2_accuracy(identifiers, np.full(len(labels), majority), labels)


def retrieval_chance(caption_to_image, num_images: int = None, ks=retrieval.KS) -> dict:
    """Expected ``i2t_r@K``, ``t2i_r@K`` and ``rsum`` of a uniformly random ranking, in percent.
    `num_images` defaults to the largest index in `caption_to_image` + 1."""
    cap2img = np.asarray(caption_to_image, dtype=np.int64)
    if cap2img.ndim != 1 or cap2img.size == 0:
        raise ValueError("caption_to_image must be a non-empty 1-D array")
    if num_images is None:
        num_images = int(cap2img.max()) + 1
    if cap2img.min() < 0 or cap2img.max() >= num_images:
        raise ValueError(f"caption_to_image has indices outside 0..{num_images - 1}")
    per_image = np.bincount(cap2img, minlength=num_images)
    if (per_image == 0).any():
        raise ValueError("images without any caption cannot be queried")
    out = {f"i2t_r@{k}": 100.0 * float(prob_any_in_top_k(len(cap2img), per_image, k).mean())
           for k in ks}
    out.update({f"t2i_r@{k}": 100.0 * min(k, num_images) / num_images for k in ks})
    out["rsum"] = sum(out.values())
    return out


def rpg_chance(candidate_boxes: Sequence, gt_boxes: Sequence, ks=grounding.KS,
               iou_threshold: float = grounding.IOU_THRESHOLD,
               pixel_inclusive: bool = False) -> tuple[dict, int]:
    """Expected RPG recall of a uniformly random ranking of each phrase's candidates →
    (``{"r@K"..., "upper_bound"}`` in percent, number of phrases excluded for having no gt box),
    over the same phrases as :func:`cavl.metrics.grounding.rpg_recall`."""
    if len(candidate_boxes) != len(gt_boxes):
        raise ValueError("candidate_boxes and gt_boxes differ in length")
    n, m, excluded = [], [], 0
    for boxes, gt in zip(candidate_boxes, gt_boxes):
        gt = grounding.as_boxes("gt_boxes", gt)
        if len(gt) == 0:
            excluded += 1
            continue
        hits = grounding.candidate_hits(boxes, gt, iou_threshold, pixel_inclusive)
        n.append(len(hits))
        m.append(int(hits.sum()))
    if not n:
        raise ValueError("no phrase with a ground-truth box to evaluate")
    n, m = np.asarray(n), np.asarray(m)
    out = {f"r@{k}": 100.0 * float(prob_any_in_top_k(n, m, k).mean()) for k in ks}
    out["upper_bound"] = 100.0 * float((m > 0).mean())
    return out, excluded

