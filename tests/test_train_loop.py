"""The loop's bookkeeping on a toy regression: logged values are the window means of the step
losses, the losses are read to the host only when something leaves the loop, and a NaN between
two log steps is reported with its own step while nothing after the last good checkpoint is kept."""

import json

import pytest
import torch
from torch import nn

from cavl.train_loop import DistEnv, NonFiniteLossError, OptimConfig, Trainer, TrainConfig

STEPS_PER_EPOCH = 12


class Toy(nn.Module):
    """A linear regression whose forward records each loss (as the loop sees it) and can poison one call."""

    def __init__(self, poison_call=None):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Linear(2, 1)
        self.calls, self.poison_call, self.seen = 0, poison_call, []

    def forward(self, batch):
        self.calls += 1
        loss = ((self.w(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
        if self.calls == self.poison_call:
            loss = loss * float("nan")
        self.seen.append(loss.detach().clone())
        return {"loss": loss, "toy_loss": loss}


def toy_loader(epoch, start):
    for k in range(start, STEPS_PER_EPOCH):
        x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1000 * epoch + k))
        yield {"x": x, "y": x @ torch.tensor([2.0, -1.0])}


def toy_trainer(work, model, **train):
    return Trainer(model, OptimConfig(name="sgd", lr=0.05),
                   TrainConfig(**{"epochs": 1, "batch_size": 4, "log_every": 3, "checkpoint_every": 6, **train}),
                   DistEnv(), work, "toy", loader_factory=toy_loader, micro_batches_per_epoch=STEPS_PER_EPOCH,
                   samples_per_micro_batch=4, desc="toy")


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_logged_losses_are_the_window_means_of_the_step_losses(tmp_path):
    model = Toy()
    toy_trainer(tmp_path, model, log_every=5).fit()
    steps = [v.item() for v in model.seen]  # float32 values as Python floats, step by step
    rec = [r for r in records(tmp_path / "log.jsonl") if "lr" in r]
    assert [r["step"] for r in rec] == [5, 10, 12]
    for r, window in zip(rec, (steps[0:5], steps[5:10], steps[10:12])):
        total = 0.0
        for v in window:
            total += v
        assert r["toy_loss"] == total / len(window)  # bit for bit: summed in float64 in step order


def test_losses_reach_the_host_only_at_log_and_checkpoint_steps(tmp_path, monkeypatch):
    reads = []
    item, tolist = torch.Tensor.item, torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append("item") or item(self))
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append("tolist") or tolist(self))
    toy_trainer(tmp_path, Toy(), log_every=12, checkpoint_every=12).fit()
    # one NaN check and one reduction at the single log + checkpoint step, not one per step
    assert reads.count("tolist") == 1 and reads.count("item") <= 2, reads


def test_a_nan_between_log_steps_names_its_step_and_keeps_nothing_after_it(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 8 \(epoch 0\): loss=nan, "
                                                 r"toy_loss=nan .*last good checkpoint: step 6 in"):
        toy_trainer(tmp_path, Toy(poison_call=8), log_every=3, checkpoint_every=6).fit()
    assert [r["step"] for r in records(tmp_path / "log.jsonl") if "lr" in r] == [3, 6]
    assert sorted(p.name for p in tmp_path.glob("step-*.json")) == ["step-00000006.json"]
