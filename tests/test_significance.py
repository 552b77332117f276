"""The exact one-sided sign test against hand-computed binomial tails."""

import math

import numpy as np
import pytest

from cavl.metrics.significance import (binomial_log_sf, paired_sign_test, poisson_binomial_log_sf,
                                       sign_test_p_value)


def binomial_p_value(successes, trials, chance):
    return math.exp(binomial_log_sf(successes, trials, chance))


def poisson_binomial_p_value(successes, probabilities):
    return math.exp(poisson_binomial_log_sf(successes, probabilities))


def _scores(wins, losses, ties):
    model = [1.0] * wins + [0.0] * losses + [0.6] * ties
    baseline = [0.3] * wins + [0.9] * losses + [0.6] * ties
    return model, baseline


@pytest.mark.parametrize("wins, losses, ties, p", [
    (8, 2, 0, 56 / 1024),            # C(10,8) + C(10,9) + C(10,10) = 45 + 10 + 1 = 56
    (8, 2, 7, 56 / 1024),            # ties do not count
    (10, 0, 0, 1 / 1024),
    (0, 0, 5, 1.0),                  # all ties: no evidence
    (0, 0, 0, 1.0),                  # no questions
    (0, 3, 0, 1.0),                  # P(X >= 0) = 1
    (5, 5, 0, 638 / 1024),           # (252 + 210 + 120 + 45 + 10 + 1) / 1024
    (1, 0, 0, 0.5),
    (2, 1, 4, 4 / 8),                # (3 + 1) / 8
])
def test_hand_computed(wins, losses, ties, p):
    model, baseline = _scores(wins, losses, ties)
    out = paired_sign_test(model, baseline)
    assert out == {"wins": wins, "losses": losses, "ties": ties, "p_value": pytest.approx(p)}
    assert out["p_value"] == p  # exact: the tail is a ratio of integers


