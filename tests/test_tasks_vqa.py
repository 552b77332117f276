"""VQA task entry: answer vocabulary, soft targets, example → inputs, loss, decoding, metric, chance."""

import numpy as np
import pandas as pd
import pytest
import torch

from cavl.metrics.chance import vqa_majority_chance
from cavl.tasks import REGISTRY, get_task
from cavl.tasks.base import DataSettings, RegionSource, TaskBatches, TaskOutput
from cavl.testing import word_tokenizer, write_feature_shards

TASK = get_task("vqa")


def table(rows):
    return pd.DataFrame([{"question_id": 10 + i, "image_id": img, "question": q, "answers": a,
                          "multiple_choice_answer": a[0], "answer_type": t, "question_type": "x"}
                         for i, (img, q, a, t) in enumerate(rows)])


EXAMPLES = table([
    ("1", "is there a red star ?", ["yes"] * 4 + ["no"] * 2 + ["2"] + ["Yes"] * 3, "yes/no"),
    ("2", "how many shapes ?", ["2"] * 6 + ["two"] * 4, "number"),
    ("1", "what color is the star ?", ["red"] * 10, "other"),
])


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    boxes = lambda n: np.tile(np.array([[10, 20, 110, 60]], np.float32), (n, 1))  # noqa: E731
    images = {"1": (rng.normal(size=(3, 6)).astype(np.float32), boxes(3), 200, 100, 0),
              "2": (rng.normal(size=(5, 6)).astype(np.float32), boxes(5), 200, 100, 0)}
    return RegionSource(write_feature_shards(root, "coco", images, dim=6))


def test_registry_entry():
    assert REGISTRY["vqa"].image_datasets == ("coco",)
    assert TASK.name == "vqa" and TASK.num_candidates == 1


def test_answer_vocabulary_is_the_top_k_normalised_train_answers():
    train = pd.DataFrame({"multiple_choice_answer": ["yes", "Yes", "no", "2", "two", "red", None]})
    assert TASK.prepare(train, {"answer_vocab_size": 2}) == {"answers": ["2", "yes"], "written": ["2", "yes"]}
    assert TASK.prepare(train, {"answer_vocab_size": 10})["answers"] == ["2", "yes", "no", "red"]


def test_soft_targets_come_from_the_ten_human_answers():
    state = {"answers": ["yes", "no", "2", "red"]}
    t = TASK.targets(EXAMPLES, TASK.items(EXAMPLES), state)["vqa_targets"]
    assert t.shape == (3, 4) and t.dtype == np.float32
    np.testing.assert_allclose(t[0], [1.0, 0.6, 0.3, 0.0])  # 7 × yes (case-normalised), 2 × no, 1 × 2
    np.testing.assert_allclose(t[1], [0.0, 0.0, 1.0, 0.0])  # "two" → "2"
    np.testing.assert_allclose(t[2], [0.0, 0.0, 0.0, 1.0])


