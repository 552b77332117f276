"""NLVR2 accuracy and consistency (official grouping: identifier with pair_id blanked)."""

import numpy as np
import pytest

from cavl.metrics.nlvr2 import nlvr2_accuracy, sentence_key


def test_sentence_key_blanks_the_pair_id():
    assert sentence_key("dev-850-3-1") == "dev-850--1"
    assert sentence_key("dev-850-0-1") == sentence_key("dev-850-3-1")
    assert sentence_key("dev-850-0-0") != sentence_key("dev-850-0-1")
    with pytest.raises(ValueError):
        sentence_key("dev-850")


def test_accuracy_and_consistency_on_a_hand_made_set():
    rows = [  # identifier, gold, predicted
        ("dev-1-0-0", True, True),
        ("dev-1-1-0", False, False),
        ("dev-1-2-0", True, False),    # spoils sentence dev-1--0
        ("dev-1-0-1", True, True),
        ("dev-1-3-1", True, True),     # sentence dev-1--1: all right
        ("dev-2-0-0", False, False),   # sentence dev-2--0: all right
    ]
    ids, gold, pred = zip(*rows)
    m = nlvr2_accuracy(list(ids), np.array(pred), np.array(gold))
    assert m["accuracy"] == pytest.approx(100 * 5 / 6)
    assert m["consistency"] == pytest.approx(100 * 2 / 3)


def test_two_sentences_of_one_pair_are_separate_groups():
    # same image pair (dev-7-0), two different sentences: one right, one wrong → 50%,
    # where grouping by dropping the last field would give 0%.
    m = nlvr2_accuracy(["dev-7-0-0", "dev-7-0-1"], np.array([True, True]),
                       np.array([True, False]))
    assert m == {"accuracy": 50.0, "consistency": 50.0}


def test_labels_must_be_boolean():
    with pytest.raises(ValueError):
        nlvr2_accuracy(["dev-1-0-0"], np.array(["True"]), np.array([True]))
