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
    # the humans differ (5 × human, 5 × "zzz"), so both sides are normalised: 5 matches → 1.0.
    # (Against ten identical answers nothing is normalised; see the tests further down.)
    assert vqa_question_score(prediction, humans(human, 5)) == pytest.approx(1.0)


@pytest.mark.parametrize("prediction, human", [
    ("3.5", "35"),        # the decimal point survives, so these differ
    ("dog", "dogs"),      # no stemming
    ("two dogs", "2 dog"),
    ("eleven", "11"),     # only zero..ten are mapped
])
def test_non_matches_stay_non_matches(prediction, human):
    assert vqa_question_score(prediction, humans(human, 5)) == 0.0


def test_punctuation_step_details():
    assert process_punctuation("1,000!") == "1000"      # digit comma digit: every mark deleted
    assert process_punctuation("red,blue") == "red blue"
    assert process_punctuation("a/b") == "a b"
    assert process_punctuation("a / b") == "a  b"       # deleted, spaces left for the split
    assert process_punctuation("Yes.") == "Yes"         # case kept at this step
    assert process_punctuation("." * 40) == "." * 8     # the official count=32 quirk


# --- the official rule: normalise both sides only when the ten human answers differ ----------
# Expected values are worked out by hand from GT-Vision-Lab/VQA vqaEval.py (commit a013f00):
# clean whitespace of all answers; if the cleaned human answers are not all identical, run
# processPunctuation + processDigitArticle on the prediction AND on every human answer; else
# compare the cleaned strings as they are. With c of 10 humans matching, the leave-one-out mean
# is (c·min((c-1)/3, 1) + (10-c)·min(c/3, 1)) / 10.

def test_human_answers_get_normalised_when_they_differ():
    # 4 × "yes." + 6 × "no": differ → "yes." → "yes"; c=4: (4·1 + 6·1)/10 = 1.0
    assert vqa_question_score("yes", ["yes."] * 4 + ["no"] * 6) == 1.0


def test_unanimous_human_answers_are_left_raw():
    # ten identical "yes.": nothing is normalised, "yes" ≠ "yes." → c=0 → 0.0
    assert vqa_question_score("yes", ["yes."] * 10) == 0.0


def test_human_answers_are_lowercased_and_digit_mapped_when_they_differ():
    # differ → "Two" → "2", prediction "two" → "2"; c=5 → 1.0
    assert vqa_question_score("two", ["Two"] * 5 + ["3"] * 5) == 1.0
    assert vqa_question_score("two", ["2"] * 5 + ["3"] * 5) == 1.0
    # 3 × "two" + 1 × "2" + 6 × "3": "two" → "2", so c=4 for the prediction "2" → 1.0
    assert vqa_question_score("2", ["two"] * 3 + ["2"] + ["3"] * 6) == 1.0


def test_hyphen_against_ten_identical_answers():
    # the known defect: ten "t-shirt" are unanimous, so neither side is normalised;
    # "t-shirt" == "t-shirt" for all 10 → every 9-subset has 9 ≥ 3 matches → 1.0 (100 %)
    assert vqa_question_score("t-shirt", ["t-shirt"] * 10) == 1.0
    m = vqa_accuracy(["t-shirt"], [["t-shirt"] * 10], ["other"])
    assert m["accuracy"] == 100.0 and m["other"] == 100.0
    # the normalised spelling does not match the raw unanimous answer: c=0 → 0.0
    assert vqa_question_score("t shirt", ["t-shirt"] * 10) == 0.0
    # nor does a different case: raw comparison is case-sensitive → 0.0
    assert vqa_question_score("T-shirt", ["t-shirt"] * 10) == 0.0


def test_hyphen_against_mixed_answers():
    # 3 × "t-shirt" + 7 × "shirt": differ → humans "t shirt" ×3, "shirt" ×7; the prediction
    # "t-shirt" → "t shirt" (hyphen not next to a space → space); c=3:
    # (3·min(2/3, 1) + 7·min(3/3, 1)) / 10 = (2 + 7) / 10 = 0.9
    mixed = ["t-shirt"] * 3 + ["shirt"] * 7
    assert vqa_question_score("t-shirt", mixed) == pytest.approx(0.9)
    assert vqa_question_score("t shirt", mixed) == pytest.approx(0.9)   # already normal form
    assert vqa_question_score("T-Shirt", mixed) == pytest.approx(0.9)   # lower-cased too
    # "shirt": c=7 → 1.0
    assert vqa_question_score("shirt", mixed) == 1.0


