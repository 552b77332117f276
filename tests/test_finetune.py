"""Finetuning stage: settings, the finetune + evaluate CLIs end to end, the backbone cache,
exact resume, and the Snakemake rules — on a tiny random BERT and synthetic feature shards."""

import json
import os
import pickle
import shutil
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
from cavl.backbone_cache import precompute
from cavl.config import validate_config
from cavl.finetune_model import FinetuneModel, settings_from_config
from cavl.model import CavlModel
from cavl.tasks import get_task
from cavl.tasks.base import RegionSource, TaskBatches
from cavl.testing import write_feature_shards, write_synthetic_tasks, write_tiny_backbone
from cavl.train_loop import Trainer

REPO = Path(__file__).resolve().parents[1]
DATASET = {"vqa": "coco", "vcr": "vcr", "nlvr2": "nlvr2"}
EVAL_SPLIT = {"vqa": "val", "vcr": "val", "nlvr2": "dev"}
METRICS_KEYS = {"task", "split", "method", "metrics", "num_examples", "chance", "trainable_params", "total_params",
                "model", "config"}
TINY = {"finetune": {
    "threads": 1, "eval_batch_size": 8,
    "adapters": {"bottleneck": 4, "shortcut_layers": 1, "shortcut_width": 16, "shortcut_heads": 2},
    "cache": {"dtype": "float32"},
    "train": {"log_every": 1, "checkpoint_every": 2},
    "tasks": {"vqa": {"epochs": 2, "batch_size": 8, "max_text_len": 12, "max_regions": 6, "answer_vocab_size": 50},
              "vcr": {"epochs": 1, "batch_size": 4, "max_text_len": 24, "max_regions": 6},
              "nlvr2": {"epochs": 2, "batch_size": 4, "max_text_len": 12, "max_regions": 6}}}}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = write_synthetic_tasks(tmp_path_factory.mktemp("ft"))
    write_tiny_backbone(root / "backbone")
    return root


def cli(root, task, out, method=None, config=TINY, extra=()):
    args = ["--task", task, "--config", json.dumps(config), "--cpu", "--backbone", str(root / "backbone"),
            "--train", str(root / "tasks" / task / "train.parquet"),
            "--features", str(root / "features" / DATASET[task] / "index.parquet"),
            "--out", str(out / "model"), "--train-log", str(out / "log.jsonl"), "--curves", str(out / "curves.png"),
            "--checkpoints", str(out / "checkpoints"), "--cache", str(out / "cache"), *extra]
    return args + (["--method", method] if method else [])


def eval_cli(root, task, out):
    return ["--task", task, "--model", str(out / "model"), "--cpu",
            "--eval", str(root / "tasks" / task / f"{EVAL_SPLIT[task]}.parquet"),
            "--train", str(root / "tasks" / task / "train.parquet"),
            "--features", str(root / "features" / DATASET[task] / "index.parquet"),
            "--metrics", str(out / "metrics.json"), "--predictions", str(out / "predictions.parquet")]


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def test_settings_of_each_task_resolve_from_config_yaml():
    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    for task in ("vqa", "vcr", "nlvr2"):
        s = settings_from_config(config, task)
        t = config["finetune"]["tasks"][task]
        assert (s.method, s.train_split, s.eval_split) == (t["method"], t["train_split"], t["eval_split"])
        assert (s.train.epochs, s.train.batch_size, s.data.max_regions) == (t["epochs"], t["batch_size"], t["max_regions"])
        assert s.optim.lr == config["finetune"]["optim"]["lr"][s.method]
    assert settings_from_config(config, "vqa").options == {"answer_vocab_size": 3129}
    full = settings_from_config(config, "vqa", method="full")
    assert full.method == "full" and full.optim.lr == config["finetune"]["optim"]["lr"]["full"]
    assert settings_from_config({}, "nlvr2").eval_split == "dev"  # the task's own defaults without a config


