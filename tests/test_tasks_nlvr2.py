"""NLVR2 task entry: (statement, left) + (statement, right) → one classifier on both pooled states."""

import numpy as np
import pandas as pd
import pytest
import torch

from cavl.adapters import TaskHead
from cavl.metrics.chance import nlvr2_majority_chance
from cavl.tasks import REGISTRY, get_task
from cavl.tasks.base import DataSettings, Encoded, RegionSource, TaskBatches, TaskOutput
from cavl.testing import word_tokenizer, write_feature_shards

TASK = get_task("nlvr2")
EXAMPLES = pd.DataFrame([
    {"identifier": "dev-1-0-0", "sentence": "the left image has a red star .", "label": True,
     "left_image_id": "dev-1-0-img0", "right_image_id": "dev-1-0-img1"},
    {"identifier": "dev-1-1-0", "sentence": "the left image has a red star .", "label": False,
     "left_image_id": "dev-1-1-img0", "right_image_id": "dev-1-1-img1"},
    {"identifier": "dev-2-0-1", "sentence": "there is a blue circle .", "label": True,
     "left_image_id": "dev-1-0-img1", "right_image_id": "dev-1-1-img0"},
])


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    rng = np.random.default_rng(0)
    box = np.array([[0, 0, 10, 10]], np.float32)
    images = {f"dev-1-{p}-img{j}": (np.full((1 + p + j, 4), 10 * p + j, np.float32), np.repeat(box, 1 + p + j, 0),
                                    20, 20, 0) for p in range(2) for j in range(2)}
    images["unused"] = (rng.normal(size=(2, 4)).astype(np.float32), np.repeat(box, 2, 0), 20, 20, 0)
    return RegionSource(write_feature_shards(tmp_path_factory.mktemp("features"), "nlvr2", images, dim=4))


def test_registry_entry():
    assert REGISTRY["nlvr2"].image_datasets == ("nlvr2",)
    assert TASK.num_candidates == 2 and TASK.image_columns == ("left_image_id", "right_image_id")


def test_example_to_two_sequences_left_then_right(regions):
    tok = word_tokenizer()
    batches = TaskBatches(TASK, EXAMPLES, {}, regions, tok, DataSettings(max_text_len=16, max_regions=8), 2,
                          shuffle=False)
    b = batches[0]
    assert b["input_ids"].shape[0] == 4  # 2 items × (left, right)
    assert torch.equal(b["input_ids"][0], b["input_ids"][1])  # the same statement twice
    assert tok.convert_ids_to_tokens(b["input_ids"][0, :3].tolist()) == ["[CLS]", "the", "left"]
    # regions: the left image's features come first, then the right image's (value 10·pair + side)
    assert b["visual_feats"][:, 0, 0].tolist() == [0.0, 1.0, 10.0, 11.0]
    assert b["visual_mask"].sum(1).tolist() == [1, 2, 2, 3]
    assert b["nlvr2_labels"].tolist() == [1, 0]


def test_head_reads_the_concatenated_pair():
    head = TASK.make_head(8, {}, 1e-12, 0.0)
    assert isinstance(head, TaskHead)
    pooled = torch.randn(3, 2, 8)
    out = head(Encoded(pooled, torch.zeros(3, 2, 4, 8), 2, {}))
    assert out.shape == (3, 2)
    swapped = head(Encoded(pooled.flip(1), torch.zeros(3, 2, 4, 8), 2, {}))
    assert not torch.allclose(out, swapped)  # order matters: left and right are told apart


def test_examples_without_features_are_skipped(regions):
    extra = pd.concat([EXAMPLES, EXAMPLES.iloc[:1].assign(identifier="dev-9-0-0", right_image_id="missing")])
    assert len(TASK.with_features(extra, regions, "dev")) == 3


def test_decoding_metrics_and_chance():
    items = TASK.items(EXAMPLES)
    logits = torch.tensor([[0.0, 3.0], [0.0, 3.0], [0.0, 3.0]])  # always "true"
    preds = TASK.predictions(EXAMPLES, items, TASK.decode(TaskOutput(logits), {}), {})
    assert preds["prediction"].tolist() == [True, True, True]
    m = TASK.metrics(preds, EXAMPLES, {})
    assert m["accuracy"] == pytest.approx(200 / 3)
    assert m["consistency"] == pytest.approx(50.0)  # sentence dev-1 has one wrong pair; dev-2 right
    loss = TASK.loss(TaskOutput(logits), {"nlvr2_labels": torch.tensor([1, 0, 1])}, {})
    assert set(loss) == {"loss", "nlvr2_loss"}
    train = pd.DataFrame({"label": [False, False, True]})
    assert TASK.chance(train, EXAMPLES, {}) == nlvr2_majority_chance(
        EXAMPLES["identifier"].tolist(), EXAMPLES["label"].to_numpy(bool), np.array([False, False, True]))


def test_an_empty_split_table_is_an_error_naming_it(tmp_path):
    path = tmp_path / "dev.parquet"
    pd.DataFrame({"identifier": pd.Series([], dtype=str), "sentence": pd.Series([], dtype=str),
                  "label": pd.Series([], dtype=bool)}).to_parquet(path)
    with pytest.raises(ValueError, match=r"dev\.parquet: the split has no examples"):
        get_task("nlvr2").read(path)


def _statements(labels):
    return pd.DataFrame({"identifier": [f"dev-{i}-0-0" for i in range(len(labels))], "label": labels})


def test_report_against_a_uniform_random_label_on_a_balanced_split():
    ex = _statements([True, False] * 5)
    right = np.array([True] * 9 + [False])  # 9 of 10 right
    preds = pd.DataFrame({"identifier": ex["identifier"], "prediction": ex["label"].to_numpy(bool) == right})
    r = TASK.report(preds, ex, {})["significance"]["accuracy"]
    assert (r["successes"], r["trials"], r["test"], r["chance_rate"]) == (9, 10, "binomial", 0.5)
    assert r["p_value"] == pytest.approx(11 / 1024, rel=1e-12)  # (C(10,9) + C(10,10)) / 2^10
    assert "uniform" in r["chance_predictor"]


def test_report_against_the_majority_label_when_it_is_stronger():
    ex = _statements([True] * 8 + [False] * 2)
    preds = pd.DataFrame({"identifier": ex["identifier"], "prediction": [True] * 9 + [False]})  # 9 of 10 right
    r = TASK.report(preds, ex, {})["significance"]["accuracy"]
    assert (r["successes"], r["trials"]) == (9, 10)
    assert r["chance_rate"] == pytest.approx(0.8)
    assert "majority label of the evaluated split (True)" in r["chance_predictor"]
    # P(X >= 9), X ~ B(10, 0.8) = 10 · 0.8^9 · 0.2 + 0.8^10: always saying "True" gets 8 — no evidence
    assert r["p_value"] == pytest.approx(10 * 0.8 ** 9 * 0.2 + 0.8 ** 10, rel=1e-12)
    assert r["p_value"] > 0.3
    flipped = TASK.report(preds.assign(prediction=~preds["prediction"]), _statements([False] * 8 + [True] * 2), {})
    assert "(False)" in flipped["significance"]["accuracy"]["chance_predictor"]
