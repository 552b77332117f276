"""The frozen backbone's final hidden states, precomputed once per split (Adapter I, linear):
when no backbone parameter trains, they are computed once (eval mode, no_grad) and memory-mapped.

    (train.cache, select.cache), stats = precompute(
        "results/vqa/cache", [train, select], model.backbone_states,   # TaskBatches, shuffle=False ok
        backbone=state_checksum(model.backbone), hidden=768, chunk_size=64, dtype="float16")
    train[k]["backbone_states"]       # (N, L+R, H) float32: the states of the batch's sequences

Files, per table t of `tables` (its sequences item after item, K per item: row = item · K + k):
`states-{t}.bin`, the raw (T, H) float16/float32 states of every sequence at its real tokens
(text, then regions; no padding); `rows-{t}.npy`, (S, 3) int64 per sequence: first row in the
states, text tokens, regions. `cache.json`, written last, holds each table's shape and `key`, a
SHA-256 of everything the states depend on (`cache_key`); a folder with another key is
recomputed whole. Chunks of `chunk_size` items are one batch each through `compute`; a sequence
with the same inputs as an earlier one gets its states. Under DDP process r computes chunks
r, r+W, … into part files, from which the main process writes the tables' files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from cavl.io import atomic_path, write_json_atomic

FORMAT_VERSION = 2
MANIFEST = "cache.json"
_DTYPES = {"float16": np.float16, "float32": np.float32}


class BackboneStates:
    """The cached states of one table's sequences (row = item · K + k), memory-mapped."""

    def __init__(self, directory, name: str, tokens: int, hidden: int, dtype: str):
        self.directory, self.name = Path(directory), name
        self.tokens, self.hidden, self.dtype = int(tokens), int(hidden), dtype
        self._open()

    def _open(self):
        self.rows = np.load(self.directory / f"rows-{self.name}.npy")  # (S, 3): start, text_len, num_regions
        self.states = (np.memmap(self.directory / f"states-{self.name}.bin", _DTYPES[self.dtype], mode="r",
                                 shape=(self.tokens, self.hidden))
                       if self.tokens else np.zeros((0, self.hidden), _DTYPES[self.dtype]))

    def __len__(self):
        return len(self.rows)

    def lookup(self, rows, text_mask: np.ndarray, visual_mask: np.ndarray) -> np.ndarray:
        """States of the sequences `rows` laid out as their batch: (N, L+R, H) float32, text at
        [0, text_len), regions at [L, L+num_regions), zeros elsewhere."""
        N, L = text_mask.shape
        R = visual_mask.shape[1]
        out = np.zeros((N, L + R, self.hidden), np.float32)
        for i, row in enumerate(rows):
            start, tl, nr = (int(x) for x in self.rows[row])
            if tl != int(text_mask[i].sum()) or nr != int(visual_mask[i].sum()):
                raise ValueError(f"cached sequence {row} of {self.directory / self.name} has {tl}+{nr} tokens, the "
                                 f"batch {int(text_mask[i].sum())}+{int(visual_mask[i].sum())}")
            st = self.states[start : start + tl + nr]
            out[i, :tl] = st[:tl]
            out[i, L : L + nr] = st[tl:]
        return out

    def __getstate__(self):  # DataLoader workers map the files themselves
        state = dict(self.__dict__)
        state["rows"] = state["states"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # a fast tokenizer: its definition, less the last call's truncation/padding
        definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:
        definition = [type(tokenizer).__name__, getattr(tokenizer, "do_lower_case", None),
                      sorted(tokenizer.get_vocab().items())]
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()


def cache_key(tables: Sequence, backbone: str, hidden: int, chunk_size: int, dtype: str) -> str:
    """SHA-256 of everything the states of `tables` (TaskBatches) depend on (module docstring)."""
    first = tables[0]
    h = hashlib.sha256(json.dumps({
        "version": FORMAT_VERSION, "backbone": backbone, "hidden": int(hidden), "dtype": dtype,
        "chunk_size": int(chunk_size), "task": first.task.name, "data": asdict(first.cfg),
        "regions": first.regions.identity(), "tokenizer": _tokenizer_digest(first.tokenizer),
        "tables": [len(t.items) for t in tables]}, sort_keys=True).encode())
    for t in tables:
        for s in t.sequences(range(len(t.items))):
            h.update(json.dumps([s.words_a, s.image_id, s.words_b, s.links_a, s.links_b], default=str).encode())
    return h.hexdigest()


def _open_all(directory: Path, key: str, names: list):
    """The tables' BackboneStates if `directory` holds states computed for `key`, else None."""
    try:
        meta = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or meta.get("version") != FORMAT_VERSION:
        return None
    return [BackboneStates(directory, n, meta["tables"][n]["tokens"], meta["hidden"], meta["dtype"]) for n in names]


def precompute(directory, tables: Sequence, compute: Callable[[dict], torch.Tensor], backbone: str, hidden: int,
               chunk_size: int, dtype: str = "float16", rank: int = 0, world_size: int = 1):
    """(a BackboneStates per table of `tables` (TaskBatches of one task, tokenizer, region source
    and data settings), {"sequences", "computed"}) — computed into `directory` unless it already
    holds them for the same key; `compute(batch)` → (N, L+R, H) states of the batch's sequences."""
    from cavl.tasks.base import encode_sequences

    if dtype not in _DTYPES:
        raise ValueError(f"cache dtype must be float16 or float32, got {dtype!r}")
    directory = Path(directory)
    names = [str(t) for t in range(len(tables))]
    K = tables[0].task.num_candidates
    sequences = K * sum(len(t.items) for t in tables)
    key = cache_key(tables, backbone, hidden, chunk_size, dtype)
    found = _open_all(directory, key, names)
    if found is not None:
        return found, {"sequences": sequences, "computed": 0}

    if world_size > 1:
        dist.barrier()  # every process has looked before the main one removes the stale manifest
    if rank == 0:
        (directory / MANIFEST).unlink(missing_ok=True)
        (directory / "backbone.parquet").unlink(missing_ok=True)  # the keyed cache of format 1
    directory.mkdir(parents=True, exist_ok=True)
    owner = np.concatenate([np.full(len(t.items), n, np.int64) for n, t in enumerate(tables)])
    position = np.concatenate([np.arange(len(t.items)) for t in tables])
    chunks = -(-len(owner) // chunk_size)
    part = directory / f"part-{rank:03d}-of-{world_size:03d}"
    np_dtype = _DTYPES[dtype]
    records, offset = [], 0  # per sequence: (global row, inputs key, text_len, num_regions, offset in part)
    with atomic_path(f"{part}.bin") as tmp, open(tmp, "wb") as f:
        for c in range(rank, chunks, world_size):
            items = range(c * chunk_size, min((c + 1) * chunk_size, len(owner)))
            seqs = [s for g in items for s in tables[owner[g]].sequences([position[g]])]
            inputs = encode_sequences(seqs, tables[0].tokenizer, tables[0].regions, tables[0].cfg)
            states = compute({k: torch.from_numpy(v) for k, v in inputs.items()}).float().cpu().numpy()
            ids, types, links = inputs["input_ids"], inputs["token_type_ids"], inputs.get("region_links")
            L = ids.shape[1]
            for j, s in enumerate(seqs):
                tl, nr = int(inputs["attention_mask"][j].sum()), int(inputs["visual_mask"][j].sum())
                f.write(np.concatenate([states[j, :tl], states[j, L : L + nr]]).astype(np_dtype).tobytes())
                same = _inputs_digest(str(s.image_id).encode(), ids[j, :tl].tobytes(), types[j, :tl].tobytes(),
                                      b"" if links is None else np.ascontiguousarray(links[j, :nr, :tl]).tobytes())
                records.append((c * chunk_size * K + j, same, tl, nr, offset))
                offset += tl + nr
    with atomic_path(f"{part}.json") as tmp:
        Path(tmp).write_text(json.dumps(records))
    if world_size > 1:
        dist.barrier()
    if rank == 0:
        _write_tables(directory, [len(t.items) * K for t in tables], names, world_size, key, hidden, dtype)
    if world_size > 1:
        dist.barrier()
    states = _open_all(directory, key, names)
    if states is None:
        raise RuntimeError(f"backbone cache {directory}: no {MANIFEST} for this key after computing it")
    return states, {"sequences": sequences, "computed": sequences}


def _inputs_digest(*parts: bytes) -> str:
    """SHA-256 of a sequence's inputs (image id, tokens, types, word-region links): equal digests,
    equal inputs, the same states."""
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()


def _write_tables(directory: Path, sizes: list, names: list, world_size: int, key: str, hidden: int, dtype: str):
    """The tables' files from the part files of every process (a sequence with an earlier twin: the
    twin's states), then the manifest."""
    parts = [directory / f"part-{r:03d}-of-{world_size:03d}" for r in range(world_size)]
    records = sorted((tuple(rec) + (p,) for p, part in enumerate(parts)
                      for rec in json.loads(Path(f"{part}.json").read_text())), key=lambda rec: rec[0])
    if [rec[0] for rec in records] != list(range(sum(sizes))):
        raise RuntimeError(f"backbone cache {directory}: the part files do not cover every sequence once")
    np_dtype = _DTYPES[dtype]
    mapped = [np.memmap(f"{part}.bin", np_dtype, mode="r").reshape(-1, hidden) if os.path.getsize(f"{part}.bin")
              else np.zeros((0, hidden), np_dtype) for part in parts]
    first, meta, start = {}, {}, 0
    for name, size in zip(names, sizes):
        rows = np.zeros((size, 3), np.int64)
        with atomic_path(directory / f"states-{name}.bin") as tmp, open(tmp, "wb") as f:
            tokens = 0
            for r, (_, same, tl, nr, offset, p) in enumerate(records[start : start + size]):
                p, offset = first.setdefault(same, (p, offset))
                f.write(np.ascontiguousarray(mapped[p][offset : offset + tl + nr]).tobytes())
                rows[r] = (tokens, tl, nr)
                tokens += tl + nr
        with atomic_path(directory / f"rows-{name}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, rows)
        meta[name] = {"sequences": size, "tokens": tokens}
        start += size
    del mapped
    write_json_atomic({"version": FORMAT_VERSION, "key": key, "hidden": int(hidden), "dtype": dtype, "tables": meta},
                      directory / MANIFEST)
    for part in parts:
        for suffix in (".bin", ".json"):
            Path(f"{part}{suffix}").unlink(missing_ok=True)
