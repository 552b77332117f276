"""VQA v2 accuracy, answer normalisation, soft-score targets and the answer vocabulary.

The metric reimplements the official evaluation (``VQAEval.evaluate`` in
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` of GT-Vision-Lab/VQA, commit a013f00). Per
question:

1. Whitespace clean-up of the prediction and every human answer (:func:`clean_whitespace`).
2. Only if the ten cleaned human answers are **not all the same string**, the prediction and
   every human answer are fully normalised (:func:`normalize_answer`). Unanimous answers (text
   read off the image, say the official authors) are compared as they stand: "t-shirt" scores
   100 against ten "t-shirt" but "T-shirt" or "the t-shirt" score 0 there.
3. Exact string match, averaged over the 10 leave-one-annotator-out subsets of 9 humans of
   ``min(#matches / 3, 1)``: 0, 0.3, 0.6, 0.9 for c = 0..3 of 10 humans agreeing, 1.0 for c ≥ 4.

``accuracy`` over all questions and one figure per answer type (``yes/no``, ``number``,
``other``) are means of the per-question accuracies, in percent (not rounded).

Training targets and the answer vocabulary (:func:`soft_targets`, :func:`build_answer_vocab`) are
not part of the official script: they always use the full :func:`normalize_answer`.
"""

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

ANSWER_TYPES = ("yes/no", "number", "other")

# Punctuation characters of the official evaluation. Each is deleted when the answer has it next
# to a space or contains a digit-comma-digit group (``1,000``), and replaced by a space otherwise.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
               ">", "<", "@", "`", ",", "?", "!")

# Digit-comma-digit anywhere in the answer switches every punctuation mark to deletion.
_NUMBER_COMMA = re.compile(r"(\d)(,)(\d)")

# A period not followed by a digit is deleted ("yes." → "yes", "3.5" kept). The official pattern
# ``(?!<=\d)(\.)(?!\d)`` reads like "not preceded by a digit" but its first group is a negative
# *lookahead* for the text "<=digit", which can never start at a period, so only the second
# condition acts; we write that condition directly.
_PERIOD = re.compile(r"\.(?!\d)")
# The official call passes ``re.UNICODE`` (= 32) positionally as the ``count`` argument of
# ``sub``: at most the first 32 such periods are removed. Kept for exactness.
_PERIOD_MAX_SUBSTITUTIONS = 32

# Number words written as digits (the official ``manualMap``); "none" counts as 0.
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}

ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table, "written spelling" pairs, kept verbatim: words are matched
# after lower-casing, so the capitalised entries never match; "somebody'd → somebodyd" is as
# the official table has it.
_CONTRACTION_TABLE = """
aint ain't                 arent aren't               cant can't
couldve could've           couldnt couldn't           couldn'tve couldn't've
couldnt've couldn't've     didnt didn't               doesnt doesn't
dont don't                 hadnt hadn't               hadnt've hadn't've
hadn'tve hadn't've         hasnt hasn't               havent haven't
hed he'd                   hed've he'd've             he'dve he'd've
hes he's                   howd how'd                 howll how'll
hows how's                 Id've I'd've               I'dve I'd've
Im I'm                     Ive I've                   isnt isn't
itd it'd                   itd've it'd've             it'dve it'd've
itll it'll                 let's let's                maam ma'am
mightnt mightn't           mightnt've mightn't've     mightn'tve mightn't've
mightve might've           mustnt mustn't             mustve must've
neednt needn't             notve not've               oclock o'clock
oughtnt oughtn't           ow's'at 'ow's'at           'ows'at 'ow's'at
'ow'sat 'ow's'at           shant shan't               shed've she'd've
she'dve she'd've           she's she's                shouldve should've
shouldnt shouldn't         shouldnt've shouldn't've   shouldn'tve shouldn't've
somebody'd somebodyd       somebodyd've somebody'd've somebody'dve somebody'd've
somebodyll somebody'll     somebodys somebody's       someoned someone'd
someoned've someone'd've   someone'dve someone'd've   someonell someone'll
someones someone's         somethingd something'd     somethingd've something'd've
something'dve something'd've somethingll something'll thats that's
thered there'd             thered've there'd've       there'dve there'd've
therere there're           theres there's             theyd they'd
theyd've they'd've         they'dve they'd've         theyll they'll
theyre they're             theyve they've             twas 'twas
wasnt wasn't               wed've we'd've             we'dve we'd've
weve we've                 werent weren't             whatll what'll
whatre what're             whats what's               whatve what've
whens when's               whered where'd             wheres where's
whereve where've           whod who'd                 whod've who'd've
who'dve who'd've           wholl who'll               whos who's
whove who've               whyll why'll               whyre why're
whys why's                 wont won't                 wouldve would've
wouldnt wouldn't           wouldnt've wouldn't've     wouldn'tve wouldn't've
yall y'all                 yall'll y'all'll           y'allll y'all'll
yall'd've y'all'd've       y'alld've y'all'd've       y'all'dve y'all'd've
youd you'd                 youd've you'd've           you'dve you'd've
youll you'll               youre you're               youve you've
"""


