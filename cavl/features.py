"""Region features by image id, read from the feature shards of a dataset (used by training).

    reader = FeatureReader("resources/features/coco/index.parquet")
    features, boxes, num_boxes = reader["391895"]   # (N, D) float16/32, (N, 4) float32, N

A shard is memory-mapped the first time one of its images is asked for: its `features` column
(one uncompressed blob per image) maps straight onto the file's pages in the page cache (shared
by every process reading the shard, never copied into the process), its small `boxes`
column is decoded once, and every later lookup is a dictionary lookup and two numpy slices —
no copy. The arrays returned are read-only views into the shard's Arrow buffers; copy them
(`np.array(x)`, `torch.tensor(x)`) before writing to them. `max_cached_shards` bounds memory by
evicting the least recently used shard.

`reader.regions(image_id)` returns everything the shard holds about an image's boxes (a
`Regions`: features, boxes, num_boxes, classes, scores, attributes, attribute_scores); the
class/score/attribute columns of a shard are read the first time `regions` asks for one of its
images, so `get` never pays for them. `attributes` / `attribute_scores` are None when the
detector had no attribute head; a shard written before shards had attribute columns raises
`OldShardError` (naming the file and the rule to rerun). `reader.vocabularies` is the index's
`vocabularies` metadata (docs/contracts.md), None when the shards have none.
"""

import json
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

_REGION_COLUMNS = {"classes": np.int32, "scores": np.float32, "attributes": np.int32,
                   "attribute_scores": np.float32}


class OldShardError(ValueError):
    """A shard lacks columns that newer shards have: it must be re-extracted."""


@dataclass(frozen=True)
class Regions:
    """One image's regions (read-only arrays; N = num_boxes)."""

    features: np.ndarray  # (N, D) float16/32
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in original pixels
    num_boxes: int
    classes: np.ndarray  # (N,) int32, 0-based object class (vocabularies["objects"] where given)
    scores: np.ndarray  # (N,) float32, that class's score
    attributes: Optional[np.ndarray]  # (N,) int32, 0-based best attribute; None: no attribute head
    attribute_scores: Optional[np.ndarray]  # (N,) float32, its probability; None like attributes


def _mapped(path):
    """A read-only memory map of `path`, pre-faulted in one call where the OS allows
    (MAP_POPULATE: ~2× faster than faulting page by page as the arrays are touched)."""
    try:
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                               prot=mmap.PROT_READ)
    except (AttributeError, TypeError):  # not POSIX: let Arrow map it
        return pa.memory_map(path)
    return pa.BufferReader(pa.py_buffer(mapped))


class FeatureReader:
    """Random access to a dataset's region features through its index.parquet."""

    def __init__(self, index_path, max_cached_shards=None):
        self.index_path = os.fspath(index_path)
        self.directory = os.path.dirname(self.index_path)
        table = pq.read_table(self.index_path, memory_map=True)
        raw = table.schema.metadata or {}
        self.metadata = {k.decode(): json.loads(v) for k, v in raw.items()
                         if not k.startswith(b"ARROW:") and k != b"pandas"}
        self.feature_dim = int(self.metadata["feature_dim"])
        self.feature_dtype = np.dtype(self.metadata["feature_dtype"])
        self._shard_files = {int(k): v for k, v in self.metadata["shards"].items()}
        ids = table.column("image_id").to_pylist()
        shards = table.column("shard").to_numpy()
        rows = table.column("row").to_numpy()
        self._where = dict(zip(ids, zip(shards.tolist(), rows.tolist())))
        self.max_cached_shards = max_cached_shards
        self._cache = OrderedDict()

    def __len__(self):
        return len(self._where)

    def __contains__(self, image_id):
        return str(image_id) in self._where

    @property
    def image_ids(self):
        return list(self._where)

    @property
    def vocabularies(self):
        """The shards' label vocabularies ({"objects": {"file", "sha256", "classes"},
        "attributes": ...}), or None (no vocabularies recorded, e.g. an index of older shards)."""
        return self.metadata.get("vocabularies")

    def __getitem__(self, image_id):
        return self.get(image_id)

    def get(self, image_id):
        """(features (N, D), boxes (N, 4) x1 y1 x2 y2 in original pixels, N) of one image."""
        shard, row = self._locate(image_id)
        return self._shard(shard).get(row)

    def regions(self, image_id):
        """A `Regions` of one image: features and boxes as `get` returns them, plus each box's
        class, score, attribute and attribute score. Raises OldShardError for a shard written
        before shards had attribute columns."""
        shard, row = self._locate(image_id)
        loaded = self._shard(shard)
        features, boxes, n = loaded.get(row)
        columns = loaded.region_columns(row)
        return Regions(features=features, boxes=boxes, num_boxes=n, **columns)

    def _locate(self, image_id):
        try:
            return self._where[str(image_id)]
        except KeyError:
            raise KeyError(f"no features for image {image_id!r} in {self.index_path}") from None

    def _shard(self, number):
        loaded = self._cache.get(number)
        if loaded is None:
            loaded = _LoadedShard(os.path.join(self.directory, self._shard_files[number]),
                                  self.feature_dim, self.feature_dtype)
            self._cache[number] = loaded
            if self.max_cached_shards and len(self._cache) > self.max_cached_shards:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(number)
        return loaded


