"""RPG task entry: Entities phrases → items (no-box phrases excluded and counted), the phrase-in-
segment-b sequence, IoU targets and the loss, the grounding metric through the task's evaluation
path on hand-made boxes, and finetune + evaluate end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cavl import evaluate, finetune
from cavl.data.regions import RegionSource
from cavl.metrics.chance import rpg_chance
from cavl.tasks import REGISTRY, get_task
from cavl.tasks.base import DataSettings, Encoded, TaskBatches, TaskOutput
from cavl.tasks.rpg import phrase_ids
from cavl.testing import word_tokenizer, write_feature_shards, write_synthetic_flickr30k, write_tiny_pretrained

TASK = get_task("rpg")
TINY = {"finetune": {
    "threads": 1, "eval_batch_size": 16,
    "adapters": {"bottleneck": 4, "shortcut_layers": 1, "shortcut_width": 16, "shortcut_heads": 2},
    "train": {"log_every": 1, "checkpoint_every": 50},
    "tasks": {"rpg": {"epochs": 3, "batch_size": 8, "max_text_len": 24, "max_regions": 8}}}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Examples from the official Entities files
# ---------------------------------------------------------------------------------------------

SENTENCES = ("[/EN#5/people Two men] wave at [/EN#6/other a red car] near [/EN#7/scene the street] .\n"
             "[/EN#0/notvisual Someone] watches [/EN#6/other the car] .\n")
ANNOTATION = """<annotation><filename>42.jpg</filename>
<size><width>100</width><height>80</height><depth>3</depth></size>
<object><name>5</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>21</xmax><ymax>41</ymax></bndbox></object>
<object><name>5</name><bndbox><xmin>31</xmin><ymin>1</ymin><xmax>51</xmax><ymax>41</ymax></bndbox></object>
<object><name>6</name><bndbox><xmin>61</xmin><ymin>41</ymin><xmax>101</xmax><ymax>81</ymax></bndbox></object>
<object><name>7</name><nobndbox>1</nobndbox><scene>1</scene></object>
</annotation>
"""
GT = {"5": [[0, 0, 20, 40], [30, 0, 50, 40]], "6": [[60, 40, 100, 80]]}
# detected regions (after the given ones): a hit on man 1, a near miss on man 2, a hit on the car, a miss
DETECTED = [[1, 1, 21, 39], [36, 0, 60, 40], [58, 42, 100, 80], [0, 60, 30, 80]]


@pytest.fixture(scope="module")
def entities(tmp_path_factory):
    """rpg rows of the official files (cavl.formats) + features with the gt boxes given first."""
    from cavl.formats.flickr30k import rpg_rows

    root = tmp_path_factory.mktemp("entities")
    (root / "Sentences").mkdir()
    (root / "Annotations").mkdir()
    (root / "Sentences" / "42.txt").write_text(SENTENCES)
    (root / "Annotations" / "42.xml").write_text(ANNOTATION)
    (root / "test.txt").write_text("42\n")
    examples = pd.DataFrame(rpg_rows(str(root), "test"))
    given = GT["5"] + GT["6"]
    boxes = np.asarray(given + DETECTED, np.float32)
    feats = np.eye(len(boxes), 4 + len(boxes), dtype=np.float32)
    index = write_feature_shards(root / "features", "flickr30k", {"42": (feats, boxes, 100, 80, len(given))},
                                 dim=feats.shape[1])
    return examples, index


def test_registry_entry():
    assert REGISTRY["rpg"].image_datasets == ("flickr30k",) and TASK.main_metric == "r@1"


def test_phrases_to_items_with_several_boxes_and_no_box_phrases(entities):
    examples, index = entities
    regions = TASK.region_source(index, DataSettings(max_text_len=48, max_regions=36))
    ex = TASK.labelled(TASK.with_features(examples, regions, "test"), "test")
    assert ex["phrase"].tolist() == ["Two men", "a red car", "the street", "Someone", "the car"]
    assert [len(b) for b in ex["gt_boxes"]] == [2, 1, 0, 0, 1]  # scene and notvisual phrases: no box
    items = TASK.items(ex)
    assert items["example"].tolist() == [0, 1, 4]  # only phrases with a box are queries
    # candidates: the detected boxes, never the given gt ones
    np.testing.assert_allclose(np.stack(ex["candidate_boxes"][0]), DETECTED)
    tok = word_tokenizer(vocab=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "two men wave at a red car near the street someone watches .".split())
    batches = TaskBatches(TASK, ex, {}, regions, tok, DataSettings(max_text_len=32, max_regions=36), 3, shuffle=False)
    b = batches[0]
    words = tok.convert_ids_to_tokens(b["input_ids"][0].tolist())
    assert words[: words.index("[PAD]") if "[PAD]" in words else None] == [
        "[CLS]", "two", "men", "wave", "at", "a", "red", "car", "near", "the", "street", ".", "[SEP]", "two", "men", "[SEP]"]
    phrase = b["token_type_ids"][0][b["attention_mask"][0] == 1]
    assert phrase.tolist() == [0] * 13 + [1] * 3  # the phrase is segment b
    assert b["visual_mask"].sum(1).tolist() == [4, 4, 4]  # the 4 detected regions, not the 3 given
    np.testing.assert_allclose(b["visual_feats"][0, :, :7].numpy(), np.eye(7, dtype=np.float32)[3:])
    iou = b["rpg_iou"].numpy()
    assert iou[0, 0] > 0.8 and 0.3 < iou[0, 1] < 0.5 and iou[0, 3] == 0  # men: a hit and a near miss
    assert iou[1, 2] > 0.8 and iou[1, :2].max() == 0  # car


def test_grounding_metric_through_the_task_on_hand_made_boxes(entities):
    examples, index = entities
    regions = TASK.region_source(index, DataSettings(max_text_len=48, max_regions=36))
    ex = TASK.with_features(examples, regions, "test")
    items = TASK.items(ex)
    # scores per query (men, car, the car): men ranks the near miss first, the hit second;
    # "a red car" ranks the car first; "the car" ties the car with a miss (pessimistic: rank 1)
    scores = np.empty(3, dtype=object)
    scores[0] = np.array([2.0, 3.0, 0.0, 1.0], np.float32)
    scores[1] = np.array([0.0, 1.0, 5.0, 2.0], np.float32)
    scores[2] = np.array([0.0, 0.0, 4.0, 4.0], np.float32)
    preds = TASK.predictions(ex, items, {"scores": scores}, {})
    assert preds["phrase_id"].tolist() == ["42:0:0", "42:0:4", "42:1:2"]
    assert preds["best_box"][1] == DETECTED[2]
    m = TASK.metrics(preds, ex, {})
    assert m == {"r@1": pytest.approx(100 / 3), "r@5": 100.0, "r@10": 100.0, "upper_bound": 100.0}
    report = TASK.report(preds, ex, {})
    assert {k: report[k] for k in ("num_excluded", "candidates")} == {"num_excluded": 2, "candidates": "detected"}
    # one of the 4 candidates hits each phrase (rate 1/4), one phrase of 3 right: P(S >= 1) = 1 - (3/4)^3
    sig = report["significance"]["r@1"]
    assert (sig["successes"], sig["trials"], sig["test"]) == (1, 3, "poisson_binomial")
    assert sig["chance_rate_range"] == [0.25, 0.25] and sig["p_value"] == pytest.approx(37 / 64, rel=1e-12)
    assert TASK.chance(None, ex, {}) == rpg_chance(list(ex["candidate_boxes"]), list(ex["gt_boxes"]))[0]
    # fewer candidates (max_regions 1): only the first detection — men still hit, the car is out of reach
    one = TASK.with_features(examples, TASK.region_source(index, DataSettings(max_text_len=48, max_regions=1)), "test")
    s1 = np.empty(3, dtype=object)
    s1[:] = [np.zeros(1, np.float32)] * 3
    m1 = TASK.metrics(TASK.predictions(one, items, {"scores": s1}, {}), one, {})
    assert m1["upper_bound"] == pytest.approx(100 / 3) and m1["r@1"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="candidates"):
        TASK.predictions(ex, items, {"scores": s1}, {})


def test_significance_of_r_at_1_per_phrase_rates():
    """R@1 against a random candidate: a rate per phrase (hit candidates / candidates), a phrase no
    candidate reaches still a trial (rate 0, a miss), no-box phrases not trials."""
    gt = [[0, 0, 10, 10]]
    hit, miss = [0, 0, 10, 10], [50, 50, 60, 60]
    cands = [[hit, miss],                   # 1/2, the hit scored first: right
             [hit, hit, miss],              # 2/3, the miss scored first: wrong
             [miss, hit, miss, miss],       # 1/4, the hit scored first: right
             [miss, miss],                  # 0: a sure miss, still a trial
             [hit]]                         # no gt box: excluded, not a trial
    scores = [[2.0, 1.0], [0.0, 0.0, 1.0], [0.0, 3.0, 1.0, 2.0], [1.0, 0.0], [1.0]]
    ex = pd.DataFrame({"image_id": ["7"] * 5, "sentence_index": [0, 0, 1, 1, 2], "first_word_index": [0, 3, 0, 4, 0],
                       "candidate_boxes": [np.asarray(c, np.float32) for c in cands],
                       "gt_boxes": [gt, gt, gt, gt, []]})
    ids = phrase_ids(ex)
    preds = pd.DataFrame({"phrase_id": ids[:4][::-1], "scores": scores[:4][::-1]})  # matched by phrase id
    m = TASK.metrics(preds, ex, {})
    assert m["r@1"] == 50.0
    report = TASK.report(preds, ex, {})
    assert report["num_excluded"] == 1
    sig = report["significance"]["r@1"]
    assert (sig["successes"], sig["trials"], sig["test"]) == (2, 4, "poisson_binomial")
    assert sig["successes"] == round(m["r@1"] / 100 * sig["trials"])
    # P(S >= 2) over rates 1/2, 2/3, 1/4, 0 = 1/4 + 1/24 + 1/12 + 1/12 = 11/24
    assert sig["p_value"] == pytest.approx(11 / 24, rel=1e-12)
    assert sig["chance_rate"] == pytest.approx(17 / 48) and sig["chance_rate_range"] == [0.0, pytest.approx(2 / 3)]
    assert sig["chance_value"] == pytest.approx(TASK.chance(None, ex, {})["r@1"])  # the chance block's r@1
    assert sig["expected_successes"] == pytest.approx(17 / 12)
    everything = preds.assign(scores=[[1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0]][::-1])
    sig = TASK.report(everything, ex, {})["significance"]["r@1"]  # the three reachable ones right
    assert sig["successes"] == 3 and sig["p_value"] == pytest.approx(0.5 * 2 / 3 * 0.25, rel=1e-12)


def test_head_reads_the_phrase_tokens_and_masks_padding():
    torch.manual_seed(0)
    head = TASK.make_head(8, {}, 1e-12, 0.0).eval()
    L, R = 5, 3
    states = torch.randn(2, 1, L + R, 8)
    batch = {"token_type_ids": torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]),
             "visual_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]), "visual_boxes": torch.rand(2, R, 5)}
    scores = head(Encoded(states[:, 0, :1], states, L, batch))
    assert scores.shape == (2, R) and scores[1, 2] < -1e3
    changed = states.clone()
    changed[0, 0, 1] += 1.0  # a sentence token (type 0): not part of the phrase mean
    assert torch.allclose(head(Encoded(changed[:, 0, :1], changed, L, batch))[0], scores[0])
    changed[0, 0, 4] += 1.0  # a phrase token
    assert not torch.allclose(head(Encoded(changed[:, 0, :1], changed, L, batch))[0], scores[0])
    moved = {**batch, "visual_boxes": batch["visual_boxes"] + 0.1}  # the candidates' geometry counts too
    assert not torch.allclose(head(Encoded(states[:, 0, :1], states, L, moved))[0], scores[0])


def test_loss_targets_hits_and_falls_back_to_the_best_overlap():
    logits = torch.zeros(3, 4, requires_grad=True)
    iou = torch.tensor([[0.9, 0.6, 0.1, 0.0],   # two hits: target ∝ IoU over them
                        [0.2, 0.4, 0.0, 0.0],   # no hit: the best overlap
                        [0.0, 0.0, 0.0, 0.0]])  # nothing overlaps: no loss
    loss = TASK.loss(TaskOutput(logits), {"rpg_iou": iou}, {})["loss"]
    assert loss.item() == pytest.approx(np.log(4))  # uniform logits: -log(1/4) for both counted items
    loss.backward()
    g = logits.grad
    assert g[0, 0] < g[0, 1] < 0 < g[0, 2] and g[1, 1] < 0 < g[1, 0] and not g[2].any()


# ---------------------------------------------------------------------------------------------
# finetune + evaluate
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = write_synthetic_flickr30k(tmp_path_factory.mktemp("rpg"))
    write_tiny_pretrained(root / "backbone")
    return root


def test_finetune_then_evaluate(root, tmp_path):
    out = tmp_path / "rpg"
    feats = str(root / "features/flickr30k/index.parquet")
    assert finetune.main(["--task", "rpg", "--config", json.dumps(TINY), "--cpu", "--backbone", str(root / "backbone"),
                          "--train", str(root / "tasks/rpg/train.parquet"),
                          "--select", str(root / "tasks/rpg/val.parquet"), "--features", feats,
                          "--out", str(out / "model"), "--train-log", str(out / "log.jsonl"),
                          "--curves", str(out / "curves.png"), "--checkpoints", str(out / "ck"),
                          "--cache", str(out / "cache")]) == 0
    assert evaluate.main(["--task", "rpg", "--model", str(out / "model"), "--cpu",
                          "--eval", str(root / "tasks/rpg/test.parquet"), "--train", str(root / "tasks/rpg/train.parquet"),
                          "--features", feats, "--metrics", str(out / "metrics.json"),
                          "--predictions", str(out / "predictions.parquet")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    test = pd.read_parquet(root / "tasks/rpg/test.parquet")
    no_box = int((test["gt_boxes"].map(len) == 0).sum())
    assert no_box > 0 and metrics["num_excluded"] == no_box and metrics["candidates"] == "detected"
    assert metrics["num_examples"] == len(test) - no_box
    assert list(metrics["metrics"]) == ["r@1", "r@5", "r@10", "upper_bound"] == list(metrics["chance"])
    assert metrics["method"] == "adapter2" and metrics["split"] == "test"
    # synthetic detections are jittered gt boxes: every phrase is reachable; the one-hot colour and
    # shape features make it learnable — a few epochs beat a random ranking
    assert metrics["metrics"]["upper_bound"] == 100.0
    assert metrics["metrics"]["r@1"] > metrics["chance"]["r@1"] + 10
    sig = metrics["significance"]["r@1"]  # R@1 per phrase against a random candidate, from the counts
    print(f"rpg r@1 significance: {sig}")
    assert sig["trials"] == metrics["num_examples"] and sig["test"] == "poisson_binomial"
    assert sig["successes"] == round(metrics["metrics"]["r@1"] / 100 * sig["trials"])
    assert sig["chance_value"] == pytest.approx(metrics["chance"]["r@1"])
    preds = pd.read_parquet(out / "predictions.parquet")
    assert len(preds) == metrics["num_examples"] and set(preds["phrase_id"]) <= set(phrase_ids(test))
    detected = RegionSource(feats, 8, skip_given=True)  # each image's scores: one per detected candidate
    assert [len(s) for s in preds["scores"]] == [len(detected.pixel_boxes(i)) for i in preds["image_id"]]