_WORDS = _CONTRACTION_TABLE.split()
CONTRACTIONS = dict(zip(_WORDS[0::2], _WORDS[1::2]))


# ----------------------------------------------------------------------------- normalisation

def process_punctuation(text: str) -> str:
    """The official punctuation step.

    For each mark of :data:`PUNCTUATION`: delete it if the *input* has the mark followed or
    preceded by a space, or contains a digit-comma-digit group; otherwise replace it by a space
    ("red,blue" → "red blue", "1,000" → "1000", "yes!" → "yes "). Then delete periods not
    followed by a digit ("yes." → "yes", "2.5" kept). Case and spacing are left alone.
    """
    delete_all = _NUMBER_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_MAX_SUBSTITUTIONS)


def process_digit_article(text: str) -> str:
    """The official word step: lower-case, split on whitespace, number words → digits
    ("Two" → "2"), drop articles ("the dog" → "dog"), restore contractions ("dont" → "don't"),
    and join with single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def clean_whitespace(text: str) -> str:
    """The official first step, done to every answer: newlines and tabs → spaces, then strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """The full official normalisation: :func:`clean_whitespace`, :func:`process_punctuation`,
    :func:`process_digit_article` (the metric applies it only where human answers differ)."""
    return process_digit_article(process_punctuation(clean_whitespace(text)))


def official_match_forms(prediction: str, human_answers: Sequence[str]) -> tuple[str, list[str]]:
    """The prediction and the human answers in the form the official evaluation compares them
    (steps 1 and 2 of the module doc)."""
    prediction = clean_whitespace(prediction)
    humans = [clean_whitespace(a) for a in human_answers]
    if len(set(humans)) > 1:
        return normalize_answer(prediction), [normalize_answer(a) for a in humans]
    return prediction, humans


# ----------------------------------------------------------------------------- scoring

def leave_one_out_score(count: int, num_answers: int = 10) -> float:
    """Accuracy of an answer that ``count`` of ``num_answers`` humans gave: the mean over the
    leave-one-annotator-out subsets of ``min(matches in the subset / 3, 1)``."""
    if num_answers <= 0:
        raise ValueError("a question needs at least one human answer")
    if not 0 <= count <= num_answers:
        raise ValueError(f"count {count} outside 0..{num_answers}")
    # dropping one of the `count` agreeing humans leaves count-1 matches; dropping any other
    # human leaves all `count`.
    left_out_agreeing = count * min((count - 1) / 3.0, 1.0) if count else 0.0
    left_out_other = (num_answers - count) * min(count / 3.0, 1.0)
    return (left_out_agreeing + left_out_other) / num_answers


def vqa_question_score(prediction: str, human_answers: Sequence[str]) -> float:
    """Official accuracy (0–1) of one predicted answer against the question's human answers
    (each human answer counts as a separate annotator, as the ten VQA answers do)."""
    pred, humans = official_match_forms(prediction, human_answers)
    return leave_one_out_score(sum(h == pred for h in humans), len(humans))