def test_defaults_come_from_the_schema_alone():
    """No second table of defaults: an empty config resolves to the schema's defaults, and a task's
    own option defaults (Task.options, used by task code) equal the schema's."""
    from cavl.config import load_schema

    schema = load_schema()["properties"]["finetune"]["properties"]
    lr = {m: v["default"] for m, v in schema["optim"]["properties"]["lr"]["properties"].items()}
    assert lr == {"full": 5e-5, "linear": 1e-3, "adapter1": 1e-3, "adapter2": 1e-3, "adapter1+2": 1e-3}  # literature
    tasks = schema["tasks"]["properties"]
    for task in ("vqa", "vcr", "nlvr2", "rpg", "tir", "zs_tir"):
        own = {k: v["default"] for k, v in tasks[task]["properties"].items()}
        assert get_task(task).options == {k: own[k] for k in get_task(task).options}, task
        s = settings_from_config({}, task)
        assert s.options == get_task(task).options
        assert (s.eval_split, s.data.max_text_len, s.data.max_regions) == (
            own["eval_split"], own["max_text_len"], own["max_regions"])
        if task == "zs_tir":
            continue
        assert (s.method, s.train_split, s.select_split, s.train.epochs, s.train.batch_size) == (
            own["method"], own["train_split"], own["select_split"], own["epochs"], own["batch_size"])
        for method in lr:
            assert settings_from_config({}, task, method).optim.lr == lr[method]
    assert settings_from_config({}, "vqa").select_fraction == schema["select_fraction"]["default"] == 0.1
    assert [settings_from_config({}, t).select_split for t in ("vqa", "vcr", "nlvr2", "rpg", "tir")] == [
        None, None, None, "val", "val"]
    assert not hasattr(finetune, "DEFAULT_LR")


def test_unknown_settings_are_rejected_by_name():
    with pytest.raises(ValueError, match=r"finetune.tasks.vcr.*answer_vocab_size"):
        settings_from_config({"finetune": {"tasks": {"vcr": {"answer_vocab_size": 3}}}}, "vcr")
    with pytest.raises(ValueError, match=r"finetune.adapters.*width"):
        settings_from_config({"finetune": {"adapters": {"width": 3}}}, "vqa")
    with pytest.raises(ValueError, match="unknown method"):
        settings_from_config({}, "vqa", method="adapter3")


# ---------------------------------------------------------------------------------------------
# The CLIs end to end
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task,method,eval_every", [("vqa", None, 0), ("vcr", None, 0), ("nlvr2", None, 0),
                                                     ("vqa", "adapter1", 0), ("nlvr2", "linear", 2)])
