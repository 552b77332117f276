"""VQA v2 metric: every normalisation rule of the official evaluation, the 10-choose-9
averaging, the per-answer-type aggregates, soft targets and the answer vocabulary."""

import itertools

import numpy as np
import pytest

from cavl.metrics.vqa import (build_answer_vocab, encode_soft_targets, leave_one_out_score,
                              normalize_answer, process_punctuation, soft_targets,
                              vqa_accuracy, vqa_question_score)


def humans(answer, count=10, filler="zzz"):
    """`count` humans said `answer`, the rest said `filler`."""
    return [answer] * count + [filler] * (10 - count)


# --- normalisation of the predicted answer, one rule per case --------------------------------

@pytest.mark.parametrize("prediction, human", [
    ("Two", "2"),                 # number word → digit (and lower-case)
    ("none", "0"),                # "none" is a number word too
    ("ten", "10"),
    ("the dog", "dog"),           # article removed
    ("An apple", "apple"),
    ("a", ""),                    # only an article → empty answer
    ("dont", "don't"),            # contraction restored
    ("isnt", "isn't"),
    ("yes.", "yes"),              # trailing period stripped
    ("3.5", "3.5"),               # ... but not a decimal point
    ("2.", "2"),                  # period after a digit, not before one: stripped
    ("1,000", "1000"),            # digit-comma-digit: commas deleted, not spaced
    ("red,blue", "red blue"),     # other commas become spaces
    ("red, blue", "red blue"),    # mark next to a space: deleted
    ("yes!", "yes"),              # '!' → space, then whitespace collapsed
    ("(yes)", "yes"),             # brackets
    ("x-ray", "x ray"),           # hyphen → space
    ("YES", "yes"),               # lower-case
    ("  hot \t dog\n", "hot dog"),  # tabs/newlines/extra spaces
    ("it's", "it's"),             # apostrophe is not punctuation
])
def test_each_prediction_normalisation_rule(prediction, human):
    assert normalize_answer(prediction) == human
    assert vqa_question_score(prediction, [human] * 10) == pytest.approx(1.0)


@pytest.mark.parametrize("prediction, human", [
    ("3.5", "35"),        # the decimal point survives, so these differ
    ("dog", "dogs"),      # no stemming
    ("two dogs", "2 dog"),
    ("eleven", "11"),     # only zero..ten are mapped
])
def test_non_matches_stay_non_matches(prediction, human):
    assert vqa_question_score(prediction, [human] * 10) == 0.0


def test_punctuation_step_details():
    assert process_punctuation("1,000!") == "1000"      # digit comma digit: every mark deleted
    assert process_punctuation("red,blue") == "red blue"
    assert process_punctuation("a/b") == "a b"
    assert process_punctuation("a / b") == "a  b"       # deleted, spaces left for the split
    assert process_punctuation("Yes.") == "Yes"         # case kept at this step
    assert process_punctuation("." * 40) == "." * 8     # the official count=32 quirk


# --- human answers are processed the official (asymmetric) way -------------------------------

def test_human_answers_get_punctuation_processing_when_they_differ():
    # 4 humans wrote "yes." and 6 "no": not unanimous, so "yes." → "yes" and matches.
    assert vqa_question_score("yes", ["yes."] * 4 + ["no"] * 6) == pytest.approx(1.0)


def test_unanimous_human_answers_are_left_raw():
    # all ten identical: the official code does not touch them, so "yes." never matches.
    assert vqa_question_score("yes", ["yes."] * 10) == 0.0


def test_human_answers_are_not_lowercased_or_digit_mapped():
    assert vqa_question_score("two", ["Two"] * 5 + ["3"] * 5) == 0.0
    assert vqa_question_score("two", ["2"] * 5 + ["3"] * 5) == pytest.approx(1.0)


# --- 10-choose-9 averaging --------------------------------------------------------------------

@pytest.mark.parametrize("count, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                                             (7, 1.0), (10, 1.0)])
def test_matching_humans_give_official_scores(count, expected):
    assert vqa_question_score("cat", humans("cat", count)) == pytest.approx(expected)


@pytest.mark.parametrize("num_answers", [3, 9, 10, 12])
def test_leave_one_out_equals_explicit_subset_average(num_answers):
    for count in range(num_answers + 1):
        said = [True] * count + [False] * (num_answers - count)
        subsets = itertools.combinations(range(num_answers), num_answers - 1)
        explicit = np.mean([min(sum(said[i] for i in s) / 3, 1) for s in subsets])
        assert leave_one_out_score(count, num_answers) == pytest.approx(explicit)


def test_accuracy_aggregates_per_answer_type():
    predictions = ["yes", "no", "2", "cat", "dog"]
    answers = [humans("yes", 10), humans("no", 1), humans("2", 3), humans("cat", 2),
               humans("cat", 10)]
    types = ["yes/no", "yes/no", "number", "other", "other"]
    m = vqa_accuracy(predictions, answers, types)
    assert m["accuracy"] == pytest.approx(100 * (1.0 + 0.3 + 0.9 + 0.6 + 0.0) / 5)
    assert m["yes/no"] == pytest.approx(100 * (1.0 + 0.3) / 2)
    assert m["number"] == pytest.approx(90.0)
    assert m["other"] == pytest.approx(30.0)


def test_missing_answer_type_is_none_and_lengths_are_checked():
    m = vqa_accuracy(["yes"], [humans("yes")], ["yes/no"])
    assert m == {"accuracy": 100.0, "yes/no": 100.0, "number": None, "other": None}
    with pytest.raises(ValueError):
        vqa_accuracy(["yes", "no"], [humans("yes")], ["yes/no"])


# --- training targets and vocabulary ----------------------------------------------------------

def test_soft_targets_pool_normalised_answers_and_use_official_scores():
    targets = soft_targets(["Two", "two", "2", "the dog", "dog", "dog", "dog", "cat", "", "a"])
    assert targets == pytest.approx({"2": 0.9, "dog": 1.0, "cat": 0.3})


def test_answer_vocab_counts_normalised_answers_and_breaks_ties_alphabetically():
    train = ["yes", "Yes", "yes.", "no", "no", "2", "two", "b", "a dog", "dog", "c", "a"]
    assert build_answer_vocab(train, top_k=10) == ["yes", "2", "dog", "no", "b", "c"]
    assert build_answer_vocab(train, top_k=2) == ["yes", "2"]
    assert build_answer_vocab(train, top_k=10, min_count=3) == ["yes"]


def test_encode_soft_targets_drops_out_of_vocab_answers():
    vocab = ["yes", "no", "2"]
    y = encode_soft_targets([["yes"] * 3 + ["no"] * 7, ["maybe"] * 10, ["two"] * 2 + ["x"] * 8],
                            vocab)
    assert y.dtype == np.float32 and y.shape == (3, 3)
    np.testing.assert_allclose(y, [[0.9, 1.0, 0.0], [0, 0, 0], [0, 0, 0.6]], rtol=1e-6)