def vqa_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> np.ndarray:
    """Per-question official accuracies (0–1), float64 array of len(predictions)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    return np.array([vqa_question_score(p, a) for p, a in zip(predictions, answers)],
                    dtype=np.float64)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]],
                 answer_types: Sequence[str]) -> dict:
    """VQA v2 accuracy in percent: ``accuracy`` over all questions, and ``yes/no``, ``number``,
    ``other`` over the questions of that answer type (``None`` where the split has none).

    `answers`: the (10) human answers per question; `answer_types`: the annotation's
    ``answer_type`` per question (other types count in ``accuracy`` only).
    """
    return aggregate_scores(vqa_scores(predictions, answers), answer_types)


def aggregate_scores(scores: np.ndarray, answer_types: Sequence[str]) -> dict:
    """Per-question accuracies (0–1) → the percent keys of :func:`vqa_accuracy`."""
    if len(answer_types) != len(scores):
        raise ValueError(f"{len(answer_types)} answer types for {len(scores)} questions")
    if len(scores) == 0:
        raise ValueError("no questions to evaluate")
    types = np.asarray(answer_types, dtype=object)
    out = {"accuracy": 100.0 * float(scores.mean())}
    for t in ANSWER_TYPES:
        mask = types == t
        out[t] = 100.0 * float(scores[mask].mean()) if mask.any() else None
    return out


# ----------------------------------------------------------------------------- training targets

def soft_targets(human_answers: Sequence[str]) -> dict[str, float]:
    """Soft-score target per distinct answer of one question, for BCE training.

    Human answers are fully normalised (as the BUTD / BAN / LXMERT preprocessing: "Two" and "2"
    pool), each distinct answer scoring :func:`leave_one_out_score` of its count. Empty answers
    are dropped.
    """
    normalised = [normalize_answer(a) for a in human_answers]
    counts = Counter(a for a in normalised if a)
    return {a: leave_one_out_score(c, len(normalised)) for a, c in counts.items()}


def build_answer_vocab(answers: Iterable[str], top_k: int, min_count: int = 1) -> list[str]:
    """The ``top_k`` most frequent normalised answers of a flat iterable of answers (e.g. the
    train split's ``multiple_choice_answer``), most frequent first (ties: alphabetical); empty
    ones and those seen fewer than `min_count` times are left out."""
    if top_k <= 0:
        raise ValueError("top_k must be positive")
    counts = Counter(a for a in (normalize_answer(x) for x in answers) if a)
    ranked = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return ranked[:top_k]


def surface_forms(answers: Iterable[str], vocab: Sequence[str]) -> list[str]:
    """For each vocabulary answer, its most frequent written form among `answers` (cleaned of
    whitespace only; ties: the class name itself, then alphabetical): where all ten humans
    agree the metric compares unnormalised strings, so "t-shirt", not "t shirt", matches."""
    counts = {a: Counter() for a in vocab}
    for written in answers:
        key = normalize_answer(written)
        if key in counts:
            counts[key][clean_whitespace(written)] += 1
    return [min(c, key=lambda w: (-c[w], w != a, w)) if c else a for a, c in counts.items()]


def encode_soft_targets(answers: Sequence[Sequence[str]], vocab: Sequence[str]) -> np.ndarray:
    """Dense float32 target matrix [num_questions, len(vocab)] of :func:`soft_targets`;
    answers outside the vocabulary are dropped (their question may get an all-zero row)."""
    index = {a: i for i, a in enumerate(vocab)}
    if len(index) != len(vocab):
        raise ValueError("answer vocabulary has duplicates")
    out = np.zeros((len(answers), len(vocab)), dtype=np.float32)
    for row, human in enumerate(answers):
        for a, s in soft_targets(human).items():
            col = index.get(a)
            if col is not None:
                out[row, col] = s
    return out
