"""The demo run's pretraining log: the objectives learn, and E'·F' retrieval on held-out pairs.

Reads results/pretrain/log.jsonl of the one full demo run (`demo_run` fixture, config.yaml).
Train records carry step, epoch, lr, loss, mlm_loss, itm_loss, pwcl_loss, samples_per_s (each a
mean over the `log_every` steps before `step`); the final val record carries val_loss,
val_mlm_loss, val_itm_loss, val_pwcl_loss, val_t2i_r@1, val_i2t_r@1 and val_chance_r@1
(100 / retrieval_pairs). What the demo needs to learn within its budget: docs/pretraining.md and
docs/demo_settings.md.
"""

import json

import pytest

LAST = 3  # train records averaged for "the end of training"


@pytest.fixture(scope="module")
def log(demo_run):
    path = demo_run / "results" / "pretrain" / "log.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    train = [r for r in records if "lr" in r]
    val = [r for r in records if "val_t2i_r@1" in r]
    assert len(train) >= 2 * LAST and val, f"{path}: {len(train)} train and {len(val)} val records"
    return train, val[-1]


def fall(train, key):
    """(first logged value, mean of the last LAST logged values)."""
    return train[0][key], sum(r[key] for r in train[-LAST:]) / LAST


# PwCL (`separate`) starts at log(B − 1) = 2.71 for B = 16 (all pairs alike) and cannot go below
# ≈ 0.6 at τ = 0.5: 0.75 × first is a fall of a third of that range (measured 0.66–0.69 × first over
# three seeds; 0.71 × first in the demo's 102 steps). ITM starts at ln 2 (0.693) and loses 10% only
# once the model matches captions to regions, after ~150 steps (docs/pretraining.md): the demo's
# 102 steps end at 0.692, and the downstream tasks beat chance without it (docs/demo_settings.md).
# strict: once the demo's pretraining teaches ITM, this marker must go.
ITM_OPEN = pytest.mark.xfail(strict=True, reason="102 demo pretraining steps: ITM 0.695 -> 0.692")


@pytest.mark.parametrize("key,ratio", [("mlm_loss", 0.5), ("pwcl_loss", 0.75),
                                       pytest.param("itm_loss", 0.9, marks=ITM_OPEN)])
def test_losses_fall_clearly(log, key, ratio):
    first, last = fall(log[0], key)
    assert last < ratio * first, f"{key}: first {first:.3f}, last {last:.3f} (want < {ratio} × first)"


def test_held_out_retrieval_beats_chance_both_ways(log):
    val = log[1]
    chance = val["val_chance_r@1"]
    pairs = 24  # every demo val image is a retrieval pair
    assert chance == pytest.approx(100 / pairs)
    # Compare whole queries right (R@1 is logged in float32: 1 of 24 reads 4.1666668 > 100/24).
    right = {d: round(val[f"val_{d}_r@1"] * pairs / 100) for d in ("t2i", "i2t")}
    assert min(right.values()) > 1, val
