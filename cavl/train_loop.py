"""The training loop shared by the pretraining and finetuning stages.

    env = setup_distributed()                       # torchrun → DDP (nccl on GPU, gloo on CPU)
    trainer = Trainer(model, optim, train, env, work_dir, fingerprint, loader_factory=...,
                      micro_batches_per_epoch=..., samples_per_micro_batch=...)
    model = trainer.fit()                            # resumes from work_dir if it can

model(batch) returns named losses with the total under "loss"; every `*_loss` key is logged.
One optimiser step = `grad_accum` micro-batches. Losses stay on the device (detached, summed in
float64) until something leaves the loop (log record, evaluation, selection, checkpoint); only
then are they reduced, read to the host and checked for NaN/inf (`NonFiniteLossError`).

Checkpoints (cavl.checkpoints) are taken at step boundaries only and hold the trainable state
(frozen parameters are rebuilt from their source, which the fingerprint pins), optimiser,
schedule, grad-scaler, and each process's RNG states and unlogged loss window. On resume the live
log `work_dir/log.jsonl` is cut back to the step and gets a `{"event": "resume"}` line.

Best-epoch selection (`select_fn`, finetuning): at every epoch end (and the last step) the model
is scored; the best trainable state so far (ties keep the earlier) is written to `best-*.pt/.json`,
then a checkpoint whose meta records the selection, so a resumed run makes the same choice.
`fit()` ends by loading the best state and logging a `{"event": "best_epoch"}` line.
"""

from __future__ import annotations

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

from cavl.checkpoints import (CheckpointManager, drop_best_after, get_rng_state, prune_best_files,
                              set_rng_state)
