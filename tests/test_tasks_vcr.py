"""VCR task entry: [idx] references → names linked to the objects' given boxes, Q→A / QA→R items."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from cavl.metrics.chance import vcr_chance
from cavl.tasks import REGISTRY, get_task
from cavl.tasks.base import DataSettings, RegionSource, TaskBatches, TaskOutput
from cavl.testing import VOCAB, word_tokenizer, write_feature_shards
from cavl.tasks.vcr import QA2R, Q2A, render

TASK = get_task("vcr")
WORDS = VOCAB + ["person", "dog", "happy", "runs", "smiles", "sad", "sits", "because", "it", "he"]
OBJECTS = ["person", "dog", "person"]


def example(image="m/clip@0", label=1, rationale=2, annot="val-1"):
    return {
        "annot_id": annot, "image_id": image,
        "question": json.dumps(["Is", [0, 2], "happy", "?"]),
        "answer_choices": json.dumps([["no", "."], [[1], "runs", "."], ["yes", "."], [[2], "sits", "."]]),
        "rationale_choices": json.dumps([["because", [0], "smiles"], ["it", "runs"], ["he", "is", "sad"],
                                         [[1], "sits"]]),
        "answer_label": label, "rationale_label": rationale, "objects": OBJECTS,
    }


@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    boxes = np.array([[0, 0, 50, 50], [50, 0, 100, 50], [0, 50, 50, 100], [10, 10, 90, 90], [5, 5, 20, 20]],
                     np.float32)
    images = {"m/clip@0": (rng.normal(size=(5, 6)).astype(np.float32), boxes, 100, 100, 3),  # 3 given + 2 detected
              "m/clip@1": (rng.normal(size=(2, 6)).astype(np.float32), boxes[:2], 100, 100, 1)}  # 1 given only
    return RegionSource(write_feature_shards(root, "vcr", images, dim=6))


def test_registry_entry():
    assert REGISTRY["vcr"].image_datasets == ("vcr",)
    assert TASK.num_candidates == 4 and TASK.main_metric == "q2ar"


def test_references_become_names_linked_to_their_objects():
    words, links = render(["Is", [0, 2], "happy", "?"], OBJECTS)
    assert words == ["Is", "person", "and", "person", "happy", "?"]
    assert links == [[], [0], [], [2], [], []]
    words, links = render([[1], "near", [0]], ["traffic light", "person"])
    assert words == ["person", "near", "traffic", "light"] and links == [[1], [], [0], [0]]


def test_each_example_gives_a_q2a_and_a_qa2r_item_of_four_candidates():
    ex = pd.DataFrame([example(), example(annot="val-2")])
    items = TASK.items(ex)
    assert items.to_dict("list") == {"example": [0, 0, 1, 1], "mode": [Q2A, QA2R, Q2A, QA2R]}
    q2a = TASK.sequences(example(), {"example": 0, "mode": Q2A}, {})
    assert len(q2a) == 4 and q2a[1].words_a == ["Is", "person", "and", "person", "happy", "?"]
    assert q2a[1].words_b == ["dog", "runs", "."] and q2a[1].links_b == [[1], [], []]
    qa2r = TASK.sequences(example(label=3), {"example": 0, "mode": QA2R}, {})
    assert qa2r[0].words_a[-3:] == ["person", "sits", "."]  # the gold answer follows the question
    assert qa2r[0].links_a[-3:] == [[2], [], []]
    assert qa2r[3].words_b == ["dog", "sits"]
    targets = TASK.targets(ex.iloc[items["example"]], items, {})["vcr_labels"]
    assert targets.tolist() == [1, 2, 1, 2]


def test_links_mark_the_region_tokens_of_the_referenced_given_boxes(regions):
    ex = pd.DataFrame([example()])
    tok = word_tokenizer(WORDS)
    batches = TaskBatches(TASK, ex, {}, regions, tok, DataSettings(max_text_len=32, max_regions=8), 1, shuffle=False)
    b = batches[0]  # the Q→A item: 4 sequences
    assert b["input_ids"].shape[0] == 4 and b["visual_feats"].shape[:2] == (4, 5)
    tokens = tok.convert_ids_to_tokens(b["input_ids"][1].tolist())
    assert tokens[:12] == ["[CLS]", "is", "person", "and", "person", "happy", "?", "[SEP]", "dog", "runs", ".", "[SEP]"]
    links = b["region_links"][1]  # (R, L)
    assert links.shape == (5, b["input_ids"].shape[1])
    assert torch.nonzero(links).tolist() == [[0, 2], [1, 8], [2, 4]]  # person→0, dog→1, person→2
    assert b["token_type_ids"][1, 8].item() == 1 and b["token_type_ids"][1, 2].item() == 0
    no_refs = b["region_links"][0]  # answer "no ." refers to nothing: only the question's links
    assert torch.nonzero(no_refs).tolist() == [[0, 2], [2, 4]]
    assert b["vcr_labels"].tolist() == [1]


def test_links_past_the_given_boxes_are_dropped_with_a_warning(regions, caplog):
    ex = pd.DataFrame([example(image="m/clip@1")])  # only object 0 has a given box
    batches = TaskBatches(TASK, ex, {}, regions, word_tokenizer(WORDS), DataSettings(max_text_len=32, max_regions=8),
                          1, shuffle=False)
    with caplog.at_level(logging.WARNING):
        b = batches[0]
    assert {r for r, _ in torch.nonzero(b["region_links"][1]).tolist()} == {0}
    assert "past the given boxes" in caplog.text


def test_decoding_and_metrics_pair_the_two_items():
    ex = pd.DataFrame([example(label=1, rationale=2, annot="a"), example(label=0, rationale=0, annot="b")])
    items = TASK.items(ex)
    logits = torch.tensor([[0, 9.0, 0, 0], [0, 0, 9.0, 0],    # a: answer 1 right, rationale 2 right
                           [0, 9.0, 0, 0], [9.0, 0, 0, 0]])   # b: answer wrong, rationale right
    preds = TASK.predictions(ex, items, TASK.decode(TaskOutput(logits), {}), {})
    assert preds["answer_pred"].tolist() == [1, 1] and preds["rationale_pred"].tolist() == [2, 0]
    assert TASK.metrics(preds, ex, {}) == {"q2a": 50.0, "qa2r": 100.0, "q2ar": 50.0}
    loss = TASK.loss(TaskOutput(logits), {"vcr_labels": torch.tensor([1, 2, 0, 0])}, {})
    assert set(loss) == {"loss", "vcr_loss"}
    assert TASK.chance(ex, ex, {}) == vcr_chance(4, 4)


def test_unlabelled_examples_are_left_out():
    ex = pd.DataFrame([example(), example(label=-1, rationale=-1, annot="test-1")])
    assert TASK.labelled(ex, "x")["annot_id"].tolist() == ["val-1"]


def _binomial_tail(successes, trials, chance):
    """Exact P(X >= successes), X ~ Binomial(trials, chance) for a rational chance."""
    from fractions import Fraction
    from math import comb

    c = Fraction(chance)
    return float(sum(comb(trials, k) * c ** k * (1 - c) ** (trials - k) for k in range(successes, trials + 1)))


def test_report_tests_each_metric_against_a_uniform_random_choice():
    from fractions import Fraction

    # 12 questions: answers right on the first 8, rationales right on questions 4..11 → both on 4..7
    ex = pd.DataFrame([example(label=1, rationale=2, annot=f"q{i}") for i in range(12)])
    answer = [1] * 8 + [0] * 4
    rationale = [3] * 4 + [2] * 8
    preds = pd.DataFrame({"annot_id": [f"q{i}" for i in range(12)][::-1],  # any order: matched by annot_id
                          "answer_pred": answer[::-1], "rationale_pred": rationale[::-1]})
    assert TASK.metrics(preds, ex, {}) == {"q2a": pytest.approx(800 / 12), "qa2r": pytest.approx(800 / 12),
                                            "q2ar": pytest.approx(400 / 12)}
    sig = TASK.report(preds, ex, {})["significance"]
    assert list(sig) == ["q2ar", "q2a", "qa2r"]
    expected = (("q2ar", 4, Fraction(1, 16)), ("q2a", 8, Fraction(1, 4)), ("qa2r", 8, Fraction(1, 4)))
    for metric, right, chance in expected:
        r = sig[metric]
        assert (r["successes"], r["trials"], r["test"]) == (right, 12, "binomial"), metric
        assert r["chance_rate"] == float(chance) and r["chance_value"] == TASK.chance(None, ex, {})[metric]
        assert r["p_value"] == pytest.approx(_binomial_tail(right, 12, chance), rel=1e-9), metric
    # 4 of 12 both right at 1/16: p ≈ 0.0067 — beats chance; 8 of 12 at 1/4: p ≈ 0.0028
    assert sig["q2ar"]["p_value"] < 0.01 and sig["q2a"]["p_value"] < 0.01
    none = TASK.report(preds.assign(answer_pred=2, rationale_pred=0), ex, {})["significance"]
    assert none["q2ar"]["successes"] == 0 and none["q2ar"]["p_value"] == 1.0
