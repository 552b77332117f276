"""TIR and ZS-TIR task entries: Karpathy-split examples → retrieval set, in-batch hard negatives,
the ITM + PwCL losses, finetune + evaluate end to end, zero-shot evaluation, the workflow rules."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from cavl import evaluate, finetune, finetune_model
from cavl.losses import PairwiseContrastiveLoss
from cavl.metrics.chance import retrieval_chance
from cavl.tasks import REGISTRY, get_task
from cavl.tasks.base import TaskBatches
from cavl.tasks.tir import TirOutput, draw_negatives, masked_pwcl, retrieval_set
from cavl.testing import write_synthetic_flickr30k, write_tiny_pretrained
from test_significance import brute_force_tail

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = ["i2t_r@1", "i2t_r@5", "i2t_r@10", "t2i_r@1", "t2i_r@5", "t2i_r@10", "rsum"]
TINY = {"finetune": {
    "threads": 1, "eval_batch_size": 16,
    "adapters": {"bottleneck": 4, "shortcut_layers": 1, "shortcut_width": 16, "shortcut_heads": 2},
    "cache": {"dtype": "float32"},
    "train": {"log_every": 1, "checkpoint_every": 50},
    "tasks": {"tir": {"epochs": 2, "batch_size": 8, "max_text_len": 16, "max_regions": 6, "shortlist_k": 3},
              "zs_tir": {"max_text_len": 16, "max_regions": 6, "shortlist_k": 3}}}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = write_synthetic_flickr30k(tmp_path_factory.mktemp("tir"))
    write_tiny_pretrained(root / "backbone")
    return root


def features(root):
    return str(root / "features" / "flickr30k" / "index.parquet")


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------


def test_registry_entries():
    assert REGISTRY["tir"].image_datasets == ("flickr30k",) and not REGISTRY["tir"].zero_shot
    assert REGISTRY["zs_tir"].tables == "tir" and REGISTRY["zs_tir"].zero_shot
    assert get_task("zs_tir").zero_shot and not get_task("tir").zero_shot


def test_karpathy_split_to_retrieval_set(tmp_path):
    """The official Karpathy json → tir rows (cavl.formats) → the task's retrieval set."""
    from cavl.formats.flickr30k import tir_rows

    images = [{"filename": f"{i}.jpg", "imgid": k, "split": split, "sentids": [],
               "sentences": [{"raw": f"caption {j} of {i}", "tokens": [], "imgid": k, "sentid": 10 * k + j}
                             for j in range(n)]}
              for k, (i, split, n) in enumerate([("11", "test", 5), ("22", "train", 5), ("33", "test", 5),
                                                 ("44", "restval", 5), ("55", "test", 3)])]
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps({"dataset": "flickr30k", "images": images}))
    rows = tir_rows(str(path))
    assert [len(rows[s]) for s in ("train", "val", "test")] == [10, 0, 13]  # restval trains
    test = pd.DataFrame(rows["test"])
    ids, cap2img = retrieval_set(test)
    assert ids == ["11", "33", "55"] and cap2img.tolist() == [0] * 5 + [1] * 5 + [2] * 3
    # shuffled rows: images still in order of first appearance, captions still mapped to them
    shuffled = test.sample(frac=1.0, random_state=0).reset_index(drop=True)
    ids2, cap2img2 = retrieval_set(shuffled)
    assert [ids2[c] for c in cap2img2] == shuffled["image_id"].tolist()
    task = get_task("tir")
    assert task.chance(None, test, {}) == retrieval_chance(cap2img, 3)
    assert task.sequences(test.iloc[0].to_dict(), {}, {})[0].words_a == ["caption", "0", "of", "11"]


