"""Cache of a frozen backbone's final hidden states, one row per input sequence (Adapter I, linear).

When no backbone parameter trains, the backbone's output for a sequence never changes during
finetuning: it is computed once (eval mode, no_grad), stored, and every later epoch costs only
the shortcut block and the head.

    cache = BackboneCache("results/vqa/cache", backbone_checksum, hidden=768)
    stats = cache.fill(chunks, compute)     # compute the missing rows, drop the stale ones
    states = cache.lookup(keys, attention_mask, visual_mask)   # (N, L+R, H) float32

File: `{directory}/backbone.parquet` (written atomically), rows `key` (digest of everything
the backbone sees of the sequence: token ids and types, region features and boxes, word-region
links — see cavl.tasks.base.encode_sequences), `text_len`, `num_regions`, `states`
((text_len + num_regions) × H: the real text tokens, then the real regions; padding is not
stored). File metadata: the backbone's checksum, the hidden size, the dtype, the format version.

Invalidation: a file whose metadata differs (another backbone, dtype or version) is deleted
and rebuilt; a sequence whose text or features changed has another key, so it is recomputed;
rows no longer needed are dropped when the file is rewritten. The states column is stored
uncompressed and read memory-mapped, so lookups are array slices.

Under DDP every process computes the missing rows of every W-th chunk into its own part file;
the main process merges the parts and all processes then read the merged file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from cavl.io import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_NAME = "backbone.parquet"
_DTYPES = {"float16": (np.float16, pa.float16()), "float32": (np.float32, pa.float32())}


class BackboneCache:
    def __init__(self, directory, backbone_checksum: str, hidden: int, dtype: str = "float16"):
        if dtype not in _DTYPES:
            raise ValueError(f"cache dtype must be float16 or float32, got {dtype!r}")
        self.dir = Path(directory)
        self.path = self.dir / FILE_NAME
        self.hidden, self.dtype = int(hidden), dtype
        self.meta = {"backbone": backbone_checksum, "hidden": self.hidden, "dtype": dtype,
                     "version": FORMAT_VERSION}
        self._index = {}  # key → (chunk, start, end, text_len, num_regions)
        self._chunks = []  # per row group: (T_total, H) array view

    # -- reading --------------------------------------------------------------------------------

    def _schema(self):
        return pa.schema([("key", pa.string()), ("text_len", pa.int32()), ("num_regions", pa.int32()),
                          ("states", pa.list_(pa.list_(_DTYPES[self.dtype][1], self.hidden)))],
                         metadata={"cavl_backbone_cache": json.dumps(self.meta)})

    def _file_meta(self, path):
        raw = (pq.read_schema(path).metadata or {}).get(b"cavl_backbone_cache")
        return json.loads(raw) if raw else None

    def load(self) -> bool:
        """Open the cache file if it belongs to this backbone/format (else delete it). → usable?"""
        self._index, self._chunks = {}, []
        if not self.path.exists():
            return False
        try:
            meta = self._file_meta(self.path)
        except (OSError, pa.ArrowInvalid) as e:
            meta = f"unreadable ({e})"
        if meta != self.meta:
            log.warning("backbone cache %s is stale (%s, now %s); rebuilding it", self.path,
                        meta if isinstance(meta, str) else {k: v for k, v in (meta or {}).items() if v != self.meta.get(k)},
                        self.meta)
            self.path.unlink(missing_ok=True)
            return False
        table = pq.read_table(self.path, memory_map=True)
        keys = table.column("key").to_pylist()
        text_len = table.column("text_len").to_numpy()
        num_regions = table.column("num_regions").to_numpy()
        row = 0
        for c, chunk in enumerate(table.column("states").chunks):
            offsets = chunk.offsets.to_numpy()
            self._chunks.append(chunk.values.flatten().to_numpy().reshape(-1, self.hidden))
            for i in range(len(offsets) - 1):
                self._index[keys[row]] = (c, int(offsets[i]), int(offsets[i + 1]), int(text_len[row]),
                                          int(num_regions[row]))
                row += 1
        return True

    def __getstate__(self):  # DataLoader workers map the file themselves instead of copying it
        state = dict(self.__dict__)
        state["_index"], state["_chunks"], state["_loaded"] = {}, [], bool(self._index)
        return state

    def __setstate__(self, state):
        loaded = state.pop("_loaded", False)
        self.__dict__.update(state)
        if loaded:
            self.load()

    def __len__(self):
        return len(self._index)

    def __contains__(self, key):
        return key in self._index

    def _states(self, key) -> np.ndarray:
        c, s, e, _, _ = self._index[key]
        return self._chunks[c][s:e]

    def lookup(self, keys: list, text_mask: np.ndarray, visual_mask: np.ndarray) -> np.ndarray:
        """Cached states of N sequences laid out as a batch: (N, L+R, H) float32, text at
        [0, text_len), regions at [L, L+num_regions), zeros elsewhere."""
        N, L = text_mask.shape
        R = visual_mask.shape[1]
        out = np.zeros((N, L + R, self.hidden), np.float32)
        for i, key in enumerate(keys):
            try:
                c, s, e, tl, nr = self._index[key]
            except KeyError:
                raise KeyError(f"sequence {key} is not in the backbone cache {self.path} "
                               "(fill() it over every sequence first)") from None
            if tl != int(text_mask[i].sum()) or nr != int(visual_mask[i].sum()):
                raise ValueError(f"cached sequence {key} has {tl}+{nr} tokens, the batch {int(text_mask[i].sum())}"
                                 f"+{int(visual_mask[i].sum())}")
            st = self._chunks[c][s:e]
            out[i, :tl] = st[:tl]
            out[i, L : L + nr] = st[tl:]
        return out

    # -- filling --------------------------------------------------------------------------------

    def fill(self, chunks: Sequence, compute: Callable[[dict], torch.Tensor], rank: int = 0,
             world_size: int = 1) -> dict:
        """Make the cache hold exactly the sequences of `chunks` (an indexable sequence of
        batches of cavl.tasks.base: `keys`, `attention_mask`, `visual_mask`, ...);
        `compute(batch)` → (N, L+R, H) states of the batch's sequences. Each process builds and
        handles every `world_size`-th chunk.
        Returns {"sequences", "computed", "reused"} (this process's counts)."""
        self.load()
        self.dir.mkdir(parents=True, exist_ok=True)
        part = self.dir / f"part-{rank:03d}-of-{world_size:03d}.parquet"
        stats = {"sequences": 0, "computed": 0, "reused": 0}
        seen = set()
        np_dtype = _DTYPES[self.dtype][0]
        with atomic_path(part) as tmp:
            with pq.ParquetWriter(tmp, self._schema(), compression={"key": "zstd", "text_len": "zstd",
                                  "num_regions": "zstd", "states": "none"}, use_dictionary=False) as writer:
                for k in range(rank, len(chunks), world_size):
                    batch = chunks[k]
                    keys = batch["keys"]
                    tmask, vmask = batch["attention_mask"].numpy(), batch["visual_mask"].numpy()
                    todo = [i for i, key in enumerate(keys) if key not in self._index and key not in seen]
                    new = compute(batch).float().cpu().numpy() if todo else None  # (N, L+R, H)
                    L = tmask.shape[1]
                    rows = {"key": [], "text_len": [], "num_regions": [], "states": []}
                    for i, key in enumerate(keys):
                        if key in seen:
                            continue
                        seen.add(key)
                        tl, nr = int(tmask[i].sum()), int(vmask[i].sum())
                        if key in self._index:
                            st = self._states(key)
                            stats["reused"] += 1
                        else:
                            st = np.concatenate([new[i, :tl], new[i, L : L + nr]])  # (tl+nr, H)
                            stats["computed"] += 1
                        rows["key"].append(key)
                        rows["text_len"].append(tl)
                        rows["num_regions"].append(nr)
                        rows["states"].append(st.astype(np_dtype, copy=False))
                    stats["sequences"] += len(rows["key"])
                    if rows["key"]:
                        writer.write_table(self._rows_table(rows), row_group_size=len(rows["key"]))
        if world_size > 1:
            dist.barrier()
        if rank == 0:
            self._merge([self.dir / f"part-{r:03d}-of-{world_size:03d}.parquet" for r in range(world_size)])
        if world_size > 1:
            dist.barrier()
        self.load()
        return stats

    def _rows_table(self, rows) -> pa.Table:
        flat = np.concatenate(rows["states"]) if rows["states"] else np.zeros((0, self.hidden))
        counts = np.array([len(s) for s in rows["states"]], dtype=np.int32)
        offsets = np.zeros(len(counts) + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        values = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel(), _DTYPES[self.dtype][1]), self.hidden)
        states = pa.ListArray.from_arrays(pa.array(offsets), values)
        return pa.Table.from_arrays([pa.array(rows["key"], pa.string()), pa.array(rows["text_len"], pa.int32()),
                                     pa.array(rows["num_regions"], pa.int32()), states], schema=self._schema())

    def _merge(self, parts: list):
        """Concatenate the part files (first occurrence of a key wins) into the cache file."""
        self._index, self._chunks = {}, []  # release the old file's memory map before replacing it
        seen = set()
        with atomic_path(self.path) as tmp:
            with pq.ParquetWriter(tmp, self._schema(), compression={"key": "zstd", "text_len": "zstd",
                                  "num_regions": "zstd", "states": "none"}, use_dictionary=False) as writer:
                for path in parts:
                    f = pq.ParquetFile(path)
                    for g in range(f.num_row_groups):
                        t = f.read_row_group(g)
                        keep = [k not in seen for k in t.column("key").to_pylist()]
                        seen.update(t.column("key").to_pylist())
                        t = t.filter(pa.array(keep))
                        if t.num_rows:
                            writer.write_table(t.replace_schema_metadata(self._schema().metadata))
        for path in parts:
            os.remove(path)