def test_matches_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    for wins, losses in ((8, 2), (30, 20), (61, 39), (3, 9), (200, 150)):
        expected = stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue
        assert sign_test_p_value(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_large_counts_stay_exact_and_in_range():
    p = sign_test_p_value(600, 400)
    assert 0.0 < p < 1e-9
    assert sign_test_p_value(500, 500) == pytest.approx(
        0.5 + math.comb(1000, 500) / 2 ** 1001)


def test_accepts_arrays_and_checks_shapes():
    out = paired_sign_test(np.array([1.0, 0.3, 0.0]), np.array([0.0, 0.3, 1.0]))
    assert (out["wins"], out["losses"], out["ties"]) == (1, 1, 1)
    assert out["p_value"] == 0.75
    with pytest.raises(ValueError):
        paired_sign_test([1.0, 0.0], [1.0])
    with pytest.raises(ValueError):
        paired_sign_test([[1.0]], [[0.0]])
    with pytest.raises(ValueError):
        paired_sign_test([float("nan")], [0.0])
    with pytest.raises(ValueError):
        sign_test_p_value(-1, 2)


def test_binomial_p_value_hand_computed():

    assert binomial_p_value(0, 5, 0.3) == pytest.approx(1.0)
    assert binomial_p_value(3, 3, 0.5) == pytest.approx(1 / 8)
    # P(X >= 2), X ~ B(4, 1/4): 1 - (3/4)^4 - 4 (1/4)(3/4)^3 = 1 - 81/256 - 108/256 = 67/256
    assert binomial_p_value(2, 4, 0.25) == pytest.approx(67 / 256)
    with pytest.raises(ValueError):
        binomial_p_value(5, 4, 0.5)


# ---------------------------------------------------------------------------------------------
# Poisson-binomial and the binomial in log space
# ---------------------------------------------------------------------------------------------

def brute_force_tail(successes, probabilities):
    """P(S >= successes) by enumerating every outcome of the items, in exact rationals."""
    from fractions import Fraction
    from itertools import product

    probs = [Fraction(p) for p in probabilities]
    total = Fraction(0)
    for outcome in product((0, 1), repeat=len(probs)):
        if sum(outcome) >= successes:
            term = Fraction(1)
            for hit, p in zip(outcome, probs):
                term *= p if hit else 1 - p
            total += term
    return total


def _reference_tail(successes, probabilities):
    """P(S >= successes) by the plain full distribution DP in probability space (fine for p-values
    far above the float range)."""
    dist = np.array([1.0])
    for p in probabilities:
        dist = np.concatenate([dist * (1 - p), [0.0]]) + np.concatenate([[0.0], dist * p])
    return dist[successes:].sum()


@pytest.mark.parametrize("seed, n", [(0, 1), (1, 5), (2, 9), (3, 12)])
def test_poisson_binomial_matches_brute_force(seed, n):

    rng = np.random.default_rng(seed)
    probs = rng.uniform(0, 1, n)
    if n > 4:
        probs[:2] = [0.0, 1.0]  # a sure miss and a sure hit among the items
    for s in range(n + 1):
        expected = float(brute_force_tail(s, probs))
        assert poisson_binomial_p_value(s, probs) == pytest.approx(expected, rel=1e-12, abs=0), (s, probs)


def test_poisson_binomial_hand_computed():

    # rates 1/2, 2/3, 1/4: P(S >= 2) = 1/4 + 1/24 + 1/12 + 1/12 = 11/24; P(S = 3) = 1/12
    assert poisson_binomial_p_value(2, [0.5, 2 / 3, 0.25]) == pytest.approx(11 / 24, rel=1e-14)
    assert poisson_binomial_p_value(3, [0.5, 2 / 3, 0.25]) == pytest.approx(1 / 12, rel=1e-14)
    assert poisson_binomial_p_value(1, [0.5, 2 / 3, 0.25]) == pytest.approx(1 - 0.5 * (1 / 3) * 0.75, rel=1e-14)


def test_poisson_binomial_matches_the_full_dp_on_hundreds_of_items():
    """Every count of 300 items of varied rates: the windowed log-space DP is the plain one."""

    rng = np.random.default_rng(7)
    probs = np.concatenate([rng.uniform(0, 0.2, 150), rng.uniform(0.5, 1, 100), rng.uniform(0, 1, 50)])
    for s in range(0, 301, 7):
        expected = _reference_tail(s, probs)
        if expected > 1e-250:
            assert poisson_binomial_p_value(s, probs) == pytest.approx(expected, rel=1e-9), s


@pytest.mark.parametrize("n, chance", [(10, 0.5), (40, 0.25), (300, 1 / 16), (1000, 0.02)])
def test_poisson_binomial_with_equal_rates_is_the_binomial(n, chance):

    for s in sorted({0, 1, n // 10, int(n * chance), int(n * chance) + 3, n // 2, n - 1, n}):
        pb = poisson_binomial_p_value(s, np.full(n, chance))
        assert pb == pytest.approx(binomial_p_value(s, n, chance), rel=1e-9), s
        assert pb == pytest.approx(_reference_tail(s, np.full(n, chance)), rel=1e-9, abs=1e-300), s


def test_binomial_and_poisson_binomial_match_scipy():
    stats = pytest.importorskip("scipy.stats")

    for s, n, c in ((9, 10, 0.5), (30, 100, 0.25), (12, 100, 1 / 16), (400, 5000, 1 / 16),
                    (700, 2000, 0.3), (3300, 5000, 0.62)):
        expected = stats.binomtest(s, n, c, alternative="greater").pvalue
        assert binomial_p_value(s, n, c) == pytest.approx(expected, rel=1e-9), (s, n, c)
        assert poisson_binomial_p_value(s, np.full(n, c)) == pytest.approx(expected, rel=1e-9), (s, n, c)


def test_extreme_counts():

    rng = np.random.default_rng(1)
    probs = rng.uniform(0.05, 0.95, 50)
    assert poisson_binomial_p_value(0, probs) == 1.0 and binomial_p_value(0, 50, 0.3) == 1.0
    # all right: the product of the rates
    assert poisson_binomial_p_value(50, probs) == pytest.approx(np.prod(probs), rel=1e-12)
    assert binomial_p_value(10, 10, 0.5) == pytest.approx(1 / 1024, rel=1e-12)
    # far in the tail, yet inside the float range: not 0
    assert poisson_binomial_p_value(200, np.full(200, 0.1)) == pytest.approx(1e-200, rel=1e-9)
    p = poisson_binomial_p_value(600, np.full(1000, 0.25))
    assert 0.0 < p < 1e-100 and p == pytest.approx(binomial_p_value(600, 1000, 0.25), rel=1e-9)
    # below the float range: p is 0.0, the log is exact
    assert binomial_p_value(2000, 2000, 0.5) == 0.0
    assert binomial_log_sf(2000, 2000, 0.5) == pytest.approx(2000 * np.log(0.5), rel=1e-12)
    assert poisson_binomial_log_sf(2000, np.full(2000, 0.5)) == pytest.approx(2000 * np.log(0.5), rel=1e-12)
    # sure things and impossible results
    assert poisson_binomial_p_value(2, [1.0, 1.0, 0.0]) == 1.0
    assert poisson_binomial_p_value(3, [1.0, 1.0, 0.0]) == 0.0
    assert poisson_binomial_log_sf(3, [1.0, 1.0, 0.0]) == -np.inf
    assert binomial_p_value(1, 5, 0.0) == 0.0 and binomial_p_value(5, 5, 1.0) == 1.0


def test_large_binomial_does_not_overflow():
    """C(n, k) beyond the float range (n ≈ 14,000 phrases): the log-space sum still works."""

    p = binomial_p_value(3600, 14000, 0.25)  # mean 3500, sd ≈ 51: about 2 sd above
    assert 0.01 < p < 0.05
    assert binomial_p_value(3500, 14000, 0.25) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("call", [
    lambda f: f.poisson_binomial_log_sf(4, [0.5, 0.5, 0.5]),      # more successes than items
    lambda f: f.poisson_binomial_log_sf(-1, [0.5]),
    lambda f: f.poisson_binomial_log_sf(1, [0.5, 1.5]),           # not a probability
    lambda f: f.poisson_binomial_log_sf(1, [0.5, float("nan")]),
    lambda f: f.poisson_binomial_log_sf(1, [[0.5, 0.5]]),         # not 1-D
    lambda f: f.poisson_binomial_log_sf(1.5, [0.5, 0.5]),         # not a count
    lambda f: f.binomial_log_sf(2, 3, 1.2),
    lambda f: f.poisson_binomial_test(0, [], "nothing"),
])
def test_bad_inputs_are_rejected(call):
    from cavl.metrics import significance

    with pytest.raises(ValueError):
        call(significance)


# ---------------------------------------------------------------------------------------------
# The records of metrics.json's `significance` block
# ---------------------------------------------------------------------------------------------

def test_binomial_record():
    from cavl.metrics.significance import RECORD_KEYS, binomial_test

    r = binomial_test(9, 10, 0.5, "coin")
    assert tuple(r) == RECORD_KEYS
    assert r["p_value"] == pytest.approx(11 / 1024, rel=1e-12)
    assert r["log10_p_value"] == pytest.approx(math.log10(11 / 1024), rel=1e-12)
    assert (r["successes"], r["trials"], r["test"], r["chance_predictor"]) == (9, 10, "binomial", "coin")
    assert (r["chance_rate"], r["chance_rate_range"], r["chance_value"], r["expected_successes"]) == (
        0.5, [0.5, 0.5], 50.0, 5.0)
    tiny = binomial_test(2000, 2000, 0.5, "coin")  # below the float range: the log says how far
    assert tiny["p_value"] == 0.0 and tiny["log10_p_value"] == pytest.approx(-2000 * math.log10(2), rel=1e-12)
    impossible = binomial_test(1, 3, 0.0, "never right")
    assert impossible["p_value"] == 0.0 and impossible["log10_p_value"] is None


def test_poisson_binomial_record():
    from cavl.metrics.significance import RECORD_KEYS, poisson_binomial_test

    r = poisson_binomial_test(2, [0.5, 2 / 3, 0.25, 0.0], "random pick")
    assert tuple(r) == RECORD_KEYS and r["test"] == "poisson_binomial"
    assert (r["successes"], r["trials"]) == (2, 4)
    assert r["p_value"] == pytest.approx(11 / 24, rel=1e-14)
    assert r["chance_rate"] == pytest.approx(17 / 48) and r["chance_value"] == pytest.approx(100 * 17 / 48)
    assert r["chance_rate_range"] == [0.0, 0.5 + 1 / 6] and r["expected_successes"] == pytest.approx(17 / 12)


def test_sign_test_record_is_the_paired_sign_test():
    from cavl.metrics.significance import RECORD_KEYS, sign_test

    model, baseline = _scores(8, 2, 7)
    r = sign_test(model, baseline, "prior")
    assert tuple(r) == (*RECORD_KEYS, "ties")
    assert (r["successes"], r["trials"], r["ties"], r["test"]) == (8, 10, 7, "sign_test")
    assert r["p_value"] == 56 / 1024 and r["log10_p_value"] == pytest.approx(math.log10(56 / 1024), rel=1e-10)
    assert r["chance_rate"] == 0.5 and r["expected_successes"] == 5.0
    assert r["chance_value"] == pytest.approx(100 * np.mean(baseline))


def test_sign_test_stays_exact_for_many_questions():
    stats = pytest.importorskip("scipy.stats")
    wins, losses = 30600, 29400
    assert sign_test_p_value(wins, losses) == pytest.approx(
        stats.binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue, rel=1e-9)