@pytest.mark.parametrize("task", ["tir", "zs_tir"])
def test_significance_of_recall_at_1_in_both_directions(task):
    from fractions import Fraction

    # 4 images with 3, 2, 1 and 2 captions: 8 captions
    captions = ["a", "a", "a", "b", "b", "c", "d", "d"]
    examples = pd.DataFrame({"image_id": captions, "sentence_id": [f"s{i}" for i in range(8)],
                             "caption": ["x"] * 8})
    i2t_rank = {"a": 0, "b": 0, "c": 5, "d": 1}  # a and b right at 1
    t2i_rank = [0, 0, 2, 0, 1, 0, 0, 3]  # 5 of 8 captions right at 1
    preds = pd.concat([
        pd.DataFrame({"direction": "i2t", "query": list(i2t_rank)[::-1], "image_id": list(i2t_rank)[::-1],
                      "rank": list(i2t_rank.values())[::-1]}),
        pd.DataFrame({"direction": "t2i", "query": examples["sentence_id"], "image_id": captions, "rank": t2i_rank}),
    ], ignore_index=True)
    t = get_task(task)
    metrics = t.metrics(preds, examples, {})
    assert (metrics["i2t_r@1"], metrics["t2i_r@1"]) == (50.0, 62.5)
    report = t.report(preds, examples, {})
    assert (report["num_images"], report["num_captions"]) == (4, 8)
    sig = report["significance"]
    assert list(sig) == ["i2t_r@1", "t2i_r@1"]
    i2t, t2i = sig["i2t_r@1"], sig["t2i_r@1"]
    # i2t: an image is right by chance when one of its captions comes first: its captions / 8
    assert (i2t["successes"], i2t["trials"], i2t["test"]) == (2, 4, "poisson_binomial")
    assert i2t["chance_rate_range"] == [1 / 8, 3 / 8] and i2t["expected_successes"] == pytest.approx(1.0)
    assert i2t["p_value"] == pytest.approx(float(brute_force_tail(2, [Fraction(k, 8) for k in (3, 2, 1, 2)])), rel=1e-12)
    # t2i: one right image of 4 per caption
    assert (t2i["successes"], t2i["trials"], t2i["test"], t2i["chance_rate"]) == (5, 8, "binomial", 0.25)
    assert t2i["p_value"] == pytest.approx(float(brute_force_tail(5, [Fraction(1, 4)] * 8)), rel=1e-9)
    chance = retrieval_chance(retrieval_set(examples)[1], 4)
    for key in sig:  # the chance predictor's value is the chance block's
        assert sig[key]["chance_value"] == pytest.approx(chance[key])
        assert sig[key]["successes"] == round(metrics[key] / 100 * sig[key]["trials"])
    # in-training predictions (one row per caption, no directions): no significance
    batch = pd.DataFrame({"sentence_id": ["s0"], "match_score": [1.0], "neg_image_score": [0.0],
                          "neg_text_score": [np.nan]})
    assert "significance" not in t.report(batch, examples, {})


def test_given_boxes_are_not_regions(root):
    from cavl.tasks.base import DataSettings, RegionSource

    task = get_task("tir")
    detected = task.region_source(features(root), DataSettings(max_text_len=32, max_regions=4))
    everything = RegionSource(features(root))
    image = pd.read_parquet(root / "tasks/tir/test.parquet")["image_id"][0]
    full = everything.get(image, 100)
    det = detected.get(image, 100)
    given = full.num_given
    assert given >= 2 and det.num_given == 0 and len(det.features) == len(full.features) - given
    np.testing.assert_array_equal(det.features, full.features[given:])
    np.testing.assert_array_equal(det.boxes, full.boxes[given:])
    assert len(detected.get(image, 3).features) == 3 and len(detected.pixel_boxes(image)) == 4


def test_settings_from_config_yaml_and_the_task_lr():
    from cavl.config import validate_config
    from cavl.finetune_model import settings_from_config

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    for task in ("tir", "zs_tir", "rpg"):
        s = settings_from_config(config, task)
        t = config["finetune"]["tasks"][task]
        assert s.eval_split == t["eval_split"] and s.data.max_regions == t["max_regions"]
        assert {k: v for k, v in s.options.items()} == {k: t[k] for k in s.options}
    shared = {"finetune": {"optim": {"lr": {"adapter1": 5e-3, "full": 1e-4}}}}
    assert settings_from_config(shared, "tir", "adapter1").optim.lr == 5e-3
    own = {"finetune": {**shared["finetune"], "tasks": {"tir": {"lr": {"adapter1": 1e-3}}}}}
    assert settings_from_config(own, "tir", "adapter1").optim.lr == 1e-3  # the task's own, per method
    assert settings_from_config(own, "tir", "full").optim.lr == 1e-4
    assert settings_from_config(own, "vqa", "adapter1").optim.lr == 5e-3  # other tasks keep the shared one
    number = {"finetune": {**shared["finetune"], "tasks": {"tir": {"lr": 2e-3}}}}
    assert settings_from_config(number, "tir", "full").optim.lr == 2e-3


# ---------------------------------------------------------------------------------------------
# Hard negatives and losses
# ---------------------------------------------------------------------------------------------