class _LoadedShard:
    """The features and boxes of one shard as numpy views, one pair per Parquet row group."""

    def __init__(self, path, feature_dim, dtype):
        table = pq.read_table(_mapped(path), columns=["boxes", "features"])
        self.features, self.boxes, chunk_of_row, starts, ends = [], [], [], [], []
        for c, (f_chunk, b_chunk) in enumerate(zip(table.column("features").chunks,
                                                   table.column("boxes").chunks)):
            # features: one blob per image; its offsets are byte positions in the data buffer.
            _, offset_buf, data = f_chunk.buffers()
            byte_offsets = np.frombuffer(offset_buf, np.int64)[f_chunk.offset: f_chunk.offset + len(f_chunk) + 1]
            features = (np.frombuffer(data, dtype, count=data.size // dtype.itemsize).reshape(-1, feature_dim)
                        if data is not None else np.zeros((0, feature_dim), dtype))
            features.flags.writeable = False  # a view of the (memory-mapped) file
            self.features.append(features)
            # boxes: list offsets index the list's child; flatten() honours the child's own offset.
            box_offsets = b_chunk.offsets.to_numpy()
            self.boxes.append(b_chunk.values.flatten().to_numpy().reshape(-1, 4))
            if not np.array_equal(byte_offsets - byte_offsets[0],
                                  (box_offsets - box_offsets[0]).astype(np.int64) * feature_dim * dtype.itemsize):
                raise ValueError(f"{path}: boxes and features disagree on the number of boxes")
            chunk_of_row.append(np.full(len(box_offsets) - 1, c, dtype=np.int32))
            # Per row: [start, end) in the chunk's feature rows and box rows.
            feature_rows = byte_offsets // (feature_dim * dtype.itemsize)
            starts.append(np.stack([feature_rows[:-1], box_offsets[:-1]], 1))
            ends.append(np.stack([feature_rows[1:], box_offsets[1:]], 1))
        self._chunk = np.concatenate(chunk_of_row).tolist() if chunk_of_row else []
        self._start = np.concatenate(starts).tolist() if starts else []
        self._end = np.concatenate(ends).tolist() if ends else []
        self.path = path
        self._columns = None  # {name: (values, offsets, valid)} of _REGION_COLUMNS, read on first use

    def region_columns(self, row):
        """{classes, scores, attributes, attribute_scores} of one row (attributes and
        attribute_scores None where the row has none)."""
        if self._columns is None:
            self._columns = self._read_region_columns()
        out = {}
        for name, (values, offsets, valid) in self._columns.items():
            out[name] = values[offsets[row]:offsets[row + 1]] if valid[row] else None
        for name in ("classes", "scores"):
            if out[name] is None:
                raise ValueError(f"{self.path}: row {row} has no {name}")
        return out

    def _read_region_columns(self):
        names = pq.read_schema(self.path).names
        missing = [name for name in _REGION_COLUMNS if name not in names]
        if missing:
            raise OldShardError(
                f"{self.path} was written before shards had attribute columns (it has no "
                f"{', '.join(missing)}); re-extract it: snakemake --forcerun extract_shard <target> "
                f"(rule extract_shard; gather_features then rebuilds the index), or delete the "
                f"dataset's shard files and rerun snakemake")
        table = pq.read_table(self.path, columns=list(_REGION_COLUMNS), memory_map=True)
        num_boxes = np.array([e - s for (_, s), (_, e) in zip(self._start, self._end)], dtype=np.int64)
        columns = {}
        for name, dtype in _REGION_COLUMNS.items():
            values, lengths, valid = [], [], []
            for chunk in table.column(name).chunks:
                values.append(chunk.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False))
                lengths.append(pc.fill_null(pc.list_value_length(chunk), 0).to_numpy().astype(np.int64))
                valid.append(chunk.is_valid().to_numpy(zero_copy_only=False))
            values = np.concatenate(values) if values else np.zeros(0, dtype)
            lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
            valid = np.concatenate(valid) if valid else np.zeros(0, bool)
            if len(lengths) != len(num_boxes) or (lengths[valid] != num_boxes[valid]).any():
                raise ValueError(f"{self.path}: {name} and boxes disagree on the number of boxes")
            offsets = np.zeros(len(lengths) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            values.flags.writeable = False  # shared by every lookup, like the features
            columns[name] = (values, offsets.tolist(), valid.tolist())
        return columns

    def get(self, row):
        c, (fs, bs), (fe, be) = self._chunk[row], self._start[row], self._end[row]
        return self.features[c][fs:fe], self.boxes[c][bs:be], be - bs