from cavl.settings import OptimConfig, TrainConfig  # noqa: F401  (the loop's configs: pretrain.optim / .train's dataclasses)
from cavl.training_log import TrainLog

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN or infinite; the message names the step."""


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
    """LR factor at step s: linear warm-up (s+1)/warmup, then linear decay towards 0 at `total`.

    Unlike transformers' schedule (s/warmup) step 0 does not train at lr 0; torch's LinearLR +
    SequentialLR differ from this closed form in the last bits."""

    def __init__(self, total: int, warmup: int):
        self.total, self.warmup = total, warmup

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        return max(0.0, (self.total - s) / max(1, self.total - self.warmup))


def build_scheduler(optimizer, total_steps: int, warmup_fraction: float):
    warmup = int(math.ceil(warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupLinearDecay(total_steps, warmup))


def _rank(value: float) -> float:
    """A selection metric as compared: NaN ranks below everything."""
    return -math.inf if math.isnan(value) else value


def _to_device(batch: dict, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Trainer:
    """Runs the optimisation of `model` (forward(batch) → dict with "loss" and named *_loss).

    loader_factory(epoch, start) yields this process's micro-batches start, start+1, … of `epoch`
    deterministically. eval_fn / select_fn(model, step) → metrics run on the main process only
    with the unwrapped model; select_fn at every epoch end (module docstring)."""

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
        window = {k: v.item() if torch.is_tensor(v) else v for k, v in window.items()}  # Python floats on disk
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
                found = self.ckpt.read(step)  # the main process checked it
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

    def _best_usable(self, meta: dict):
        """load_latest's check: the best file a checkpoint refers to must be intact."""
        best = (meta.get("selection") or {}).get("best")
        if self.select_fn is not None and best is not None:
            self.best_store.check(best["step"])

    def _drop_best_after(self, step: int):
        if self.select_fn is not None:
            drop_best_after(self.best_store, self.ckpt, step, self.best)

    def _score(self, fn, step):
        """fn(model, step) in eval mode, without gradients (main process)."""
        self.model.eval()
        with torch.no_grad(), self._autocast():
            metrics = fn(self.model, step)
        self.model.train()
        return metrics

    def _select(self, step: int):
        """Score the selection split (main process); keep the trainable state if it is the best so far."""
        if self.env.is_main:
            metrics = self._score(self.select_fn, step)
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
                prune_best_files(self.best_store, self.ckpt, self.best)
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
        """Window means over steps (and over processes under DDP): the loop's one host read of the
        losses per log record. Window sums are float64 device tensors (Python floats after a resume)."""
        names = sorted(k for k in window if k not in ("steps", "samples"))
        device = self.env.device
        vals = torch.stack([torch.as_tensor(window[k], dtype=torch.float64, device=device).reshape(()) for k in names]
                           + [torch.tensor(float(window.get("steps", 0)), dtype=torch.float64, device=device)])
        if self.env.distributed:
            dist.all_reduce(vals)
            vals /= self.env.world_size
        host = vals.tolist()
        n = max(host[-1], 1.0)
        return {k: host[i] / n for i, k in enumerate(names)}

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
                prune_best_files(self.best_store, self.ckpt, self.best)
        if self.env.distributed:
            dist.barrier()

    def _evaluate(self, step):
        if self.eval_fn is None:
            return
        if self.env.is_main:
            metrics = self._score(self.eval_fn, step)
            self.live_log.append({"step": step, "epoch": step / self.steps_per_epoch, **metrics})
            print(f"[{self.desc}] step {step} eval: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                  file=sys.stderr, flush=True)
        if self.env.distributed:
            dist.barrier()

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
        pending = []  # (step, epoch, losses) of the steps not yet checked for NaN/inf
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
                if self.ocfg.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(params, self.ocfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                step += 1
                bar.update(1)

                pending.append((step, epoch, sums))
                for k, v in sums.items():
                    window[k] = window.get(k, 0.0) + v.double()  # on the device, summed as the host would
                window["steps"] = window.get("steps", 0) + 1
                window["samples"] = window.get("samples", 0) + self.samples_per_micro * accum
                log_now = step % tcfg.log_every == 0 or step == self.total_steps
                eval_now = (tcfg.eval_every and step % tcfg.eval_every == 0) or step == self.total_steps
                selected = self.select_fn is not None and (step % self.steps_per_epoch == 0
                                                           or step == self.total_steps)
                save_now = step % tcfg.checkpoint_every == 0 or step == self.total_steps or selected
                if log_now or save_now or (eval_now and self.eval_fn is not None):
                    self._check_finite(pending)  # before anything of these steps leaves the loop
                    pending = []
                if log_now:
                    means = self._reduce(window)
                    dt = time.perf_counter() - t0
                    rec = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "lr": lr, **means,
                           "samples_per_s": round(window["samples"] * env.world_size / max(dt, 1e-9), 2)}
                    if env.is_main:
                        self.live_log.append(rec)
                        bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()}, refresh=False)
                    window, t0 = {}, time.perf_counter()
                if eval_now:
                    self._evaluate(step)
                if selected:
                    self._select(step)  # then a checkpoint, so a resumed run never selects this epoch again
                if save_now:
                    self._save(step, window)
        bar.close()
        if self.select_fn is not None:
            self._load_best()
        return self.model

    def _check_finite(self, pending: list):
        """Raise NonFiniteLossError naming the first of the `pending` (step, epoch, losses) whose
        losses were not all finite on some process: one host read (and one all-reduce) for all."""
        if not pending:
            return
        finite = torch.stack([torch.isfinite(torch.stack([v.reshape(()) for v in sums.values()])).all()
                              for _, _, sums in pending])  # (n,)
        order = torch.arange(len(pending), device=finite.device)
        first = torch.where(finite, len(pending), order).min().reshape(1)  # n: all finite
        if self.env.distributed:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        bad = int(first.item())
        if bad < len(pending):
            step, epoch, sums = pending[bad]
            newest = self.ckpt.steps()
            last = f"step {newest[0]} in {self.work_dir}" if newest else "none yet"
            shown = ", ".join(f"{k}={v.item():.4g}" for k, v in sums.items())
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (epoch {epoch}): {shown} (on some process). "
                f"Training stopped; last good checkpoint: {last}.")