def test_finetune_then_evaluate_writes_the_contract_outputs(root, tmp_path, capsys, task, method, eval_every):
    out = tmp_path / task
    config = {"finetune": {**TINY["finetune"], "train": {**TINY["finetune"]["train"], "eval_every": eval_every}}}
    eval_split = ["--eval", str(root / "tasks" / task / f"{EVAL_SPLIT[task]}.parquet")]
    assert finetune.main(cli(root, task, out, method, config, extra=eval_split)) == 0
    printed = capsys.readouterr().out
    assert "trainable params: " in printed and " || all params: " in printed and " || trainable%: " in printed
    model_dir = out / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["finetune_config.json", "finetuned.safetensors",
                                                           "resolved_config.yaml"]
    config = json.loads((model_dir / "finetune_config.json").read_text())
    assert config["method"] == (method or "adapter2") and config["params_line"] in printed
    if method == "linear":
        assert all(k.startswith("head.") for k in load_file(str(model_dir / "finetuned.safetensors")))
    assert config["backbone"]["path"] == str(root / "backbone") and len(config["backbone"]["sha256"]) == 64
    saved = set(load_file(str(model_dir / "finetuned.safetensors")))
    assert saved and all(k.startswith("head.") or "_adapter." in k or "norm." in k or k.startswith("shortcut.")
                         for k in saved)  # adapters + head (+ LayerNorms): never the frozen backbone weights
    assert sum(load_file(str(model_dir / "finetuned.safetensors"))[k].numel() for k in saved) == config["trainable_params"]
    assert (out / "log.jsonl").exists() and (out / "curves.png").stat().st_size > 0
    assert (out / "checkpoints").is_dir()
    assert (out / "cache" / "cache.json").exists() == (method in ("adapter1", "linear"))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any(f"{task}_loss" in r for r in records)
    assert any(f"val_{get_task(task).main_metric}" in r for r in records) == (eval_every > 0)
    # the best epoch, chosen on held-out train images, is the one saved (tests/test_best_epoch.py)
    assert any(f"select_{get_task(task).main_metric}" in r for r in records)
    assert config["selection"]["metric"] == get_task(task).main_metric and config["selection"]["split"] == "train"
    assert [r["best_step"] for r in records if r.get("event") == "best_epoch"] == [config["selection"]["step"]]

    assert evaluate.main(eval_cli(root, task, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS | {"significance"} | ({"baselines"} if task == "vqa" else set())
    tested = {"vqa": ["accuracy"], "vcr": ["q2ar", "q2a", "qa2r"], "nlvr2": ["accuracy"]}[task]
    assert list(metrics["significance"]) == tested  # each against its chance predictor, from the counts
    for metric in tested:
        record = metrics["significance"][metric]
        assert 0 <= record["p_value"] <= 1 and 0 <= record["successes"] <= record["trials"]
        if task != "vqa":  # binomials over every example (vqa: the sign test over differing questions)
            assert record["trials"] == metrics["num_examples"]
            assert record["successes"] == round(metrics["metrics"][metric] / 100 * record["trials"])
    assert metrics["task"] == task and metrics["split"] == EVAL_SPLIT[task]
    assert set(metrics["metrics"]) == set(metrics["chance"]) and get_task(task).main_metric in metrics["metrics"]
    assert metrics["trainable_params"] == config["trainable_params"] and metrics["config"]["task"] == task
    assert metrics["model"] == finetune_model.model_checksum(model_dir)
    preds = pd.read_parquet(out / "predictions.parquet")
    assert len(preds) == metrics["num_examples"] > 0


def test_a_model_refuses_a_different_backbone(root, tmp_path):
    out = tmp_path / "nlvr2"
    assert finetune.main(cli(root, "nlvr2", out, config={**TINY, "finetune": {**TINY["finetune"],
                                                                    "train": {"max_steps": 1}}})) == 0
    other = tmp_path / "other_backbone"
    shutil.copytree(root / "backbone", other)
    model = CavlModel.from_pretrained(other)
    with torch.no_grad():
        model.pooler.dense.bias.add_(1.0)
    model.save_pretrained(other, extra=lambda d: [shutil.copy(f, d) for f in (root / "backbone").glob("tok*")])
    with pytest.raises(ValueError, match="SHA-256"):
        FinetuneModel.from_finetuned(out / "model", backbone=other)
    loaded, config = FinetuneModel.from_finetuned(out / "model")
    assert config["task"] == "nlvr2" and loaded.method == "adapter2"


# ---------------------------------------------------------------------------------------------
# Backbone cache
# ---------------------------------------------------------------------------------------------


def _vqa_setup(root, features_root=None, seed=0, examples=None):
    task = get_task("vqa")
    tok = finetune_model.load_tokenizer(root / "backbone")
    regions = RegionSource((features_root or root / "features") / "coco" / "index.parquet")
    examples = task.read(root / "tasks" / "vqa" / "train.parquet") if examples is None else examples
    state = task.prepare(examples, {"answer_vocab_size": 50})
    s = settings_from_config(TINY, "vqa", method="adapter1")
    torch.manual_seed(seed)
    model = FinetuneModel(CavlModel.from_pretrained(root / "backbone"), task, state, "adapter1", s.adapters)
    chunks = TaskBatches(task, examples, state, regions, tok, s.data, 16, shuffle=False)
    return model, chunks


def _precompute(directory, model, tables, dtype="float32"):
    from cavl.adapters import state_checksum

    model.eval()
    with torch.no_grad():
        return precompute(directory, tables, model.backbone_states, state_checksum(model.backbone), 32,
                          chunk_size=16, dtype=dtype)


def test_cache_holds_the_backbone_states_and_is_reused(root, tmp_path):
    model, chunks = _vqa_setup(root)
    n = len(chunks.items)
    (states,), stats = _precompute(tmp_path / "cache", model, [chunks])
    assert stats == {"sequences": n, "computed": n} and len(states) == n
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cache.json", "rows-0.npy", "states-0.bin"]
    (again,), stats = _precompute(tmp_path / "cache", model, [chunks])
    assert stats == {"sequences": n, "computed": 0}
    for cache in (again, pickle.loads(pickle.dumps(again))):  # DataLoader workers map the files themselves
        chunks.cache = cache
        batch = chunks[1]
        states = batch["backbone_states"].numpy()
        with torch.no_grad():
            live = model.backbone_states(batch).numpy()
        L = batch["input_ids"].shape[1]
        real = np.concatenate([batch["attention_mask"].numpy(), batch["visual_mask"].numpy()], 1).astype(bool)
        np.testing.assert_allclose(states[real], live[real], atol=1e-5)
        assert not states[~real].any() and states.shape == live.shape and L < states.shape[1]
    # the loss on cached states is the loss on live ones (eval mode: the shortcut's dropout off)
    model.eval()
    with_cache = model(batch)["loss"]
    without = model({k: v for k, v in batch.items() if k != "backbone_states"})["loss"]
    assert torch.allclose(with_cache, without, atol=1e-5)
    # a training batch (shuffled) finds its sequences' rows by item position
    train = TaskBatches(chunks.task, chunks.examples, chunks.state, chunks.regions, chunks.tokenizer, chunks.cfg, 8,
                        seed=3, cache=again)
    batch = train[2]
    with torch.no_grad():
        live = model.backbone_states(batch).numpy()
    real = np.concatenate([batch["attention_mask"].numpy(), batch["visual_mask"].numpy()], 1).astype(bool)
    np.testing.assert_allclose(batch["backbone_states"].numpy()[real], live[real], atol=1e-5)
    # without a cache a batch is just its inputs and targets: nothing per sequence is hashed
    chunks.cache = None
    assert "backbone_states" not in chunks[1] and "keys" not in chunks[1]


def test_cache_tables_follow_each_other_and_twins_share_the_first_states(root, tmp_path):
    task = get_task("vqa")
    examples = task.read(root / "tasks" / "vqa" / "train.parquet")
    twin = examples.iloc[[2]].assign(question_id=examples["question_id"].max() + 1)
    model, first = _vqa_setup(root, examples=examples.iloc[:20])
    _, second = _vqa_setup(root, examples=pd.concat([examples.iloc[20:], twin], ignore_index=True))
    (a, b), stats = _precompute(tmp_path / "cache", model, [first, second])
    assert (len(a), len(b)) == (20, len(examples) - 20 + 1) and stats["computed"] == len(examples) + 1
    # one key: both tables recomputed when either changes
    assert _precompute(tmp_path / "cache", model, [first, second])[1]["computed"] == 0
    assert _precompute(tmp_path / "cache", model, [first])[1]["computed"] == 20
    (a, b), _ = _precompute(tmp_path / "cache", model, [first, second])
    start, tl, nr = a.rows[2]
    twin_start, twin_tl, twin_nr = b.rows[len(b) - 1]
    assert (tl, nr) == (twin_tl, twin_nr)  # the same sequence in another chunk: the first's states, bitwise
    assert np.array_equal(a.states[start : start + tl + nr], b.states[twin_start : twin_start + tl + nr])


def test_cache_is_invalidated_by_a_new_backbone_or_changed_features(root, tmp_path):
    model, chunks = _vqa_setup(root)
    n = len(chunks.items)
    (before,), _ = _precompute(tmp_path / "cache", model, [chunks], dtype="float16")
    assert before.states.dtype == np.float16
    assert _precompute(tmp_path / "cache", model, [chunks], dtype="float16")[1]["computed"] == 0
    # another backbone: recomputed
    with torch.no_grad():
        model.backbone.encoder.layers[0].ffn_out.bias.add_(0.1)
    assert _precompute(tmp_path / "cache", model, [chunks], dtype="float16")[1]["computed"] == n
    # new features for one image (shards written again): recomputed; that image's states change
    features = tmp_path / "features"
    index = pd.read_parquet(root / "features" / "coco" / "index.parquet")
    reader = RegionSource(root / "features" / "coco" / "index.parquet").reader
    changed = index["image_id"][0]
    images = {}
    for i in index["image_id"]:
        f, b, num = reader[i]
        images[i] = (np.array(f, np.float32) + (0.5 if i == changed else 0.0), np.array(b), 200, 160, 0)
    write_feature_shards(features, "coco", images)
    model2, chunks2 = _vqa_setup(root, features)
    model2.load_state_dict(model.state_dict())
    (old,), stats = _precompute(tmp_path / "cache", model2, [chunks], dtype="float16")
    assert stats["computed"] == 0
    old = np.array(old.states)
    (new,), stats = _precompute(tmp_path / "cache", model2, [chunks2], dtype="float16")
    assert stats == {"sequences": n, "computed": n}
    rows = np.flatnonzero(chunks2.examples["image_id"].to_numpy() == changed)
    same = [np.array_equal(old[s : s + t + r], new.states[s : s + t + r]) for s, t, r in new.rows]
    assert not any(same[i] for i in rows) and all(same[i] for i in range(n) if i not in set(rows))


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------


def test_a_run_killed_mid_way_resumes_to_the_same_weights(root, tmp_path, monkeypatch):
    config = {"finetune": {**TINY["finetune"], "train": {"log_every": 1, "checkpoint_every": 2, "max_steps": 6}}}
    assert finetune.main(cli(root, "nlvr2", tmp_path / "straight", config=config)) == 0

    original_save = Trainer._save

    def save_then_die(self, step, window):
        original_save(self, step, window)
        if step == 4:
            raise KeyboardInterrupt("killed after the step-4 checkpoint")

    monkeypatch.setattr(Trainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune.main(cli(root, "nlvr2", tmp_path / "killed", config=config))
    assert not (tmp_path / "killed" / "model").exists()
    monkeypatch.setattr(Trainer, "_save", original_save)
    assert finetune.main(cli(root, "nlvr2", tmp_path / "killed", config=config)) == 0

    a = load_file(str(tmp_path / "straight" / "model" / "finetuned.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "finetuned.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the resume came from a checkpoint without the frozen backbone: it holds what trains
    ckpt = torch.load(sorted((tmp_path / "killed" / "checkpoints").glob("step-*.pt"))[-1], weights_only=True)
    model, _ = FinetuneModel.from_finetuned(tmp_path / "killed" / "model", root / "backbone")
    buffers = {name for name, _ in model.named_buffers()}
    assert set(ckpt["model"]) - buffers == set(a)  # the model folder's trainable weights, no more
    assert sum(v.numel() for v in ckpt["model"].values()) < 0.3 * sum(p.numel() for p in model.parameters())
    log = [json.loads(line) for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 4} in [{k: r.get(k) for k in ("event", "step")} for r in log]
    assert [r["step"] for r in log if "lr" in r] == [1, 2, 3, 4, 5, 6]
    # epoch 1 ends at step 5 (21 of 24 statements train, batch 4), max_steps cuts epoch 2 at 6: both select
    assert [r["step"] for r in log if "select_accuracy" in r] == [5, 6]


# ---------------------------------------------------------------------------------------------
# The Snakemake rules
# ---------------------------------------------------------------------------------------------


def test_workflow_rules_finetune_and_evaluate(root, tmp_path):
    work = tmp_path / "work"
    for task in ("nlvr2",):
        shutil.copytree(root / "tasks" / task, work / "resources" / "tasks" / task)
    shutil.copytree(root / "features" / "nlvr2", work / "resources" / "features" / "nlvr2")
    shutil.copytree(root / "backbone", work / "results" / "pretrain" / "model")
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text("".join(f'include: "{REPO}/workflow/rules/{name}.smk"\n'
                                 for name in ("common", "extract", "finetune")))
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(TINY))
    snakemake = os.path.join(os.path.dirname(sys.executable), "snakemake")
    base = [snakemake, "-s", str(snakefile), "--directory", str(work), "--cores", "2"]
    options = ["--allowed-rules", "finetune", "evaluate", "--configfile", str(REPO / "config.yaml"), str(small)]
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run([*base, "results/nlvr2/metrics.json", *options], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((work / "results" / "nlvr2" / "metrics.json").read_text())
    assert set(metrics) == METRICS_KEYS | {"significance"} and metrics["split"] == "dev"
    for path in ("results/nlvr2/model/finetuned.safetensors", "results/nlvr2/predictions.parquet",
                 "results/nlvr2/log.jsonl", "logs/finetune/nlvr2.log", "logs/evaluate/nlvr2.log"):
        assert (work / path).exists(), path
    assert "trainable params:" in (work / "logs" / "finetune" / "nlvr2.log").read_text()
    dry = subprocess.run([*base, "-n", "results/vqa/metrics.json", *options], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)
    # the rules match vqa/vcr; their inputs are absent
    assert dry.returncode != 0 and "MissingInputException" in dry.stderr + dry.stdout, dry.stderr[-3000:]
