"""Region features: the one way every stage reads them (shard format: docs/contracts.md).

    reader = RegionReader("resources/features/coco/index.parquet")
    features, boxes, num_boxes = reader["391895"]   # (N, D) float16/32, (N, 4) float32 pixels, N
    reader.regions("391895")                         # + classes, scores, attributes: a `Regions`
    reader.size("391895"), reader.num_given("391895")  # (width, height); the given boxes come first

    source = RegionSource(index_path, max_regions=36)  # what a model sees of an image
    r = source.get("391895")          # ImageRegions: features (n, D) float32, boxes (n, 5), num_given
    feats, boxes, mask = pad_regions([r, ...], 36, source.feature_dim)     # a batch of images
    sources = open_sources("resources/features", ["coco", "vg"])           # one source per dataset
    mean, std = feature_statistics(sources, examples, max_regions=36)     # the model's standardisation

A shard is memory-mapped the first time one of its images is asked for: its `features` blobs map
straight onto the page cache (shared by every process, never copied), its `boxes` are decoded
once, and a lookup is a dict lookup and two numpy slices. `get` returns read-only views: copy
them before writing. `max_cached_shards` evicts the least recently used shard. The other columns
are read on first use (`size`/`num_given`; `regions`: classes, scores, attributes — None without
an attribute head; a shard older than the attribute columns raises `OldShardError`).
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cavl.io import file_sha256
from cavl.shards import shard_metadata

_REGION_COLUMNS = {"classes": np.int32, "scores": np.float32, "attributes": np.int32,
                   "attribute_scores": np.float32}


class OldShardError(ValueError):
    """A shard lacks columns that newer shards have: it must be re-extracted."""


@dataclass(frozen=True)
class Regions:
    """Everything a shard holds about one image's boxes (read-only arrays; N = num_boxes)."""

    features: np.ndarray  # (N, D) float16/32
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in original pixels
    num_boxes: int
    classes: np.ndarray  # (N,) int32, 0-based object class (vocabularies["objects"] where given)
    scores: np.ndarray  # (N,) float32, that class's score
    attributes: Optional[np.ndarray]  # (N,) int32, 0-based best attribute; None: no attribute head
    attribute_scores: Optional[np.ndarray]  # (N,) float32, its probability; None like attributes


@dataclass
class ImageRegions:
    """What a model sees of one image (n ≤ max_regions regions)."""

    features: np.ndarray  # (n, D) float32
    boxes: np.ndarray  # (n, 5) float32: x1/W, y1/H, x2/W, y2/H, area fraction
    num_given: int  # the first num_given regions are the manifest's ground-truth boxes, in order


# ---------------------------------------------------------------------------------------------
# The shard reader
# ---------------------------------------------------------------------------------------------


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


