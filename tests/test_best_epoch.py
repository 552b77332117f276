"""Best-epoch selection: the finetuned model is the epoch that scored best on a selection split
(never the eval split), chosen the same way after a kill and resume; held-out selection images
never train. The loop on a toy model with scripted scores, then the finetune CLI end to end."""

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from cavl import evaluate, finetune, finetune_model
from cavl.finetune_model import hold_out_images, image_groups, settings_from_config
from cavl.tasks import get_task
from cavl.train_loop import DistEnv, OptimConfig, Trainer, TrainConfig

# ---------------------------------------------------------------------------------------------
# The loop: a toy regression, three steps per epoch, a scripted selection score per step
# ---------------------------------------------------------------------------------------------

STEPS_PER_EPOCH = 3
SCORES = {3: 1.0, 6: 3.0, 9: 3.0, 12: 2.0}  # epoch 2 is best; epoch 3 ties it (the earlier stays); 4 is last


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Linear(2, 1)

    def forward(self, batch):
        loss = ((self.w(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
        return {"loss": loss, "toy_loss": loss}


def toy_loader(epoch, start):
    for k in range(start, STEPS_PER_EPOCH):
        x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1000 * epoch + k))
        yield {"x": x, "y": x @ torch.tensor([2.0, -1.0])}


def toy_trainer(work, scores=SCORES, seen=None, **train):
    def select_fn(model, step):
        if seen is not None:
            seen[step] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"toy_loss": 0.0, "score": scores[step]}

    return Trainer(Toy(), OptimConfig(name="sgd", lr=0.05), TrainConfig(**{"epochs": 4, "batch_size": 4, "log_every": 1,
                                                                            "checkpoint_every": 2, **train}),
                   DistEnv(), work, "toy", loader_factory=toy_loader, micro_batches_per_epoch=STEPS_PER_EPOCH,
                   samples_per_micro_batch=4, select_fn=select_fn, select_metric="score", desc="toy")


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_best_epoch_is_kept_not_the_last(tmp_path):
    seen = {}
    trainer = toy_trainer(tmp_path, seen=seen)
    model = trainer.fit()
    assert trainer.best == {"step": 6, "epoch": 2.0, "value": 3.0}  # the tie at epoch 3 keeps epoch 2
    assert same_weights(model.state_dict(), seen[6]) and not same_weights(model.state_dict(), seen[12])
    assert [h["step"] for h in trainer.selection] == [3, 6, 9, 12]
    log = records(tmp_path / "log.jsonl")
    assert [(r["step"], r["select_score"]) for r in log if "select_score" in r] == sorted(SCORES.items())
    assert [r for r in log if r.get("event") == "best_epoch"] == [
        {"event": "best_epoch", "step": 12, "best_step": 6, "epoch": 2.0, "metric": "select_score", "value": 3.0}]
    # on disk: the best state beside the checkpoints; each checkpoint records the best so far
    assert sorted(p.name for p in tmp_path.glob("best-*")) == ["best-00000006.json", "best-00000006.pt"]
    meta = json.loads((tmp_path / "step-00000012.json").read_text())
    assert meta["selection"]["best"] == trainer.best and len(meta["selection"]["history"]) == 4
    best = torch.load(tmp_path / "best-00000006.pt", weights_only=True)["model"]
    assert same_weights(best, seen[6])
    # a finished run started again resumes at its end, keeps the same epoch and logs it once
    again = toy_trainer(tmp_path)
    assert same_weights(again.fit().state_dict(), seen[6]) and again.resumed_from == 12 and again.best == trainer.best
    assert len([r for r in records(tmp_path / "log.jsonl") if r.get("event") == "best_epoch"]) == 1


def test_max_steps_cutting_an_epoch_selects_at_its_end_too(tmp_path):
    trainer = toy_trainer(tmp_path, scores={3: 1.0, 6: 2.0, 7: 5.0}, max_steps=7)
    trainer.fit()
    assert [h["step"] for h in trainer.selection] == [3, 6, 7]
    assert trainer.best == {"step": 7, "epoch": round(7 / 3, 4), "value": 5.0}


