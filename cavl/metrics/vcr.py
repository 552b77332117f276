"""VCR accuracy: Q→A, QA→R and the joint Q→AR, in percent.

The protocol of Zellers et al. (2019): each question has four answer choices and four rationale
choices. ``q2a`` is the share of questions whose predicted answer is the gold one; ``qa2r`` the
share whose predicted rationale is the gold one, the model being given the *gold* answer; and
``q2ar`` the share where both predictions are right (so ``q2ar`` ≤ min(q2a, qa2r)).
"""

import numpy as np


def _labels(name, values):
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer choice indices, got {arr.dtype}")
    return arr.astype(np.int64)


def vcr_accuracy(answer_pred, answer_gold, rationale_pred, rationale_gold) -> dict:
    """``{"q2a", "qa2r", "q2ar"}`` in percent from four equal-length integer label arrays.

    Gold labels must be known (≥ 0): the unlabelled test split (label -1) cannot be scored.
    """
    ap, ag = _labels("answer_pred", answer_pred), _labels("answer_gold", answer_gold)
    rp, rg = _labels("rationale_pred", rationale_pred), _labels("rationale_gold", rationale_gold)
    n = len(ag)
    if not (len(ap) == len(rp) == len(rg) == n):
        raise ValueError(f"label arrays differ in length: {len(ap)}, {n}, {len(rp)}, {len(rg)}")
    if n == 0:
        raise ValueError("no questions to evaluate")
    if (ag < 0).any() or (rg < 0).any():
        raise ValueError("gold labels must be known (>= 0); the VCR test split is unlabelled")
    answer_right = ap == ag
    rationale_right = rp == rg
    return {"q2a": 100.0 * float(answer_right.mean()),
            "qa2r": 100.0 * float(rationale_right.mean()),
            "q2ar": 100.0 * float((answer_right & rationale_right).mean())}
