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
"""

import json
import mmap
import os
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


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

    def __getitem__(self, image_id):
        return self.get(image_id)

    def get(self, image_id):
        """(features (N, D), boxes (N, 4) x1 y1 x2 y2 in original pixels, N) of one image."""
        try:
            shard, row = self._where[str(image_id)]
        except KeyError:
            raise KeyError(f"no features for image {image_id!r} in {self.index_path}") from None
        return self._shard(shard).get(row)

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

    def get(self, row):
        c, (fs, bs), (fe, be) = self._chunk[row], self._start[row], self._end[row]
        return self.features[c][fs:fe], self.boxes[c][bs:be], be - bs
