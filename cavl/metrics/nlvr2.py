"""NLVR2 accuracy and consistency, in percent.

Definitions of the official ``nlvr2/eval/metrics.py`` (lil-lab/nlvr):

- ``accuracy``: share of examples whose predicted label equals the gold label.
- ``consistency``: share of *unique sentences* all of whose examples are right. Identifiers are
  ``{split}-{set_id}-{pair_id}-{sentence_id}``; a sentence is paired with several image pairs
  of its set, so examples share a sentence when their identifiers agree once the **pair_id**
  is blanked (``dev-850-0-1`` and ``dev-850-3-1`` do, ``dev-850-0-0`` and ``dev-850-0-1`` not).
"""

import numpy as np


def sentence_key(identifier: str) -> str:
    """The group key of an identifier: the identifier with its pair_id field blanked
    (``"dev-850-3-1"`` → ``"dev-850--1"``), as the official script builds it."""
    parts = identifier.split("-")
    if len(parts) < 4:
        raise ValueError(f"NLVR2 identifier {identifier!r} is not split-set_id-pair_id-sentence_id")
    parts[2] = ""
    return "-".join(parts)


def _bools(name, values):
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype != bool:
        raise ValueError(f"{name} must be boolean (True/False labels), got {arr.dtype}")
    return arr


def nlvr2_accuracy(identifiers, predictions, labels) -> dict:
    """``{"accuracy", "consistency"}`` in percent of boolean `predictions` against `labels`."""
    pred, gold = _bools("predictions", predictions), _bools("labels", labels)
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predictions for {len(gold)} labels")
    if len(gold) == 0:
        raise ValueError("no examples to evaluate")
    correct = pred == gold
    keys = [sentence_key(i) for i in identifiers]
    if len(keys) != len(correct):
        raise ValueError(f"{len(keys)} identifiers for {len(correct)} results")
    consistent: dict[str, bool] = {}  # per unique sentence: all its examples right
    for k, ok in zip(keys, correct):
        consistent[k] = consistent.get(k, True) and bool(ok)
    return {"accuracy": 100.0 * float(correct.mean()),
            "consistency": 100.0 * float(np.mean(list(consistent.values())))}