def test_masked_pwcl_is_pwcl_with_the_diagonal():
    torch.manual_seed(0)
    e, f = torch.randn(6, 8), torch.randn(6, 8)
    eye = torch.eye(6, dtype=torch.bool)
    ref = PairwiseContrastiveLoss(0.5, gather=False)(e, f)["pwcl_loss"]
    assert torch.allclose(masked_pwcl(e, f, eye, 0.5), ref)
    same = eye.clone()
    same[0, 1] = same[1, 0] = True  # two captions of one picture: also positives
    assert not torch.allclose(masked_pwcl(e, f, same, 0.5), ref)


def test_negatives_come_from_other_pictures():
    torch.manual_seed(0)
    picture = torch.tensor([0, 0, 1, 2, 2])
    same = picture[:, None] == picture[None, :]
    sim = torch.randn(5, 5)
    for _ in range(20):
        neg = draw_negatives(sim, same, sample=True)
        assert (picture[neg] != picture).all()
    hardest = draw_negatives(sim, same, sample=False)
    masked = sim.masked_fill(same, float("-inf"))
    assert torch.equal(hardest, masked.argmax(1))
    alone = torch.ones(3, 3, dtype=torch.bool)  # one picture only: no negative
    assert draw_negatives(torch.zeros(3, 3), alone, sample=True).tolist() == [-1, -1, -1]


def test_training_pass_pairs_positives_with_hard_negatives(root):
    from cavl.finetune_model import FinetuneModel, load_tokenizer, settings_from_config
    from cavl.model import CavlModel

    task = get_task("tir")
    s = settings_from_config(TINY, "tir")
    regions = task.region_source(features(root), s.data)
    examples = task.with_features(task.read(root / "tasks/tir/train.parquet"), regions, "train")
    state = task.prepare(examples, s.options)
    model = FinetuneModel(CavlModel.from_pretrained(root / "backbone"), task, state, "adapter2", s.adapters)
    batches = TaskBatches(task, examples, state, regions, load_tokenizer(root / "backbone"), s.data, 8, seed=0)
    batch = batches[0]
    model.train()
    out = model.task_output(batch)
    assert isinstance(out, TirOutput)
    B = 8
    labels = out.labels
    assert labels[:B].tolist() == [1] * B and not labels[B:].any()
    n_neg = int((out.neg_image >= 0).sum() + (out.neg_text >= 0).sum())
    assert out.logits.shape == (B + n_neg, 2) and n_neg == 2 * B  # every caption has other pictures here
    picture = batch["tir_image"]
    assert (picture[out.neg_image] != picture).all() and (picture[out.neg_text] != picture).all()
    losses = model(batch)
    assert set(losses) == {"loss", "itm_loss", "pwcl_loss"}
    assert torch.allclose(losses["loss"], losses["itm_loss"] + losses["pwcl_loss"])
    losses["loss"].backward()
    assert model.head.classifier.weight.grad.abs().sum() > 0
    model.state["pwcl_weight"] = 0.0
    assert set(model(batch)) == {"loss", "itm_loss"}


def test_head_starts_as_the_pretrained_itm_head(root, tmp_path):
    from cavl.adapters import AdapterSettings
    from cavl.finetune_model import FinetuneModel
    from cavl.model import CavlModel
    from cavl.testing import write_tiny_backbone

    task = get_task("tir")

    def fresh(path):
        return FinetuneModel(CavlModel.from_pretrained(path), task, task.prepare(None, {}), "adapter2",
                             AdapterSettings(bottleneck=4))

    model = fresh(root / "backbone")
    weights = load_file(str(root / "backbone" / "model.safetensors"))
    assert not torch.equal(model.head.classifier.weight, weights["itm_head.classifier.weight"])
    assert task.init_from_pretrained(model, root / "backbone")
    assert torch.equal(model.head.classifier.weight, weights["itm_head.classifier.weight"])
    assert torch.equal(model.head.classifier.bias, weights["itm_head.classifier.bias"])
    bare = write_tiny_backbone(tmp_path / "bare")  # no ITM head: the head stays as initialised
    assert not task.init_from_pretrained(fresh(bare), bare)


# ---------------------------------------------------------------------------------------------
# finetune + evaluate, zero-shot evaluation
# ---------------------------------------------------------------------------------------------


def train_cli(root, out, config=TINY):
    return ["--task", "tir", "--config", json.dumps(config), "--cpu", "--backbone", str(root / "backbone"),
            "--train", str(root / "tasks/tir/train.parquet"), "--select", str(root / "tasks/tir/val.parquet"),
            "--features", features(root), "--out", str(out / "model"), "--train-log", str(out / "log.jsonl"),
            "--curves", str(out / "curves.png"), "--checkpoints", str(out / "checkpoints"),
            "--cache", str(out / "cache")]