class RegionReader:
    """Random access to a dataset's shards through its index.parquet, by image id."""

    def __init__(self, index_path, max_cached_shards=None):
        self.index_path = os.fspath(index_path)
        self.directory = os.path.dirname(self.index_path)
        table = pq.read_table(self.index_path, memory_map=True)
        self.metadata = shard_metadata(table.schema)
        self.feature_dim = int(self.metadata["feature_dim"])
        self.feature_dtype = np.dtype(self.metadata["feature_dtype"])
        self._shard_files = {int(k): v for k, v in self.metadata["shards"].items()}
        self._where = dict(zip(table.column("image_id").to_pylist(),
                               zip(table.column("shard").to_pylist(), table.column("row").to_pylist())))
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

    def get(self, image_id):
        """(features (N, D), boxes (N, 4) x1 y1 x2 y2 in original pixels, N) of one image."""
        shard, row = self._locate(image_id)
        return self._shard(shard).get(row)

    __getitem__ = get

    def size(self, image_id) -> tuple:
        """(width, height) of one image in pixels (EXIF-oriented), as the shard records it."""
        shard, row = self._locate(image_id)
        return self._shard(shard).info(row)[:2]

    def num_given(self, image_id) -> int:
        """How many of the image's boxes, the first ones, are the manifest's given boxes."""
        shard, row = self._locate(image_id)
        return self._shard(shard).info(row)[2]

    def regions(self, image_id):
        """A `Regions` of one image: features and boxes as `get` returns them, plus each box's
        class, score, attribute and attribute score. Raises OldShardError for a shard written
        before shards had attribute columns."""
        shard, row = self._locate(image_id)
        loaded = self._shard(shard)
        features, boxes, n = loaded.get(row)
        return Regions(features=features, boxes=boxes, num_boxes=n, **loaded.region_columns(row))

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
        self._info = None  # per row (width, height, num_given), read on first use

    def get(self, row):
        c, (fs, bs), (fe, be) = self._chunk[row], self._start[row], self._end[row]
        return self.features[c][fs:fe], self.boxes[c][bs:be], be - bs

    def info(self, row):
        """(width, height, num_given) of one row (num_given 0 in shards without the column)."""
        if self._info is None:
            names = pq.read_schema(self.path).names
            columns = ["width", "height"] + (["num_given"] if "num_given" in names else [])
            t = pq.read_table(self.path, columns=columns, memory_map=True)
            width, height = t.column("width").to_pylist(), t.column("height").to_pylist()
            given = t.column("num_given").to_pylist() if "num_given" in names else [0] * len(width)
            self._info = list(zip(width, height, given))
        return self._info[row]

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
            column = table.column(name).combine_chunks()
            values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
            lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            if len(lengths) != len(num_boxes) or (lengths[valid] != num_boxes[valid]).any():
                raise ValueError(f"{self.path}: {name} and boxes disagree on the number of boxes")
            offsets = np.zeros(len(lengths) + 1, np.int64)
            np.cumsum(lengths, out=offsets[1:])
            values.flags.writeable = False  # shared by every lookup, like the features
            columns[name] = (values, offsets.tolist(), valid.tolist())
        return columns


# ---------------------------------------------------------------------------------------------
# What a model sees: normalised, cut, padded
# ---------------------------------------------------------------------------------------------