@pytest.mark.parametrize("kill_at", [6, 8, 12])
def test_a_resumed_run_keeps_the_same_best_epoch(tmp_path, monkeypatch, kill_at):
    """Killed after epoch 2's best file but before its checkpoint (6), after a later checkpoint
    (8), or at the very end (12, before the last checkpoint): the resumed run chooses epoch 2 with
    the same weights as an uninterrupted one."""
    straight = toy_trainer(tmp_path / "straight")
    reference = straight.fit().state_dict()

    original = Trainer._save

    def die_at(self, step, window):
        if step == kill_at and kill_at != 8:
            raise KeyboardInterrupt(f"killed before the step-{step} checkpoint")
        original(self, step, window)
        if step == kill_at:
            raise KeyboardInterrupt(f"killed after the step-{step} checkpoint")

    monkeypatch.setattr(Trainer, "_save", die_at)
    with pytest.raises(KeyboardInterrupt):
        toy_trainer(tmp_path / "killed").fit()
    assert (tmp_path / "killed" / "best-00000006.json").exists()
    monkeypatch.setattr(Trainer, "_save", original)
    resumed = toy_trainer(tmp_path / "killed")
    model = resumed.fit()
    assert resumed.resumed_from is not None
    assert resumed.best == straight.best == {"step": 6, "epoch": 2.0, "value": 3.0}
    assert resumed.selection == straight.selection
    assert same_weights(model.state_dict(), reference)
    log = records(tmp_path / "killed" / "log.jsonl")
    assert [r["step"] for r in log if "select_score" in r] == [3, 6, 9, 12]  # each epoch selected once
    assert [r["best_step"] for r in log if r.get("event") == "best_epoch"] == [6]
    assert sorted(p.name for p in (tmp_path / "killed").glob("best-*")) == ["best-00000006.json", "best-00000006.pt"]


def test_the_best_so_far_comes_from_the_resumed_checkpoint_not_the_newest_best_file(tmp_path, monkeypatch):
    """A best file written after the resumed checkpoint belongs to an epoch that runs again: if
    that epoch scores differently this time (GPU non-determinism), the new score counts."""
    original = Trainer._save

    def die_before_6(self, step, window):
        if step == 6:
            raise KeyboardInterrupt
        original(self, step, window)

    monkeypatch.setattr(Trainer, "_save", die_before_6)
    with pytest.raises(KeyboardInterrupt):
        toy_trainer(tmp_path).fit()  # epoch 2 scored 3.0 and wrote best-00000006 before the kill
    monkeypatch.setattr(Trainer, "_save", original)
    seen = {}
    resumed = toy_trainer(tmp_path, scores={**SCORES, 6: 0.5}, seen=seen)
    model = resumed.fit()
    assert resumed.resumed_from == 4 and resumed.best == {"step": 9, "epoch": 3.0, "value": 3.0}
    assert same_weights(model.state_dict(), seen[9])
    assert sorted(p.name for p in tmp_path.glob("best-*")) == ["best-00000009.json", "best-00000009.pt"]


def test_a_corrupt_best_file_makes_its_checkpoints_unusable(tmp_path, monkeypatch):
    straight = toy_trainer(tmp_path / "straight")
    reference = straight.fit().state_dict()
    original = Trainer._save

    def die_after_8(self, step, window):
        original(self, step, window)
        if step == 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save", die_after_8)
    with pytest.raises(KeyboardInterrupt):
        toy_trainer(tmp_path / "killed").fit()
    monkeypatch.setattr(Trainer, "_save", original)
    pt = tmp_path / "killed" / "best-00000006.pt"
    pt.write_bytes(pt.read_bytes()[:-8])  # truncated: both kept checkpoints (6, 8) refer to it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = toy_trainer(tmp_path / "killed")
        model = resumed.fit()
    assert any("unusable" in str(w.message) for w in caught)
    assert resumed.resumed_from is None  # no usable checkpoint: trained again from the start
    assert resumed.best == straight.best and same_weights(model.state_dict(), reference)


# ---------------------------------------------------------------------------------------------
# Settings: the selection split is never the eval split
# ---------------------------------------------------------------------------------------------


def test_select_split_equal_to_eval_split_is_rejected_naming_the_key():
    with pytest.raises(ValueError, match=r"finetune\.tasks\.rpg\.select_split = 'test' is the split evaluated"):
        settings_from_config({"finetune": {"tasks": {"rpg": {"select_split": "test"}}}}, "rpg")
    with pytest.raises(ValueError, match=r"finetune\.tasks\.vqa\.select_split = 'val' is the split evaluated"):
        settings_from_config({"finetune": {"tasks": {"vqa": {"select_split": "val"}}}}, "vqa")
    with pytest.raises(ValueError, match=r"finetune\.tasks\.tir\.select_split"):  # eval moved onto the default val
        settings_from_config({"finetune": {"tasks": {"tir": {"eval_split": "val"}}}}, "tir")
    with pytest.raises(ValueError, match=r"finetune\.tasks\.nlvr2\.select_split = 'train' is the split trained on"):
        settings_from_config({"finetune": {"tasks": {"nlvr2": {"select_split": "train"}}}}, "nlvr2")
    minival = {"finetune": {"tasks": {"vqa": {"select_split": "minival"}}}}
    assert settings_from_config(minival, "vqa").select_split == "minival"
    with pytest.raises(ValueError, match=r"finetune\.select_fraction"):  # the schema's bounds
        settings_from_config({"finetune": {"select_fraction": 1.0}}, "vqa")


