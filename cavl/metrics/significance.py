"""Significance of a model's results against a chance predictor: exact one-sided p-values.

"Beats chance" is a statistic computed from counts, never a threshold on the metric: each task's
``metrics.json`` carries a ``significance`` block (:func:`binomial_test`,
:func:`poisson_binomial_test`, :func:`sign_test`; keys at :data:`RECORD_KEYS`).

- Binomial: the chance predictor right on each of ``n`` items with the same probability ``c``
  (VCR 1/4 or 1/16, NLVR2 ≥ 1/2, TIR t2i 1/#images): ``p = P(X >= successes)``, X ~ Bin(n, c).
- Poisson-binomial: right on item ``i`` with its own probability ``c_i`` (RPG R@1: hit
  candidates / candidates of the phrase; TIR i2t: the image's captions / all captions), by an
  exact dynamic programme over the items.
- Sign test (VQA: soft scores, no binomial): over the questions where model and baseline scores
  differ, the model wins ``w`` of ``n``; ``p = P(X >= w)``, X ~ Bin(n, 1/2), exactly with
  integers. Ties carry no information and are left out; with none differing, p = 1.

The binomial and Poisson-binomial tails are summed in log space, so nothing underflows: p is
0.0 only when the exact tail is below the smallest positive float (~5e-324), and the records'
``log10_p_value`` stays finite then (null only for p exactly 0: a result chance cannot reach).
"""

import math
import numbers
from fractions import Fraction

import numpy as np


def sign_test_p_value(wins: int, losses: int) -> float:
    """Exact one-sided p = P(X >= wins), X ~ Binomial(wins + losses, 1/2); 1.0 when both are 0."""
    if wins < 0 or losses < 0:
        raise ValueError("wins and losses must be non-negative")
    n = wins + losses
    tail, term = 0, math.comb(n, wins)
    for k in range(wins, n + 1):  # C(n, k+1) = C(n, k)(n-k)/(k+1), exactly: one big product a term
        tail += term
        term = term * (n - k) // (k + 1)
    return float(Fraction(tail, 2 ** n))


def binomial_log_sf(successes: int, trials: int, chance: float) -> float:
    """Natural log of P(X >= successes), X ~ Binomial(trials, chance): the log-sum-exp of the
    exact log terms log C(n, k) + k log c + (n - k) log(1 - c), k = successes..trials (no
    underflow, no float overflow of C(n, k)). 0.0 for P = 1, -inf for P = 0."""
    successes, trials = _count("successes", successes), _count("trials", trials)
    if not 0 <= successes <= trials or not 0.0 <= chance <= 1.0:
        raise ValueError("need 0 <= successes <= trials and 0 <= chance <= 1")
    if successes == 0 or chance == 1.0:
        return 0.0
    if chance == 0.0:
        return -math.inf
    k = np.arange(successes, trials + 1)
    log_comb = math.lgamma(trials + 1) - np.array([math.lgamma(j + 1) + math.lgamma(trials - j + 1) for j in k])
    terms = log_comb + k * math.log(chance) + (trials - k) * math.log1p(-chance)
    return min(0.0, _logsumexp(terms))


def paired_sign_test(model_scores, baseline_scores) -> dict:
    """One-sided exact sign test that the model scores higher than the baseline per question
    (two 1-D arrays, same questions, same order) → ``{"wins", "losses", "ties", "p_value"}``."""
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


def poisson_binomial_log_sf(successes: int, probabilities) -> float:
    """Natural log of P(S >= successes), S = the number of successes of independent items, item i
    a success with probability ``probabilities[i]``. 0.0 for P = 1, -inf for P = 0.

    Exact dynamic programme on log probabilities, with an absorbing state for ">= s so far";
    states that can no longer reach s are dropped, so the cost is O(n · min(s, n - s)). Items
    with probability 0 or 1 are counted, not iterated.
    """
    p = _probabilities(probabilities)
    successes = _count("successes", successes)
    if not 0 <= successes <= len(p):
        raise ValueError(f"need 0 <= successes <= {len(p)} (the number of items), got {successes}")
    s = successes - int((p == 1.0).sum())
    p = p[(p > 0.0) & (p < 1.0)]
    if s <= 0:
        return 0.0
    m = len(p)
    if s > m:
        return -math.inf
    log_p, log_q = np.log(p), np.log1p(-p)
    f = np.full(s + 1, -np.inf)  # f[k]: log P(k successes so far), k < s; f[s]: log P(>= s so far)
    f[0] = 0.0
    for i in range(m):
        # after item i: states that can still reach s (k >= s - items left) and that are reachable (k <= i + 1)
        lo, hi = max(1, s - (m - i - 1)), min(i + 1, s - 1)
        absorbed = np.logaddexp(f[s], f[s - 1] + log_p[i])
        if lo <= hi:  # the right-hand side reads the old values before the slice is overwritten
            f[lo : hi + 1] = np.logaddexp(f[lo : hi + 1] + log_q[i], f[lo - 1 : hi] + log_p[i])
        f[0] += log_q[i]
        f[s] = absorbed
    return min(0.0, float(f[s]))