def eval_cli(root, task, out, extra=()):
    return ["--task", task, "--cpu", "--eval", str(root / "tasks/tir/test.parquet"), "--features", features(root),
            "--metrics", str(out / "metrics.json"), "--predictions", str(out / "predictions.parquet"), *extra]


@pytest.fixture(scope="module")
def finetuned(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tir_out")
    config = {"finetune": {**TINY["finetune"], "train": {**TINY["finetune"]["train"], "eval_every": 7}}}
    assert finetune.main(train_cli(root, out, config) + ["--eval", str(root / "tasks/tir/val.parquet")]) == 0
    return out


def check_retrieval_outputs(root, out, task):
    metrics = json.loads((out / "metrics.json").read_text())
    test = pd.read_parquet(root / "tasks/tir/test.parquet")
    images, cap2img = retrieval_set(test)
    assert list(metrics["metrics"]) == METRIC_KEYS and list(metrics["chance"]) == METRIC_KEYS
    assert metrics["chance"] == pytest.approx(retrieval_chance(cap2img, len(images)))
    assert metrics["num_images"] == len(images) == 6 and metrics["num_captions"] == len(test) == 30
    assert metrics["num_examples"] == 36  # one query per image and per caption
    r = metrics["retrieval"]
    assert r["mode"] == "two_stage" and r["shortlist_k"] == 3 and r["pairs_exhaustive"] == 180
    assert 0 < r["pairs_scored"] <= 3 * (6 + 30)
    preds = pd.read_parquet(out / "predictions.parquet")
    assert preds["direction"].value_counts().to_dict() == {"t2i": 30, "i2t": 6}
    t2i = preds[preds["direction"] == "t2i"]
    assert t2i["query"].tolist() == test["sentence_id"].astype(str).tolist()
    assert all(len(t) == 6 for t in t2i["top"]) and all(len(t) == 10 for t in preds.loc[preds.direction == "i2t", "top"])
    # a query ranked first has its answer at the top of its list
    first = t2i[t2i["rank"] == 0]
    assert all(row.top[0] == row.image_id for row in first.itertuples())
    # the recalls are the ranks' (cavl.metrics.retrieval: percent of ranks < K)
    for d in ("i2t", "t2i"):
        ranks = preds.loc[preds["direction"] == d, "rank"].to_numpy()
        for k in (1, 5, 10):
            assert metrics["metrics"][f"{d}_r@{k}"] == pytest.approx(100 * np.mean(ranks < k))
    assert metrics["metrics"]["rsum"] == pytest.approx(sum(metrics["metrics"][k] for k in METRIC_KEYS[:-1]))
    sig = metrics["significance"]  # R@1 of both directions against a random ranking
    assert list(sig) == ["i2t_r@1", "t2i_r@1"]
    for key, trials in (("i2t_r@1", 6), ("t2i_r@1", 30)):
        assert sig[key]["trials"] == trials and sig[key]["successes"] == round(metrics["metrics"][key] / 100 * trials)
        assert sig[key]["chance_value"] == pytest.approx(metrics["chance"][key]) and 0 <= sig[key]["p_value"] <= 1
    return metrics


def test_finetune_then_evaluate(root, finetuned):
    out = finetuned
    config = json.loads((out / "model/finetune_config.json").read_text())
    assert config["task"] == "tir" and config["method"] == "adapter2"
    assert config["task_state"] == {"retrieval": "two_stage", "shortlist_k": 3, "sim_weight": 1.0, "pwcl_weight": 1.0,
                                    "temperature": 0.5}
    saved = load_file(str(out / "model/finetuned.safetensors"))
    assert "head.classifier.weight" in saved and not any(k.startswith("backbone.embeddings.word") for k in saved)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all({"itm_loss", "pwcl_loss"} <= set(r) for r in log if "event" not in r and "lr" in r)
    evals = [r for r in log if "val_itm_accuracy" in r]  # in-training evaluation: ITM vs hardest in-batch negatives
    assert [r["step"] for r in evals] == [7, 14] and all(0 <= r["val_itm_accuracy"] <= 100 for r in evals)
    assert all("val_tir_loss" in r for r in evals)
    assert evaluate.main(eval_cli(root, "tir", out, ["--model", str(out / "model"),
                                                     "--train", str(root / "tasks/tir/train.parquet")])) == 0
    metrics = check_retrieval_outputs(root, out, "tir")
    assert metrics["task"] == "tir" and metrics["method"] == "adapter2" and metrics["split"] == "test"
    assert metrics["trainable_params"] == config["trainable_params"] > 0
    assert metrics["model"] == finetune_model.model_checksum(out / "model")


def test_exhaustive_and_full_shortlist_agree_through_the_task(root, finetuned):
    from cavl.finetune_model import FinetuneModel, load_tokenizer
    from cavl.tasks.base import DataSettings

    model, config = FinetuneModel.from_finetuned(finetuned / "model")
    task, data = model.task, DataSettings(**config["settings"]["data"])
    regions = task.region_source(features(root), data)
    examples = task.with_features(task.read(root / "tasks/tir/test.parquet"), regions, "test")
    tok = load_tokenizer(root / "backbone")
    runs = {}
    for mode, k in (("exhaustive", 0), ("two_stage", 30), ("two_stage", 2)):
        model.state.update(retrieval=mode, shortlist_k=k)
        runs[mode, k] = task.predict_split(model, examples, regions, tok, data, 8, "cpu")
    full, every, two = runs["exhaustive", 0], runs["two_stage", 30], runs["two_stage", 2]
    assert full["rank"].tolist() == every["rank"].tolist()
    assert task.metrics(full, examples, {}) == task.metrics(every, examples, {})
    assert full.attrs["retrieval"]["pairs_scored"] == every.attrs["retrieval"]["pairs_scored"] == 180
    assert two.attrs["retrieval"]["pairs_scored"] < 2 * 36 + 1
    # a query whose answer missed the shortlist ranks at least k = 2 deep
    assert (two.loc[~two["in_shortlist"], "rank"] >= 2).all()
    # exhaustive ranks are cavl.metrics.retrieval's on the ITM matrix
    assert full["in_shortlist"].all()


def test_zero_shot_evaluation(root, tmp_path):
    out = tmp_path / "zs"
    assert evaluate.main(eval_cli(root, "zs_tir", out, ["--backbone", str(root / "backbone"),
                                                        "--config", json.dumps(TINY)])) == 0
    metrics = check_retrieval_outputs(root, out, "zs_tir")
    assert metrics["task"] == "zs_tir" and metrics["method"] == "zero-shot" and metrics["trainable_params"] == 0
    assert metrics["total_params"] > 0 and metrics["config"]["method"] == "zero-shot"
    from cavl.io import file_sha256

    assert metrics["model"] == file_sha256(root / "backbone" / "model.safetensors")
    # the pretrained ITM head is the one scoring
    model, _ = get_task("zs_tir").zero_shot_model(root / "backbone", {"options": {}})
    weights = load_file(str(root / "backbone" / "model.safetensors"))
    assert torch.equal(model.head.classifier.weight, weights["itm_head.classifier.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="evaluated zero-shot"):
        get_task("zs_tir").prepare(None, {})


def test_zero_shot_needs_the_pretraining_head(root, tmp_path):
    from cavl.testing import write_tiny_backbone

    bare = write_tiny_backbone(tmp_path / "bare")  # a CavlModel folder: no ITM head
    with pytest.raises(ValueError, match="no ITM head"):
        get_task("zs_tir").zero_shot_model(bare, {"options": {}})


def test_workflow_routes_zs_tir_to_the_zero_shot_rule(tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text("".join(f'include: "{REPO}/workflow/rules/{name}.smk"\n'
                                 for name in ("common", "extract", "finetune")))
    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")
    work = tmp_path / "work"
    for path in ("results/pretrain/model/model.safetensors", "resources/tasks/tir/test.parquet",
                 "resources/tasks/tir/train.parquet", "resources/tasks/tir/val.parquet",
                 "resources/features/flickr30k/index.parquet"):
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text("")
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"finetune": {"tasks": {"zs_tir": {"shortlist_k": 4}}}}))
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run([snakemake, "-s", str(snakefile), "--directory", str(work), "-n", "-p",
                           "results/zs_tir/metrics.json", "results/tir/metrics.json",
                           "--allowed-rules", "finetune", "evaluate", "evaluate_zero_shot", "--configfile", str(REPO / "config.yaml"), str(small)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert "rule evaluate_zero_shot:" in text and "rule finetune:" in text and "rule evaluate:" in text
    zs = text[text.index("rule evaluate_zero_shot:"):].split("\n\n")[0]
    assert "resources/tasks/tir/test.parquet" in zs and "results/zs_tir/metrics.json" in zs
    assert '"shortlist_k": 4' in text and "results/zs_tir/model" not in text