# ---------------------------------------------------------------------------------------------
# Held-out selection images
# ---------------------------------------------------------------------------------------------


def test_held_out_selection_images_are_disjoint_from_training_images():
    vqa = get_task("vqa")
    rng = np.random.default_rng(0)
    examples = pd.DataFrame({"question_id": range(300), "image_id": [str(i) for i in rng.integers(0, 100, 300)]})
    train, held = hold_out_images(vqa, examples, 0.1, seed=0)
    assert len(train) + len(held) == len(examples) and len(held) > 0
    assert not set(train["image_id"]) & set(held["image_id"])
    assert held["image_id"].nunique() == round(0.1 * examples["image_id"].nunique())
    # the choice depends on the seed and the image ids, not on the row order
    shuffled = examples.sample(frac=1.0, random_state=1)
    assert set(hold_out_images(vqa, shuffled, 0.1, seed=0)[1]["question_id"]) == set(held["question_id"])
    assert set(hold_out_images(vqa, examples, 0.1, seed=1)[1]["image_id"]) != set(held["image_id"])

    # nlvr2: an example shows two images, and images recur across examples: whole groups move
    nlvr2 = get_task("nlvr2")
    pairs = [(f"a{k}", f"b{k}") for k in range(30)] + [(f"b{k}", f"a{k + 1}") for k in range(0, 30, 3)]
    examples = pd.DataFrame({"identifier": range(len(pairs)), "left_image_id": [p[0] for p in pairs],
                             "right_image_id": [p[1] for p in pairs]})
    train, held = hold_out_images(nlvr2, examples, 0.2, seed=0)
    images = lambda df: set(df["left_image_id"]) | set(df["right_image_id"])  # noqa: E731
    assert len(held) > 0 and len(train) > 0 and not images(train) & images(held)
    groups = image_groups(nlvr2, examples)
    assert len(set(groups)) == 20  # a0-b0-a1-b1-a2, ...: chains of the recurring images
    with pytest.raises(ValueError, match="select_split"):
        hold_out_images(vqa, pd.DataFrame({"image_id": ["1", "1"]}), 0.1, seed=0)


# ---------------------------------------------------------------------------------------------
# The finetune CLI end to end
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from cavl.testing import write_synthetic_flickr30k, write_synthetic_tasks, write_tiny_backbone, write_tiny_pretrained

    root = write_synthetic_tasks(tmp_path_factory.mktemp("best"))
    write_tiny_backbone(root / "backbone")
    flickr = write_synthetic_flickr30k(tmp_path_factory.mktemp("flickr"))
    write_tiny_pretrained(flickr / "backbone")
    return root, flickr


SMALL = {"threads": 1, "eval_batch_size": 8, "cache": {"dtype": "float32"},
         "adapters": {"bottleneck": 4, "shortcut_layers": 1, "shortcut_width": 16, "shortcut_heads": 2},
         "train": {"log_every": 1, "checkpoint_every": 50}}


def run_args(root, task, out, config, dataset, extra=()):
    return ["--task", task, "--config", json.dumps({"finetune": config}), "--cpu", "--backbone", str(root / "backbone"),
            "--train", str(root / "tasks" / task / "train.parquet"),
            "--features", str(root / "features" / dataset / "index.parquet"),
            "--out", str(out / "model"), "--train-log", str(out / "log.jsonl"), "--curves", str(out / "curves.png"),
            "--checkpoints", str(out / "checkpoints"), "--cache", str(out / "cache"), *extra]


