"""Training checkpoints on disk: file pairs, integrity checks, fallback, RNG states.

A checkpoint is `{prefix}-XXXXXXXX.pt` (torch.save of tensors and Python scalars/lists, loaded
with weights_only=True) plus `{prefix}-XXXXXXXX.json` (step, the caller's meta, SHA-256 and size
of the .pt, config fingerprint, time), written after the .pt, both atomically: a pair exists only
once complete. Prefix `step`: training checkpoints; `best`: finetuning's best-epoch states, which
the checkpoints' metas refer to (`meta["selection"]["best"]`).
"""

from __future__ import annotations

import json
import logging
import random
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cavl.io import atomic_path, file_sha256, write_json_atomic

log = logging.getLogger(__name__)


class CheckpointManager:
    """`{prefix}-XXXXXXXX.pt` + `{prefix}-XXXXXXXX.json` pairs in one folder (module docstring);
    the `keep` newest are kept (keep=0: pruned by their owner, not by age)."""

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

    def remove_temporaries(self):
        """Remove the hidden temp files of writes cut by a killed run."""
        for tmp in self.dir.glob(f".{self.prefix}-*.tmp"):
            tmp.unlink(missing_ok=True)

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

    def read(self, step: int):
        """(state, meta) of the pair at `step` without the checks (another process made them)."""
        return torch.load(self._pt(step), map_location="cpu", weights_only=True), self.meta(step)

    def load_latest(self, accept: Callable[[dict], None] | None = None):
        """(state, meta) of the newest readable checkpoint of this config, or None. Checkpoints of
        another fingerprint are deleted; one that fails its hash, load or `accept(meta)` (raising
        ValueError / OSError) is skipped with a warning and the previous one tried."""
        self.remove_temporaries()
        stale = []
        for step in self.steps():
            try:
                if self.meta(step).get("fingerprint") != self.fingerprint:
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


def prune_best_files(best: CheckpointManager, checkpoints: CheckpointManager, current: dict | None):
    """Keep the best file of the `current` best ({"step", ...} or None) and those the kept
    checkpoints refer to; remove the others and orphaned .pt files."""
    keep = {current["step"]} if current else set()
    for s in checkpoints.steps():
        try:
            ref = (checkpoints.meta(s).get("selection") or {}).get("best")
        except (OSError, ValueError):
            continue
        if ref:
            keep.add(ref["step"])
    for s in best.steps():
        if s not in keep:
            best.remove(s)
    best.remove_orphans()


def drop_best_after(best: CheckpointManager, checkpoints: CheckpointManager, step: int, current: dict | None):
    """On resume at `step`: remove half-written best files, those newer than `step` (their epochs
    run again) and unreferenced ones (`prune_best_files`)."""
    best.remove_temporaries()
    for s in best.steps():
        if s > step:
            best.remove(s)
    prune_best_files(best, checkpoints, current)


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
