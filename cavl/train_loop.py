"""Training machinery shared by the pretraining and finetuning stages.

    env = setup_distributed()                       # torchrun → DDP (nccl on GPU, gloo on CPU)
    trainer = Trainer(model, OptimConfig(...), TrainConfig(...), env, work_dir, fingerprint,
                      loader_factory=lambda epoch, start: ..., micro_batches_per_epoch=...,
                      samples_per_micro_batch=...)
    model = trainer.fit()                            # resumes from work_dir if it can
    finalize_log(work_dir, "results/x/log.jsonl", "results/x/curves.png")

The model's forward(batch) returns a dict of named losses with the total under "loss"; every
`*_loss` key is logged. One optimiser step = `grad_accum` micro-batches. Checkpoints are taken
at step boundaries only, so a checkpoint's data position is (epoch, first micro-batch of the
next step) and nothing half-accumulated is ever saved.

Resume: `work_dir` holds `step-XXXXXXXX.pt` (torch.save of tensors, Python scalars and lists
only; loaded with weights_only=True, never unpickled) plus `step-XXXXXXXX.json` (step, data
position, SHA-256 of the .pt, config fingerprint). The .pt holds the trainable parameters and
buffers only: frozen parameters (a finetuning backbone) are rebuilt from their source, which the
fingerprint pins, so each checkpoint is the size of what trains. The .json is written after the .pt, both
atomically, so a checkpoint exists only once both are complete; a checkpoint whose hash or load
fails is skipped with a warning and the previous one is used. The live log
`work_dir/log.jsonl` is cut back to the resumed step (so no step appears twice) and gets a
`{"event": "resume", "step": N}` line; the declared log and the curves PNG are copied/drawn from
it at the end, since Snakemake deletes the declared outputs of a failed job.

Best-epoch selection (finetuning: `select_fn`): at every epoch end reached (and at the last step
when `max_steps` cuts an epoch) `select_fn(model, step)` scores the model on a selection split;
its metrics are logged as `select_*` and the trainable state of the best so far (by
`select_metric`, ties keep the earlier) is written to `best-XXXXXXXX.pt` + `.json` beside the
checkpoints (same format, same atomic order), followed by a checkpoint at that step. Each
checkpoint's .json records the best so far (`selection`), so a resumed run restores it, drops
best files newer than its checkpoint, and sees the same choice as an uninterrupted one; best
files no kept checkpoint refers to are removed. `fit()` ends by loading the best state into the
model and logging a `{"event": "best_epoch", ...}` line.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from cavl.io import atomic_path, file_sha256, write_json_atomic

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    name: str = "sgd"  # sgd: SGD with momentum (the paper) | adamw
    lr: float = 0.02  # peak learning rate, reached at the end of warm-up
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0001  # L2 / decoupled decay; never on biases, LayerNorm or temperature
    betas: list = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    eps: float = 1e-8  # AdamW epsilon
    warmup_fraction: float = 0.15  # linear warm-up over this fraction of the steps, then linear decay to 0
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = no clipping)
    new_lr_scale: float = 1.0  # lr multiplier for the model's `new_parameter_names()` (weights that start from scratch)

    def __post_init__(self):
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.name!r}")
        if self.new_lr_scale <= 0:
            raise ValueError(f"new_lr_scale must be > 0, got {self.new_lr_scale}")


@dataclass
class TrainConfig:
    """Loop length, precision, logging and checkpointing."""

    batch_size: int = 16  # examples per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimiser step
    epochs: int = 2  # passes over the data (ignored when max_steps > 0)
    max_steps: int = 0  # optimiser steps in total; 0 = epochs × steps per epoch
    precision: str = "bf16"  # autocast dtype on GPU: bf16 | fp16 (with a grad scaler) | fp32; CPU runs fp32
    seed: int = 0  # seeds weights init, dropout and the data order
    log_every: int = 5  # optimiser steps between log lines
    checkpoint_every: int = 20  # optimiser steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept (>= 2 so a corrupt newest has a fallback)
    eval_every: int = 0  # optimiser steps between evaluations (0 = only at the end)

    def __post_init__(self):
        if self.precision not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be bf16, fp16 or fp32, got {self.precision!r}")
        for name in ("batch_size", "grad_accum", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the step."""


# ---------------------------------------------------------------------------------------------
# Distributed setup, seeding, RNG state
# ---------------------------------------------------------------------------------------------


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