def test_example_to_model_inputs(regions):
    state = {"answers": ["yes", "no", "2", "red"]}
    tok = word_tokenizer()
    batches = TaskBatches(TASK, EXAMPLES, state, regions, tok, DataSettings(max_text_len=8, max_regions=4), 2,
                          shuffle=False)
    assert len(batches) == 2
    b = batches[0]
    ids = b["input_ids"]
    assert ids.shape == (2, 8)  # "[CLS] is there a red star ? [SEP]" = 8 tokens
    assert tok.convert_ids_to_tokens(ids[0].tolist()) == ["[CLS]", "is", "there", "a", "red", "star", "?", "[SEP]"]
    assert b["attention_mask"][1].tolist() == [1] * 6 + [0] * 2  # "[CLS] how many shapes ? [SEP]"
    assert torch.count_nonzero(b["token_type_ids"]) == 0
    assert b["visual_feats"].shape == (2, 4, 6)
    assert b["visual_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]  # 3 regions; 5 capped at 4
    np.testing.assert_allclose(b["visual_boxes"][0, 0].numpy(), [0.05, 0.2, 0.55, 0.6, 0.2], rtol=1e-6)
    assert "region_links" not in b
    assert b["vqa_targets"].shape == (2, 4) and b["item_index"].tolist() == [0, 1]
    assert set(b) == {"input_ids", "attention_mask", "token_type_ids", "visual_feats", "visual_boxes", "visual_mask",
                      "vqa_targets", "item_index"}  # no cache: no per-sequence key either


def test_loss_decoding_predictions_and_metric():
    state = {"answers": ["yes", "no", "2", "red"]}
    items = TASK.items(EXAMPLES)
    logits = torch.tensor([[5.0, 0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 5.0]])
    targets = torch.from_numpy(TASK.targets(EXAMPLES, items, state)["vqa_targets"])
    loss = TASK.loss(TaskOutput(logits), {"vqa_targets": targets}, state)
    assert set(loss) == {"loss", "vqa_loss"}
    # binary cross-entropy summed over the answers, averaged over the questions, written out here
    p = torch.sigmoid(logits.double())
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum() / len(logits)
    assert loss["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    preds = TASK.predictions(EXAMPLES, items, TASK.decode(TaskOutput(logits), {}), state)
    assert preds["answer"].tolist() == ["yes", "2", "red"]
    assert list(preds.columns) == ["question_id", "image_id", "answer", "score"]
    m = TASK.metrics(preds, EXAMPLES, state)
    assert m["accuracy"] == pytest.approx(100.0) and m["number"] == pytest.approx(100.0)
    wrong = preds.assign(answer=["no", "2", "blue"])
    assert TASK.metrics(wrong, EXAMPLES, state)["yes/no"] == pytest.approx(60.0)  # 2 of 10 humans said no


def test_chance_is_the_train_majority_answer():
    train = pd.DataFrame({"multiple_choice_answer": ["no", "no", "yes"]})
    want = vqa_majority_chance(["no", "no", "yes"], [list(a) for a in EXAMPLES["answers"]],
                               EXAMPLES["answer_type"].tolist())
    assert TASK.chance(train, EXAMPLES, {}) == want
    assert want["yes/no"] == pytest.approx(60.0)


def test_report_compares_the_model_with_the_question_type_prior():
    train = pd.DataFrame({"question_type": ["how many", "how many", "is the", "is the"],
                          "multiple_choice_answer": ["2", "2", "yes", "no"]})
    examples = pd.DataFrame({"question_id": [1, 2, 3], "question_type": ["how many", "is the", "what"],
                             "answers": [["3"] * 10, ["no"] * 10, ["red"] * 10]})
    predictions = pd.DataFrame({"question_id": [1, 2, 3], "answer": ["3", "no", "blue"]})
    out = TASK.report(predictions, examples, {}, train)["baselines"]["question_type_prior"]
    # prior answers: "2" (how many), "no" (is the: tie -> alphabetical), "2" (unseen type: overall
    # majority "2") -> scores 0, 1, 0; the model 1, 1, 0: one win, no loss, one tie
    assert out["accuracy"] == pytest.approx(100 / 3)
    assert out["sign_test"] == {"wins": 1, "losses": 0, "ties": 2, "p_value": 0.5}
    sig = TASK.report(predictions, examples, {}, train)["significance"]["accuracy"]
    assert (sig["successes"], sig["trials"], sig["ties"], sig["test"]) == (1, 1, 2, "sign_test")
    assert sig["p_value"] == 0.5 and sig["chance_rate"] == 0.5
    assert sig["chance_value"] == pytest.approx(100 / 3) and "question-type prior" in sig["chance_predictor"]
    assert TASK.report(predictions, examples, {}) == {}  # no train split: no prior to test against


def test_significance_is_the_sign_test_over_many_questions():
    train = pd.DataFrame({"question_type": ["is the"] * 3, "multiple_choice_answer": ["yes"] * 3})
    # 12 yes/no questions; the prior always says "yes": right on the 6 "yes" questions
    gold = ["yes"] * 6 + ["no"] * 6
    examples = pd.DataFrame({"question_id": range(12), "question_type": ["is the"] * 12,
                             "answers": [[a] * 10 for a in gold]})
    model = ["yes"] * 6 + ["no"] * 4 + ["yes"] * 2  # right on 10: wins 4, losses 0, ties 8
    predictions = pd.DataFrame({"question_id": range(12), "answer": model})
    sig = TASK.report(predictions, examples, {}, train)["significance"]["accuracy"]
    assert (sig["successes"], sig["trials"], sig["ties"]) == (4, 4, 8)
    assert sig["p_value"] == 1 / 16 and sig["chance_value"] == pytest.approx(50.0)
    worse = predictions.assign(answer=["no"] * 2 + ["yes"] * 4 + ["no"] * 6)  # loses 2 "yes", wins 6 "no"
    sig = TASK.report(worse, examples, {}, train)["significance"]["accuracy"]
    assert (sig["successes"], sig["trials"], sig["ties"]) == (6, 8, 4)
    assert sig["p_value"] == pytest.approx((28 + 8 + 1) / 256)  # P(X >= 6), X ~ B(8, 1/2)
