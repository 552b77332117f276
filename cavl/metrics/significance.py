"""Paired significance of a model against a baseline on the same questions.

:func:`paired_sign_test` is the exact one-sided sign test: over the questions where the two
per-question scores differ, the model wins ``w`` and loses ``l``; under the null hypothesis
(the model is no better) each of these ``n = w + l`` questions is a win with probability 1/2,
so ``p = P(X >= w)`` with ``X ~ Binomial(n, 1/2)`` = sum_{k=w..n} C(n, k) / 2^n, computed
exactly with integers (no approximation, no dependency). Ties (equal scores, e.g. both 0 or
both 1 on a VQA question) carry no information about which is better and are left out; with
no differing question at all, p = 1.
"""

import math
from fractions import Fraction

import numpy as np


def sign_test_p_value(wins: int, losses: int) -> float:
    """Exact one-sided p = P(X >= wins), X ~ Binomial(wins + losses, 1/2); 1.0 when both are 0."""
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must be non-negative")
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(wins, n + 1))
    return float(Fraction(tail, 2 ** n))


def binomial_p_value(successes: int, trials: int, chance: float) -> float:
    """Exact one-sided p = P(X >= successes), X ~ Binomial(trials, chance): how often a predictor
    right with probability `chance` on each of `trials` items gets at least `successes` right."""
    if not 0 <= successes <= trials or not 0.0 <= chance <= 1.0:
        raise ValueError("need 0 <= successes <= trials and 0 <= chance <= 1")
    return float(min(1.0, sum(math.comb(trials, k) * chance ** k * (1.0 - chance) ** (trials - k)
                              for k in range(successes, trials + 1))))


def paired_sign_test(model_scores, baseline_scores) -> dict:
    """One-sided exact sign test that the model scores higher than the baseline per question.

    `model_scores`, `baseline_scores`: per-question scores on the same questions in the same
    order (e.g. :func:`cavl.metrics.vqa.vqa_scores` of the model and of a chance baseline such
    as :func:`cavl.metrics.chance.vqa_question_type_prior`). → ``{"wins", "losses", "ties",
    "p_value"}``: questions where the model scores higher / lower / the same, and
    P(X >= wins) for X ~ Binomial(wins + losses, 1/2).
    """
    model = np.asarray(model_scores, dtype=np.float64)
    baseline = np.asarray(baseline_scores, dtype=np.float64)
    if model.ndim != 1 or model.shape != baseline.shape:
        raise ValueError(f"need two 1-D score arrays of the same length, got shapes "
                         f"{model.shape} and {baseline.shape}")
    if np.isnan(model).any() or np.isnan(baseline).any():
        raise ValueError("scores contain NaN")
    wins = int((model > baseline).sum())
    losses = int((model < baseline).sum())
    ties = int(model.size - wins - losses)
    return {"wins": wins, "losses": losses, "ties": ties,
            "p_value": sign_test_p_value(wins, losses)}