def setup_distributed(cpu: bool = False) -> DistEnv:
    """DDP under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set), a single process otherwise."""
    cuda = torch.cuda.is_available() and not cpu
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return DistEnv(rank, world, local, device)


def cleanup_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """Python, NumPy and torch (CPU + CUDA) RNG states, as types weights_only loading accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------------


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Trainable parameters only; no weight decay on 0/1-dimensional ones (biases, norms, tau).
    Parameters the model names in `new_parameter_names()` (if it has that method) train at
    `cfg.lr * cfg.new_lr_scale`; the schedule scales every group alike."""
    new = set(model.new_parameter_names()) if hasattr(model, "new_parameter_names") else set()
    buckets = {}  # (decays, new) → parameters, in model order
    for name, p in model.named_parameters():
        if p.requires_grad:
            buckets.setdefault((p.ndim >= 2, name in new), []).append(p)
    groups = [{"params": ps, "weight_decay": cfg.weight_decay if decays else 0.0,
               "lr": cfg.lr * (cfg.new_lr_scale if is_new else 1.0)}
              for (decays, is_new), ps in sorted(buckets.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


class WarmupLinearDecay:
    """LR factor at step s: linear warm-up to 1 over the first `warmup` steps, then linear decay
    towards 0 at `total`. Every step gets a positive rate (warm-up starts at 1/warmup)."""

    def __init__(self, total: int, warmup: int):
        self.total, self.warmup = total, warmup

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        return max(0.0, (self.total - s) / max(1, self.total - self.warmup))


def build_scheduler(optimizer, total_steps: int, warmup_fraction: float):
    warmup = int(math.ceil(warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupLinearDecay(total_steps, warmup))


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


class CheckpointManager:
    """`{prefix}-XXXXXXXX.pt` + `{prefix}-XXXXXXXX.json` pairs in one folder (see the module
    docstring); prefix `step` for checkpoints, `best` for the best-epoch states (keep=0: pruned
    by their owner, not by age)."""

    def __init__(self, directory, keep: int = 2, fingerprint: str = "", prefix: str = "step"):
        self.dir = Path(directory)
        self.keep, self.fingerprint, self.prefix = keep, fingerprint, prefix

    def _json(self, step):
        return self.dir / f"{self.prefix}-{step:08d}.json"

    def _pt(self, step):
        return self.dir / f"{self.prefix}-{step:08d}.pt"

    def steps(self) -> list:
        """Steps with a complete (json-marked) file pair, newest first."""
        out = []
        for p in self.dir.glob(f"{self.prefix}-*.json"):
            try:
                out.append(int(p.stem.split("-")[1]))
            except ValueError:
                continue
        return sorted(out, reverse=True)

    def save(self, step: int, state: dict, meta: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        pt = self._pt(step)
        with atomic_path(pt) as tmp:
            torch.save(state, tmp)
        info = {**meta, "step": step, "file": pt.name, "sha256": file_sha256(pt), "bytes": pt.stat().st_size,
                "fingerprint": self.fingerprint, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json_atomic(info, self._json(step))
        if self.keep:
            self._prune()
        return pt

    def remove(self, step: int):
        self._json(step).unlink(missing_ok=True)  # marker first: never a marker without its file
        self._pt(step).unlink(missing_ok=True)

    def _prune(self):
        for step in self.steps()[self.keep :]:
            self.remove(step)
        self.remove_orphans()

    def remove_orphans(self):
        """Remove .pt files left by a run killed before their marker."""
        complete = {self._pt(s).name for s in self.steps()}
        for pt in self.dir.glob(f"{self.prefix}-*.pt"):
            if pt.name not in complete:
                pt.unlink(missing_ok=True)

    def meta(self, step: int) -> dict:
        return json.loads(self._json(step).read_text())

    def check(self, step: int) -> dict:
        """The meta of the pair at `step` after checking its fingerprint and SHA-256 (ValueError if
        either fails, OSError if a file is missing)."""
        meta = self.meta(step)
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError(f"{self._json(step).name} belongs to another configuration")
        if file_sha256(self._pt(step)) != meta["sha256"]:
            raise ValueError(f"{self._pt(step).name}: SHA-256 mismatch (file changed or truncated)")
        return meta

    def load(self, step: int):
        """(state, meta) of the pair at `step`, checked as by `check`."""
        meta = self.check(step)
        return torch.load(self._pt(step), map_location="cpu", weights_only=True), meta

    def load_latest(self, accept: Callable[[dict], None] | None = None):
        """(state, meta) of the newest readable checkpoint of this config, or None.

        Checkpoints of another config (fingerprint) are deleted with a warning; a checkpoint that
        fails its hash or load, or that `accept(meta)` rejects (ValueError / OSError: e.g. a file
        it refers to is unusable), is skipped with a warning (the previous one is tried)."""
        for tmp in self.dir.glob(f".{self.prefix}-*.tmp"):  # half-written by a killed run
            tmp.unlink(missing_ok=True)
        stale = []
        for step in self.steps():
            try:
                meta = self.meta(step)
                if meta.get("fingerprint") != self.fingerprint:
                    stale.append(step)
                    continue
                state, meta = self.load(step)
                if accept is not None:
                    accept(meta)
                return state, meta
            except (OSError, ValueError, KeyError, RuntimeError, EOFError, json.JSONDecodeError) as e:
                msg = f"checkpoint at step {step} in {self.dir} is unusable ({type(e).__name__}: {e}); falling back to the previous one"
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                log.warning(msg)
        if stale:
            msg = f"removing checkpoints of a different configuration in {self.dir}: steps {sorted(stale)}"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
            for step in stale:
                self.remove(step)
        return None


# ---------------------------------------------------------------------------------------------
# Log
# ---------------------------------------------------------------------------------------------


class TrainLog:
    """Append-only JSON-lines log; lines that do not parse (a write cut by a kill) are dropped."""

    def __init__(self, path):
        self.path = Path(path)

    def records(self) -> list:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def truncate_after(self, step: int):
        keep = [r for r in self.records() if r.get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)

    def append(self, record: dict):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def plot_curves(records: list, png_path):
    """One panel per loss name (train and, where logged, val and select) plus the learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if "event" not in r]
    names = sorted({k.removeprefix("val_").removeprefix("select_") for r in steps for k in r if k.endswith("_loss")})
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for key, style, label in ((name, "-", "train"), (f"val_{name}", "o--", "val"),
                                  (f"select_{name}", "s:", "select")):
            pts = [(r["step"], r[key]) for r in steps if key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=label)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    lr = [(r["step"], r["lr"]) for r in steps if "lr" in r]
    ax = axes[0][-1]
    if lr:
        ax.plot(*zip(*lr))
    ax.set_title("learning rate")
    ax.set_xlabel("step")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def finalize_log(work_dir, log_path, png_path):
    """Copy the live log to the declared log path and draw the curves, both atomically."""
    records = TrainLog(Path(work_dir) / "log.jsonl").records()
    with atomic_path(log_path) as tmp:
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    plot_curves(records, png_path)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _rank(value: float) -> float:
    """A selection metric as compared: NaN ranks below everything."""
    return -math.inf if math.isnan(value) else value


def _to_device(batch: dict, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    """Runs the optimisation of `model` (forward(batch) → dict with "loss" and named *_loss).

    loader_factory(epoch, start) must yield this process's micro-batches start, start+1, …
    of `epoch`, deterministically (see cavl.pretrain_data). eval_fn(model, step) → dict of
    metrics (logged with the step) runs on the main process only with the unwrapped model.
    select_fn(model, step) → dict of metrics, likewise, at every epoch end: the model `fit()`
    returns is the one whose `select_metric` was highest (module docstring).
    """

    def __init__(self, model: nn.Module, optim: OptimConfig, train: TrainConfig, env: DistEnv, work_dir,
                 fingerprint: str, loader_factory: Callable[[int, int], Iterable],
                 micro_batches_per_epoch: int, samples_per_micro_batch: int,
                 eval_fn: Callable[[nn.Module, int], dict] | None = None,
                 find_unused_parameters: bool = False, desc: str = "train",
                 select_fn: Callable[[nn.Module, int], dict] | None = None, select_metric: str = ""):
        self.model, self.ocfg, self.tcfg, self.env = model, optim, train, env
        self.work_dir = Path(work_dir)
        self.loader_factory, self.eval_fn = loader_factory, eval_fn
        if select_fn is not None and not select_metric:
            raise ValueError("select_fn needs the name of the metric it maximises (select_metric)")
        self.select_fn, self.select_metric = select_fn, select_metric
        self.samples_per_micro = samples_per_micro_batch
        self.steps_per_epoch = micro_batches_per_epoch // train.grad_accum
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"one epoch has {micro_batches_per_epoch} micro-batches, fewer than grad_accum="
                f"{train.grad_accum}: use more data, a smaller batch or fewer processes")
        self.total_steps = train.max_steps or train.epochs * self.steps_per_epoch
        self.ckpt = CheckpointManager(self.work_dir, train.keep_checkpoints, fingerprint)
        self.best_store = CheckpointManager(self.work_dir, 0, fingerprint, prefix="best")
        self.best = None  # {"step", "epoch", "value"} of the best selection so far
        self.selection = []  # every selection so far: [{"step", "epoch", "value"}]
        self.live_log = TrainLog(self.work_dir / "log.jsonl")
        self.find_unused = find_unused_parameters
        self.desc = desc
        self.resumed_from = None

    # -- helpers -------------------------------------------------------------------------------

    def _autocast(self):
        cuda = self.env.device.type == "cuda"
        if not cuda or self.tcfg.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.tcfg.precision == "bf16" else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def _gather_objects(self, obj):
        if not self.env.distributed:
            return [obj]
        out = [None] * self.env.world_size
        dist.all_gather_object(out, obj)
        return out

    def _frozen_names(self) -> set:
        return {n for n, p in self.model.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def _trainable_state(self) -> dict:
        frozen = self._frozen_names()  # e.g. a finetuning backbone: rebuilt from its source on resume
        return {k: v for k, v in self.model.state_dict().items() if k not in frozen}

    def _state(self, window):
        per_rank = self._gather_objects({"rng": get_rng_state(), "window": window})
        return {
            "model": self._trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ranks": per_rank,
        }

    def _load_model_state(self, state, meta):
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        missing_trainable = sorted(set(missing) - self._frozen_names())
        if unexpected or missing_trainable:
            raise ValueError(f"checkpoint {meta.get('file')} does not fit the model: missing trainable "
                             f"{missing_trainable[:5]}, unexpected {unexpected[:5]}")

    def _restore(self, state, meta):
        self._load_model_state(state, meta)
        selection = meta.get("selection") or {}
        self.best, self.selection = selection.get("best"), list(selection.get("history", []))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ranks = state["ranks"]
        if len(ranks) == self.env.world_size:
            mine = ranks[self.env.rank]
            set_rng_state(mine["rng"])
            return dict(mine["window"])
        warnings.warn(f"checkpoint was written by {len(ranks)} processes, this run has "
                      f"{self.env.world_size}: RNG streams reseeded, data order re-sharded", RuntimeWarning)
        seed_everything(self.tcfg.seed + self.env.rank + 7919 * meta["step"])
        return {}

    def _resume(self):
        """Load the newest usable checkpoint (the main process chooses; all load it)."""
        found = self.ckpt.load_latest(accept=self._best_usable) if self.env.is_main else None
        step = found[1]["step"] if found else 0
        if self.env.distributed:
            box = [step]
            dist.broadcast_object_list(box, src=0)
            step = box[0]
            if not self.env.is_main and step:
                pt = self.ckpt._pt(step)
                found = (torch.load(pt, map_location="cpu", weights_only=True), json.loads(self.ckpt._json(step).read_text()))
        if not found:
            seed_everything(self.tcfg.seed + self.env.rank)
            if self.env.is_main:
                self.live_log.truncate_after(0)
                self._drop_best_after(0)
            return 0, {}
        state, meta = found
        window = self._restore(state, meta)
        if self.env.is_main:
            self._drop_best_after(step)
        epoch, micro = divmod(step, self.steps_per_epoch)
        position = {"epoch": epoch, "micro_batch": micro * self.tcfg.grad_accum}
        if {k: meta.get(k) for k in position} != position:
            warnings.warn(f"checkpoint data position {meta.get('epoch')}/{meta.get('micro_batch')} differs from "
                          f"the one step {step} implies here {position} (batch size or process count changed?)",
                          RuntimeWarning)
        self.resumed_from = step
        if self.env.is_main:
            self.live_log.truncate_after(step)
            self.live_log.append({"event": "resume", "step": step, "epoch": epoch,
                                  "micro_batch": position["micro_batch"], "checkpoint": meta["file"]})
            print(f"[{self.desc}] resumed from step {step} (epoch {epoch}, micro-batch "
                  f"{position['micro_batch']}) — checkpoint {self.work_dir / meta['file']}", file=sys.stderr, flush=True)
        return step, window

    # -- best-epoch selection ----------------------------------------------------------------------

    def _best_usable(self, meta: dict):
        """load_latest's check of a checkpoint: the best file it refers to must be intact."""
        best = (meta.get("selection") or {}).get("best")
        if self.select_fn is not None and best is not None:
            self.best_store.check(best["step"])

    def _drop_best_after(self, step: int):
        """Remove best files newer than the resumed step (their epochs run again) and unreferenced ones."""
        if self.select_fn is None:
            return
        for tmp in self.work_dir.glob(".best-*.tmp"):  # half-written by a killed run
            tmp.unlink(missing_ok=True)
        for s in self.best_store.steps():
            if s > step:
                self.best_store.remove(s)
        self._prune_best()

    def _prune_best(self):
        """Keep the best file of the current best and those the kept checkpoints refer to."""
        keep = {self.best["step"]} if self.best else set()
        for s in self.ckpt.steps():
            try:
                best = (self.ckpt.meta(s).get("selection") or {}).get("best")
            except (OSError, ValueError):
                continue
            if best:
                keep.add(best["step"])
        for s in self.best_store.steps():
            if s not in keep:
                self.best_store.remove(s)
        self.best_store.remove_orphans()

    def _select(self, step: int):
        """Score the selection split (main process); keep the trainable state if it is the best so far."""
        if self.env.is_main:
            self.model.eval()
            with torch.no_grad(), self._autocast():
                metrics = self.select_fn(self.model, step)
            self.model.train()
            if self.select_metric not in metrics:
                raise KeyError(f"the selection metrics {sorted(metrics)} lack {self.select_metric!r}")
            epoch = round(step / self.steps_per_epoch, 4)
            self.live_log.append({"step": step, "epoch": epoch, **{f"select_{k}": v for k, v in metrics.items()}})
            record = {"step": step, "epoch": epoch, "value": float(metrics[self.select_metric])}
            self.selection.append(record)
            better = self.best is None or _rank(record["value"]) > _rank(self.best["value"])  # a tie keeps the earlier
            if better:
                self.best_store.save(step, {"model": self._trainable_state()},
                                     {"epoch": epoch, "metric": self.select_metric, "value": record["value"]})
                self.best = record
                self._prune_best()
            print(f"[{self.desc}] step {step} (epoch {epoch:g}) selection: "
                  + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                  + (" — best so far" if better else f" — best stays epoch {self.best['epoch']:g}"),
                  file=sys.stderr, flush=True)
        if self.env.distributed:
            dist.barrier()

    def _load_best(self):
        """Load the best selection's trainable state into the model and log the choice."""
        if self.env.distributed:
            box = [self.best]
            dist.broadcast_object_list(box, src=0)
            self.best = box[0]
        if self.best is None:  # no step taken at all: nothing was selected
            return
        state, meta = self.best_store.load(self.best["step"])
        self._load_model_state(state, meta)
        if self.env.is_main:
            event = {"event": "best_epoch", "step": self.total_steps, "best_step": self.best["step"],
                     "epoch": self.best["epoch"], "metric": f"select_{self.select_metric}",
                     "value": self.best["value"]}
            if event not in self.live_log.records():  # a finished run started again logs it once
                self.live_log.append(event)
            print(f"[{self.desc}] keeping epoch {self.best['epoch']:g} (step {self.best['step']}): "
                  f"select_{self.select_metric}={self.best['value']:.4g}", file=sys.stderr, flush=True)

    def _reduce(self, window: dict) -> dict:
        """Window means over steps (and over processes under DDP)."""
        names = sorted(k for k in window if k not in ("steps", "samples"))
        vals = torch.tensor([window[k] for k in names] + [window.get("steps", 0)], dtype=torch.float64,
                            device=self.env.device)
        if self.env.distributed:
            dist.all_reduce(vals)
            vals /= self.env.world_size
        n = max(vals[-1].item(), 1.0)
        return {k: vals[i].item() / n for i, k in enumerate(names)}

    def _save(self, step, window):
        state = self._state(window)
        if self.env.is_main:
            epoch, micro = divmod(step, self.steps_per_epoch)
            meta = {"epoch": epoch, "micro_batch": micro * self.tcfg.grad_accum,
                    "world_size": self.env.world_size, "total_steps": self.total_steps}
            if self.select_fn is not None:
                meta["selection"] = {"metric": self.select_metric, "best": self.best, "history": self.selection}
            self.ckpt.save(step, state, meta)
            if self.select_fn is not None:
                self._prune_best()
        if self.env.distributed:
            dist.barrier()

    def _evaluate(self, step):
        if self.eval_fn is None:
            return
        if self.env.is_main:
            self.model.eval()
            with torch.no_grad(), self._autocast():
                metrics = self.eval_fn(self.model, step)
            self.model.train()
            self.live_log.append({"step": step, "epoch": step / self.steps_per_epoch, **metrics})
            print(f"[{self.desc}] step {step} eval: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                  file=sys.stderr, flush=True)
        if self.env.distributed:
            dist.barrier()

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> nn.Module:
        from tqdm.auto import tqdm

        env, tcfg = self.env, self.tcfg
        self.model.to(env.device)
        net = self.model
        if env.distributed:
            net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[env.local_rank] if env.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused)
        self.optimizer = build_optimizer(self.model, self.ocfg)
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, self.ocfg.warmup_fraction)
        fp16 = env.device.type == "cuda" and tcfg.precision == "fp16"
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        if env.device.type != "cuda" and tcfg.precision != "fp32" and env.is_main:
            log.info("running on CPU: precision %s ignored, training in fp32", tcfg.precision)

        step, window = self._resume()
        params = [p for p in self.model.parameters() if p.requires_grad]
        bar = tqdm(total=self.total_steps, initial=step, desc=self.desc, disable=not env.is_main,
                   file=sys.stderr, dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
        t0 = time.perf_counter()
        accum = tcfg.grad_accum
        self.model.train()
        while step < self.total_steps:
            epoch, first = divmod(step, self.steps_per_epoch)
            batches = iter(self.loader_factory(epoch, first * accum))
            for _ in range(first, self.steps_per_epoch):
                if step >= self.total_steps:
                    break
                lr = self.scheduler.get_last_lr()[0]
                sums = {}
                for a in range(accum):
                    batch = _to_device(next(batches), env.device)
                    sync = net.no_sync() if env.distributed and a < accum - 1 else nullcontext()
                    with sync:
                        with self._autocast():
                            out = net(batch)
                        self.scaler.scale(out["loss"] / accum).backward()
                    for k, v in out.items():
                        if k.endswith("loss"):
                            sums[k] = sums.get(k, 0.0) + v.detach().float() / accum
                self._check_finite(sums, step + 1, epoch)
                if self.ocfg.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(params, self.ocfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                step += 1
                bar.update(1)

                for k, v in sums.items():
                    window[k] = window.get(k, 0.0) + v.item()
                window["steps"] = window.get("steps", 0) + 1
                window["samples"] = window.get("samples", 0) + self.samples_per_micro * accum
                if step % tcfg.log_every == 0 or step == self.total_steps:
                    means = self._reduce(window)
                    dt = time.perf_counter() - t0
                    rec = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "lr": lr, **means,
                           "samples_per_s": round(window["samples"] * env.world_size / max(dt, 1e-9), 2)}
                    if env.is_main:
                        self.live_log.append(rec)
                        bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()}, refresh=False)
                    window, t0 = {}, time.perf_counter()
                if (tcfg.eval_every and step % tcfg.eval_every == 0) or step == self.total_steps:
                    self._evaluate(step)
                selected = self.select_fn is not None and (step % self.steps_per_epoch == 0
                                                           or step == self.total_steps)
                if selected:
                    self._select(step)  # then a checkpoint, so a resumed run never selects this epoch again
                if step % tcfg.checkpoint_every == 0 or step == self.total_steps or selected:
                    self._save(step, window)
        bar.close()
        if self.select_fn is not None:
            self._load_best()
        return self.model

    def _check_finite(self, sums: dict, step: int, epoch: int):
        vals = torch.stack([v.reshape(()) for v in sums.values()])
        bad = (~torch.isfinite(vals)).any().float()
        if self.env.distributed:
            dist.all_reduce(bad)
        if bad.item() > 0:
            newest = self.ckpt.steps()
            last = f"step {newest[0]} in {self.work_dir}" if newest else "none yet"
            shown = ", ".join(f"{k}={v.item():.4g}" for k, v in sums.items())
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (epoch {epoch}): {shown} (on some process). "
                f"Training stopped; last good checkpoint: {last}.")