def test_apostrophes_and_contractions():
    # differ → prediction "dont" → "don't"; humans "don't" stay "don't"; c=4 → 1.0
    assert vqa_question_score("dont", ["don't"] * 4 + ["no"] * 6) == 1.0
    # humans are contraction-mapped too: 2 × "dont" → "don't"; c=2:
    # (2·min(1/3, 1) + 8·min(2/3, 1)) / 10 = (2/3 + 16/3) / 10 = 0.6
    assert vqa_question_score("don't", ["dont"] * 2 + ["yes"] * 8) == pytest.approx(0.6)
    # "isnt" → "isn't"; c=1: (1·0 + 9·(1/3)) / 10 = 0.3
    assert vqa_question_score("isnt", ["isn't"] + ["no"] * 9) == pytest.approx(0.3)
    # unanimous: raw "dont" ≠ "don't" → 0.0; identical raw strings → 1.0
    assert vqa_question_score("dont", ["don't"] * 10) == 0.0
    assert vqa_question_score("isn't", ["isn't"] * 10) == 1.0


def test_number_words():
    # unanimous "2": raw "two" ≠ "2" → 0.0
    assert vqa_question_score("two", ["2"] * 10) == 0.0
    # unanimous "Two": identical raw string → 1.0
    assert vqa_question_score("Two", ["Two"] * 10) == 1.0
    # differ: "two" → "2"; 1 × "2" + 9 × "3" → c=1 → 0.3
    assert vqa_question_score("two", ["2"] + ["3"] * 9) == pytest.approx(0.3)


def test_articles():
    # unanimous "dog": raw "a dog" ≠ "dog" → 0.0; ten "a dog" and the prediction "a dog" → 1.0
    assert vqa_question_score("a dog", ["dog"] * 10) == 0.0
    assert vqa_question_score("a dog", ["a dog"] * 10) == 1.0
    # differ: "a dog" → "dog"; 2 × "dog" + 8 × "cat" → c=2 → 0.6
    assert vqa_question_score("a dog", ["dog"] * 2 + ["cat"] * 8) == pytest.approx(0.6)
    # humans lose their articles too: 3 × "the dog" → "dog"; c=3 → 0.9
    assert vqa_question_score("dog", ["the dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)


def test_prediction_equal_to_all_ten_answers_scores_100():
    # unanimous and identical: 9 matches in every 9-subset → 1.0, however unusual the string
    for answer in ["T-Shirt!", "The Two Dogs.", "don't", "1,000", "yes."]:
        assert vqa_question_score(answer, [answer] * 10) == 1.0
    # (the old code normalised only the prediction: "The Two Dogs." → "2 dogs" scored 0)


def test_whitespace_is_cleaned_before_the_unanimity_check():
    # 9 × "yes" + 1 × " yes\n": cleaned, all ten are "yes" → unanimous, no further processing;
    # "yes." ≠ "yes" → c=0 → 0.0 (checking unanimity on the raw strings would have normalised
    # "yes." → "yes" and given 1.0)
    assert vqa_question_score("yes.", ["yes"] * 9 + [" yes\n"]) == 0.0
    # the prediction is cleaned too: "\tt-shirt " → "t-shirt" == "t-shirt" → 1.0
    assert vqa_question_score("\tt-shirt ", ["t-shirt"] * 10) == 1.0


def test_partial_agreement_with_normalisation():
    # differ; prediction "red, white": ',' next to a space → deleted → "red white"; c=2 of 10:
    # (2·min(1/3, 1) + 8·min(2/3, 1)) / 10 = (2/3 + 16/3) / 10 = 6/10 = 0.6
    assert vqa_question_score("red, white", ["red white"] * 2 + ["red"] * 8) == pytest.approx(0.6)
    # c=1: (0 + 9/3) / 10 = 0.3; c=3: (3·2/3 + 7·1) / 10 = 0.9; as percent via vqa_accuracy
    m = vqa_accuracy(["Red", "RED!", "red white"],
                     [["red"] + ["blue"] * 9, ["red"] * 3 + ["blue"] * 7,
                      ["red white"] * 2 + ["red"] * 8],
                     ["other"] * 3)
    assert m["other"] == pytest.approx(100 * (0.3 + 0.9 + 0.6) / 3)   # = 60.0


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


def test_predictions_use_the_annotators_spelling_of_a_class():
    """The class "t shirt" is predicted as "t-shirt", its most frequent train spelling, which
    scores 100 against ten identical "t-shirt" (the class name itself would score 0)."""
    from cavl.metrics.vqa import surface_forms

    train = ["t-shirt", "t-shirt", "T shirt", "yes", "Yes", "yes", "Yes", "2", "two"]
    vocab = build_answer_vocab(train, top_k=3)
    assert vocab == ["yes", "t shirt", "2"]
    assert surface_forms(train, vocab) == ["yes", "t-shirt", "2"]  # ties: the class name
    assert vqa_question_score("t-shirt", ["t-shirt"] * 10) == 1.0