def normalise_boxes(boxes, width, height) -> np.ndarray:
    """Pixel boxes (N, 4) x1 y1 x2 y2 → (N, 5): coordinates / image size and the area fraction."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float32)
    b = np.clip(b / scale, 0.0, 1.0)  # (N, 4)
    area = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)  # (N,)
    return np.concatenate([b, area[:, None]], axis=1).astype(np.float32)  # (N, 5)


class RegionSource:
    """The regions a model sees of one dataset's images: `get(image_id)` → the first `max_regions`
    (None: all; the given boxes first, then the detector's best) as an `ImageRegions`;
    `skip_given`: without the given boxes (rpg, tir: flickr30k's are the answers)."""

    def __init__(self, index_path, max_regions: int | None = None, skip_given: bool = False):
        self.index_path = os.fspath(index_path)
        self.max_regions = None if max_regions is None else int(max_regions)
        self.skip_given = bool(skip_given)
        self.reader = RegionReader(self.index_path)
        self.feature_dim = self.reader.feature_dim

    def __len__(self):
        return len(self.reader)

    def __contains__(self, image_id):
        return image_id in self.reader

    @property
    def image_ids(self) -> list:
        return self.reader.image_ids

    def identity(self) -> dict:
        """What `get` returns depends on (a precompute's key, cavl.backbone_cache): the index's
        SHA-256 (its metadata records the detector, weights and box settings), each shard file's
        name, size and modification time (re-extracted shards count as new), and the cut."""
        shards = []
        for name in sorted(self.reader.metadata["shards"].values()):
            st = os.stat(os.path.join(self.reader.directory, name))
            shards.append([name, st.st_size, st.st_mtime_ns])
        return {"index": file_sha256(self.index_path), "shards": shards, "max_regions": self.max_regions,
                "skip_given": self.skip_given}

    def _cut(self, image_id, max_regions):
        """(features (n, D), pixel boxes (n, 4), num_given) of the regions `get` returns: views."""
        feats, boxes, _ = self.reader.get(image_id)
        given = self.reader.num_given(image_id)
        if self.skip_given:
            feats, boxes, given = feats[given:], boxes[given:], 0
        limit = self.max_regions if max_regions is None else max_regions
        n = len(feats) if limit is None else min(len(feats), limit)
        return feats[:n], boxes[:n], min(int(given), n)

    def get(self, image_id, max_regions: int | None = None) -> ImageRegions:
        """The first `max_regions` regions of an image (None: the source's `max_regions`)."""
        feats, boxes, given = self._cut(image_id, max_regions)
        width, height = self.reader.size(image_id)
        return ImageRegions(np.asarray(feats, dtype=np.float32), normalise_boxes(boxes, width, height), given)

    def pixel_boxes(self, image_id, max_regions: int | None = None) -> np.ndarray:
        """Pixel boxes (n, 4) x1 y1 x2 y2 of the regions `get` returns (rpg: the candidates)."""
        return np.asarray(self._cut(image_id, max_regions)[1], dtype=np.float32).reshape(-1, 4)

    def __getstate__(self):  # DataLoader workers map the shards themselves
        state = dict(self.__dict__)
        state["reader"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.reader = RegionReader(self.index_path)


def open_sources(root, datasets, max_regions: int | None = None) -> dict:
    """{dataset: RegionSource over `{root}/{dataset}/index.parquet`} (pretraining reads several
    datasets); their features must have one width."""
    sources = {d: RegionSource(Path(root) / d / "index.parquet", max_regions) for d in datasets}
    dims = {s.feature_dim for s in sources.values()}
    if len(dims) != 1:
        raise ValueError(f"datasets {list(datasets)} have different feature widths {sorted(dims)}")
    return sources


def pad_regions(regions: list, max_regions: int, feature_dim: int):
    """Regions of B images → features (B, R, D), boxes (B, R, 5), mask (B, R); R is the longest
    image's count capped at max_regions (at least 1; a region-less image has an all-zero mask)."""
    counts = [min(len(r.features), max_regions) for r in regions]
    B, R = len(regions), max(1, max(counts, default=0))
    feats = np.zeros((B, R, feature_dim), np.float32)
    boxes = np.zeros((B, R, 5), np.float32)
    mask = np.zeros((B, R), np.int64)
    for b, (reg, n) in enumerate(zip(regions, counts)):
        feats[b, :n], boxes[b, :n], mask[b, :n] = reg.features[:n], reg.boxes[:n], 1
    return feats, boxes, mask


def feature_statistics(sources: dict, examples: pd.DataFrame, max_regions: int, max_images: int = 20000):
    """Per-dimension mean and std (each (D,), float64) of the region features the model sees: the
    first `max_regions` regions of each distinct image of `examples` (columns `dataset`,
    `image_id`; `sources`: {dataset: RegionSource}), of an evenly spaced subset of at most
    `max_images` images. Deterministic, so every DDP rank and a resumed run agree."""
    images = examples[["dataset", "image_id"]].drop_duplicates().sort_values(["dataset", "image_id"])
    if len(images) > max_images:
        images = images.iloc[np.linspace(0, len(images) - 1, max_images).round().astype(int)]
    D = next(iter(sources.values())).feature_dim
    total, total_sq, n = np.zeros(D), np.zeros(D), 0
    for dataset, image_id in images.itertuples(index=False):
        f = sources[dataset].get(image_id, max_regions).features.astype(np.float64)  # (n, D)
        total += f.sum(0)
        total_sq += (f * f).sum(0)
        n += len(f)
    if n == 0:
        raise ValueError("no region features to standardise with: every image has 0 regions")
    mean = total / n
    return mean, np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
