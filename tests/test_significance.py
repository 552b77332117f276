"""The exact one-sided sign test against hand-computed binomial tails."""

import math

import numpy as np
import pytest

from cavl.metrics.significance import paired_sign_test, sign_test_p_value


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
    from cavl.metrics.significance import binomial_p_value

    assert binomial_p_value(0, 5, 0.3) == pytest.approx(1.0)
    assert binomial_p_value(3, 3, 0.5) == pytest.approx(1 / 8)
    # P(X >= 2), X ~ B(4, 1/4): 1 - (3/4)^4 - 4 (1/4)(3/4)^3 = 1 - 81/256 - 108/256 = 67/256
    assert binomial_p_value(2, 4, 0.25) == pytest.approx(67 / 256)
    with pytest.raises(ValueError):
        binomial_p_value(5, 4, 0.5)