def test_finetune_saves_the_best_epoch_of_held_out_train_images(synthetic, tmp_path, monkeypatch):
    root, _ = synthetic
    real = finetune_model.make_select_fn
    scripted = iter([10.0, 30.0, 20.0])  # epoch 2 best, epoch 3 worse

    def make_select_fn(*args, **kwargs):
        select = real(*args, **kwargs)
        return lambda model, step: {**select(model, step), "accuracy": next(scripted)}

    monkeypatch.setattr(finetune_model, "make_select_fn", make_select_fn)
    config = {**SMALL, "tasks": {"vqa": {"epochs": 3, "batch_size": 8, "max_text_len": 12, "max_regions": 6,
                                         "answer_vocab_size": 50}}}
    out = tmp_path / "vqa"
    assert finetune.main(run_args(root, "vqa", out, config, "coco")) == 0
    # 24 train images x 3 questions: 2 images (10 %) and their 6 questions held out; 66 train, 8 steps per epoch
    saved_config = json.loads((out / "model" / "finetune_config.json").read_text())
    selection = saved_config["selection"]
    assert {k: selection[k] for k in ("split", "held_out_fraction", "seed", "examples", "metric", "epoch", "step",
                                       "value")} == {"split": "train", "held_out_fraction": 0.1, "seed": 0,
                                                     "examples": 6, "metric": "accuracy", "epoch": 2.0, "step": 16,
                                                     "value": 30.0}
    assert [(h["step"], h["value"]) for h in selection["history"]] == [(8, 10.0), (16, 30.0), (24, 20.0)]
    assert saved_config["settings"]["select_split"] is None
    log = records(out / "log.jsonl")
    selects = [r for r in log if "select_accuracy" in r]
    assert [r["step"] for r in selects] == [8, 16, 24] and all("select_vqa_loss" in r for r in selects)
    assert [(r["best_step"], r["epoch"]) for r in log if r.get("event") == "best_epoch"] == [(16, 2.0)]
    # the saved weights are epoch 2's (its best file), not the last checkpoint's
    saved = load_file(str(out / "model" / "finetuned.safetensors"))
    best = torch.load(out / "checkpoints" / "best-00000016.pt", weights_only=True)["model"]
    last = torch.load(out / "checkpoints" / "step-00000024.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], best[k]) for k in saved)
    assert not all(torch.equal(saved[k], last[k]) for k in saved)
    # evaluate scores the saved model as before
    assert evaluate.main(["--task", "vqa", "--model", str(out / "model"), "--cpu",
                          "--eval", str(root / "tasks/vqa/val.parquet"),
                          "--train", str(root / "tasks/vqa/train.parquet"),
                          "--features", str(root / "features/coco/index.parquet"),
                          "--metrics", str(out / "metrics.json"), "--predictions", str(out / "p.parquet")]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["select_fraction"] == 0.1


def test_finetune_selects_on_a_named_split_and_evaluate_refuses_it(synthetic, tmp_path):
    _, flickr = synthetic
    config = {**SMALL, "tasks": {"rpg": {"method": "linear", "epochs": 2, "batch_size": 8, "max_text_len": 24,
                                         "max_regions": 8}}}
    out = tmp_path / "rpg"
    val = flickr / "tasks" / "rpg" / "val.parquet"
    assert finetune.main(run_args(flickr, "rpg", out, config, "flickr30k", ["--select", str(val)])) == 0
    selection = json.loads((out / "model" / "finetune_config.json").read_text())["selection"]
    assert selection["split"] == "val" and selection["held_out_fraction"] is None and selection["metric"] == "r@1"
    assert selection["examples"] == len(pd.read_parquet(val)) and len(selection["history"]) == 2
    steps = [h["step"] for h in selection["history"]]
    assert [r["step"] for r in records(out / "log.jsonl") if "select_r@1" in r] == steps
    feats = str(flickr / "features/flickr30k/index.parquet")
    common = ["--task", "rpg", "--model", str(out / "model"), "--cpu", "--features", feats,
              "--train", str(flickr / "tasks/rpg/train.parquet"), "--metrics", str(out / "metrics.json"),
              "--predictions", str(out / "p.parquet")]
    with pytest.raises(ValueError, match="select_split"):
        evaluate.main([*common, "--eval", str(val)])
    assert evaluate.main([*common, "--eval", str(flickr / "tasks/rpg/test.parquet")]) == 0
    # --select without a select_split, and a selection table that is the eval table, are refused
    null = {**config, "tasks": {"rpg": {**config["tasks"]["rpg"], "select_split": None}}}
    with pytest.raises(ValueError, match=r"--select .* finetune\.tasks\.rpg\.select_split is null"):
        finetune.main(run_args(flickr, "rpg", tmp_path / "x", null, "flickr30k", ["--select", str(val)]))
    test = flickr / "tasks" / "rpg" / "test.parquet"
    with pytest.raises(ValueError, match=r"is the eval split's table"):
        finetune.main(run_args(flickr, "rpg", tmp_path / "y", config, "flickr30k", ["--select", str(test)]))
    shutil.rmtree(tmp_path / "y", ignore_errors=True)