# ---------------------------------------------------------------------------------------------
# The `significance` records of metrics.json
# ---------------------------------------------------------------------------------------------

RECORD_KEYS = ("successes", "trials", "chance_predictor", "chance_value", "chance_rate",
               "chance_rate_range", "expected_successes", "test", "p_value", "log10_p_value")
"""Keys of one record of the ``significance`` block of metrics.json (metric name → record):

- ``successes``, ``trials``: the counts tested (sign test: wins / questions that differ, plus
  ``ties``); ``chance_predictor``: the chance predictor, in words; ``chance_value``: its value
  of the metric, in percent;
- ``chance_rate``: a trial's success probability under the null hypothesis (0–1; the mean where
  it differs per trial), ``chance_rate_range``: [min, max]; ``expected_successes``: their sum;
- ``test``: ``binomial``, ``poisson_binomial`` or ``sign_test`` (exact, one-sided);
- ``p_value``: P(X >= successes) under the null hypothesis; ``log10_p_value``: its base-10 log
  (null when p is exactly 0; JSON has no -inf).
"""


def binomial_test(successes: int, trials: int, chance: float, predictor: str) -> dict:
    """Binomial-test record: `successes` of `trials` items right against `predictor`, right on
    each with probability `chance` (0–1)."""
    log_p = binomial_log_sf(successes, trials, chance)
    return _record(successes, trials, predictor, 100.0 * chance, chance, [chance, chance], trials * chance,
                   "binomial", log_p)


def poisson_binomial_test(successes: int, probabilities, predictor: str) -> dict:
    """Poisson-binomial-test record: `successes` items right against `predictor`, right on item i
    with probability ``probabilities[i]``."""
    p = _probabilities(probabilities)
    if len(p) == 0:
        raise ValueError("no items to test")
    log_p = poisson_binomial_log_sf(successes, p)
    mean = float(p.mean())
    return _record(successes, len(p), predictor, 100.0 * mean, mean, [float(p.min()), float(p.max())],
                   float(p.sum()), "poisson_binomial", log_p)


def sign_test(model_scores, baseline_scores, predictor: str) -> dict:
    """Sign-test record (:func:`paired_sign_test`) of the model against a baseline's per-item
    scores; ``chance_value``: the baseline's mean score in percent."""
    out = paired_sign_test(model_scores, baseline_scores)
    wins, n = out["wins"], out["wins"] + out["losses"]
    baseline = 100.0 * float(np.mean(np.asarray(baseline_scores, dtype=np.float64))) if len(baseline_scores) else 0.0
    record = _record(wins, n, predictor, baseline, 0.5, [0.5, 0.5], n / 2, "sign_test",
                     binomial_log_sf(wins, n, 0.5))
    record["p_value"] = out["p_value"]  # the exact rational tail, as `paired_sign_test`
    record["ties"] = out["ties"]
    return record


def _record(successes, trials, predictor, chance_value, rate, rate_range, expected, test, log_p) -> dict:
    return {"successes": int(successes), "trials": int(trials), "chance_predictor": predictor,
            "chance_value": float(chance_value), "chance_rate": float(rate),
            "chance_rate_range": [float(r) for r in rate_range], "expected_successes": float(expected),
            "test": test, "p_value": math.exp(log_p),
            "log10_p_value": log_p / math.log(10.0) if log_p > -math.inf else None}


def _count(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer count, got {value!r}")
    return int(value)


def _probabilities(values) -> np.ndarray:
    p = np.asarray(values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"probabilities must be 1-D, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    return p


def _logsumexp(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    top = float(values.max()) if values.size else -math.inf
    if top == -math.inf:
        return -math.inf
    return top + math.log(float(np.exp(values - top).sum()))
