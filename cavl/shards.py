"""Feature shards on disk: the Parquet schema, streamed row groups, atomic rename, failures table,
and the index of a dataset's shards (image_id → (shard, row)).

The format (columns, file metadata, vocabularies: docs/contracts.md) that extraction writes
(`extract.shard` with :class:`ShardWriter`, `extract.gather` with :func:`build_index`) and
training reads (:class:`cavl.data.regions.RegionReader`); it lives in `cavl` because `extract`
imports `cavl`, never the other way round.

A shard (`shard-{k:05d}.parquet`, one row per image) is written to a hidden temporary file, one
row group at a time (memory bounded by `row_group_size` images), and renamed only after the last
row group and the failures table (`shard-{k:05d}.failures.parquet`) are written: a killed job
leaves no shard behind. Features are one blob per image (row-major N×D float16/32), not a
nested list: Parquet decodes nested lists ~10× slower than the file reads (0.2 vs 1.5 GB/s),
while a blob column reads at memory speed, memory-mapped.
"""

import json
import logging
import os
import re
from contextlib import ExitStack

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cavl.io import atomic_path, write_parquet_atomic

log = logging.getLogger(__name__)

FEATURE_DTYPES = {"float16": np.float16, "float32": np.float32}
FLOAT16_MAX = float(np.finfo(np.float16).max)

# The shard layout (the columns above); recorded as the file metadata's schema_version.
SCHEMA_VERSION = 2

FAILURE_SCHEMA = pa.schema([("image_id", pa.string()), ("path", pa.string()), ("reason", pa.string())])


def failures_path_for(shard_path):
    """`.../shard-00003.parquet` → `.../shard-00003.failures.parquet`."""
    return shard_path.removesuffix(".parquet") + ".failures.parquet"


def shard_schema(feature_dim, feature_dtype="float16", metadata=None):
    layout = {"dtype": feature_dtype, "shape": f"[num_boxes, {int(feature_dim)}]", "order": "C"}
    schema = pa.schema([
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("num_boxes", pa.int32(), nullable=False),
        pa.field("num_given", pa.int32(), nullable=False),
        pa.field("boxes", pa.list_(pa.list_(pa.float32(), 4))),
        pa.field("scores", pa.list_(pa.float32())),
        pa.field("classes", pa.list_(pa.int32())),
        pa.field("attributes", pa.list_(pa.int32())),
        pa.field("attribute_scores", pa.list_(pa.float32())),
        pa.field("features", pa.large_binary(), nullable=False,
                 metadata={k: str(v) for k, v in layout.items()}),
    ])
    metadata = {"schema_version": SCHEMA_VERSION, **(metadata or {})}
    return schema.with_metadata({k: json.dumps(v) for k, v in metadata.items()})


def shard_metadata(schema):
    """The JSON-decoded metadata of a shard's or index's Arrow schema."""
    raw = schema.metadata or {}
    return {k.decode(): json.loads(v) for k, v in raw.items() if not k.startswith(b"ARROW:")
            and k != b"pandas"}


def read_shard_metadata(path):
    """The JSON-decoded file metadata of a shard (reads the footer only)."""
    return shard_metadata(pq.read_schema(path))


class ShardWriter:
    """Stream regions of many batches into one shard; commit it atomically on a clean exit.

        with ShardWriter(path, feature_dim=1024, metadata={...}) as w:
            w.add(image_ids, sizes, counts, num_given, boxes, scores, classes, features,
                  attributes=attribute_ids, attribute_scores=attribute_probs)   # or None: no head
            w.add_failures([(image_id, path, reason), ...])
    """

    def __init__(self, path, feature_dim, feature_dtype="float16", metadata=None, row_group_size=64,
                 failures_path=None):
        if feature_dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature_dtype must be one of {sorted(FEATURE_DTYPES)}, got {feature_dtype!r}")
        self.path, self.failures_path = os.fspath(path), failures_path or failures_path_for(os.fspath(path))
        self.feature_dim, self.feature_dtype = int(feature_dim), feature_dtype
        self.schema = shard_schema(feature_dim, feature_dtype, metadata)
        self.row_group_size = int(row_group_size)
        self.num_rows, self.num_clamped = 0, 0
        self._pending, self._pending_rows, self._failures = [], 0, []  # pending: Arrow tables
        self._with_attributes = None  # set by the first add(): all rows have attributes, or none
        vocab = ((metadata or {}).get("vocabularies") or {}).get("attributes") or {}
        self._num_attributes = int(vocab["classes"]) if vocab.get("classes") else np.iinfo(np.int32).max

    def __enter__(self):
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._writer = pq.ParquetWriter(
            tmp, self.schema,
            # Features are near-incompressible noise to a codec: stored raw, they read at memcpy speed.
            compression={name: "none" if name == "features" else "zstd" for name in self.schema.names},
            use_dictionary=False,
            write_statistics=["image_id", "width", "height", "num_boxes", "num_given"],
        )
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._writer.close()
            return self._stack.__exit__(exc_type, exc, tb)  # deletes the temporary file
        with self._stack:  # renames the temporary file to the shard once this block completes
            try:
                self._flush()
            finally:
                self._writer.close()
            # The failures table first: the shard's rename is the commit that marks completion.
            failures = pa.Table.from_pylist(
                [dict(zip(FAILURE_SCHEMA.names, f)) for f in self._failures], schema=FAILURE_SCHEMA)
            write_parquet_atomic(failures, self.failures_path, {"shard": os.path.basename(self.path)})
        if self.num_clamped:
            log.warning("%d feature values exceeded float16's range and were clamped to ±%g",
                        self.num_clamped, FLOAT16_MAX)
        return False

    def add(self, image_ids, sizes, counts, num_given, boxes, scores, classes, features,
            attributes=None, attribute_scores=None):
        """Append B images. sizes: (B, 2) (H, W); counts, num_given: (B,); boxes (S, 4),
        scores (S,), classes (S,), features (S, D) with S = counts.sum(), image by image.
        attributes (S,) int ids in [0, vocabularies.attributes.classes), attribute_scores (S,):
        each box's best attribute and its probability; both None (null) without an attribute
        head, for every row of a shard or for none."""
        counts = np.asarray(counts, dtype=np.int32)
        if (attributes is None) != (attribute_scores is None):
            raise ValueError("give both attributes and attribute_scores, or neither")
        with_attributes = attributes is not None
        if self._with_attributes is None:
            self._with_attributes = with_attributes
        elif self._with_attributes != with_attributes:
            raise ValueError("attributes given for some batches of a shard but not for others")
        features = np.asarray(features)
        if features.shape[1:] != (self.feature_dim,) or len(features) != counts.sum():
            raise ValueError(f"features {features.shape} do not match counts {counts.sum()}×{self.feature_dim}")
        np_dtype = FEATURE_DTYPES[self.feature_dtype]
        if np_dtype is np.float16:
            over = np.abs(features) > FLOAT16_MAX
            if over.any():
                self.num_clamped += int(over.sum())
                features = np.clip(features, -FLOAT16_MAX, FLOAT16_MAX)
        sizes = np.asarray(sizes).reshape(-1, 2)
        offsets = np.zeros(len(counts) + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        offsets = pa.array(offsets)
        boxes = pa.array(np.asarray(boxes, dtype=np.float32).reshape(-1))
        if with_attributes:
            attributes = np.asarray(attributes).reshape(-1)
            attribute_scores = np.asarray(attribute_scores, dtype=np.float32).reshape(-1)
            total = int(counts.sum())
            if len(attributes) != total or len(attribute_scores) != total:
                raise ValueError(f"{len(attributes)} attributes and {len(attribute_scores)} attribute "
                                 f"scores do not match counts {total}")
            if len(attributes) and not np.issubdtype(attributes.dtype, np.integer):
                raise ValueError(f"attributes must be integer ids, got {attributes.dtype}")
            if len(attributes) and not (0 <= attributes.min() and attributes.max() < self._num_attributes):
                raise ValueError(f"attribute ids must be 0-based ids in the attribute vocabulary "
                                 f"([0, {self._num_attributes})), got [{attributes.min()}, {attributes.max()}]")
            attribute_columns = [
                pa.ListArray.from_arrays(offsets, pa.array(attributes.astype(np.int32))),
                pa.ListArray.from_arrays(offsets, pa.array(attribute_scores)),
            ]
        else:
            attribute_columns = [pa.nulls(len(counts), pa.list_(pa.int32())),
                                 pa.nulls(len(counts), pa.list_(pa.float32()))]
        table = pa.Table.from_arrays([
            pa.array(list(image_ids), pa.string()),
            pa.array(sizes[:, 1].astype(np.int32)), pa.array(sizes[:, 0].astype(np.int32)),
            pa.array(counts), pa.array(np.asarray(num_given, dtype=np.int32)),
            pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(boxes, 4)),
            pa.ListArray.from_arrays(offsets, pa.array(np.asarray(scores, dtype=np.float32).reshape(-1))),
            pa.ListArray.from_arrays(offsets, pa.array(np.asarray(classes, dtype=np.int32).reshape(-1))),
            *attribute_columns,
            _blobs(np.ascontiguousarray(features, dtype=np_dtype), counts),
        ], schema=self.schema)
        self._pending.append(table)
        self._pending_rows += len(counts)
        self.num_rows += len(counts)
        if self._pending_rows >= self.row_group_size:
            self._flush(final=False)

    def add_failures(self, failures):
        """failures: iterable of (image_id, path, reason)."""
        for image_id, path, reason in failures:
            log.warning("failed: %s (%s): %s", image_id, path, reason)
            self._failures.append((str(image_id), str(path), str(reason)))

    @property
    def num_failures(self):
        return len(self._failures)

    def _flush(self, final=True):
        """Write the pending rows as row groups of row_group_size images; keep the remainder
        pending unless final."""
        if not self._pending_rows:
            return
        table = pa.concat_tables(self._pending)
        n = len(table) if final else len(table) // self.row_group_size * self.row_group_size
        self._writer.write_table(table.slice(0, n), row_group_size=self.row_group_size)
        rest = table.slice(n)
        self._pending, self._pending_rows = ([rest] if len(rest) else []), len(rest)


def _blobs(features, counts):
    """One large_binary value per image: the bytes of its (n_i, D) rows, without a copy."""
    row_bytes = features.shape[1] * features.itemsize
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(np.asarray(counts, np.int64) * row_bytes, out=offsets[1:])
    return pa.Array.from_buffers(pa.large_binary(), len(counts),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(features)])


# ---------------------------------------------------------------- the index of a dataset's shards
_SHARD_NAME = re.compile(r"shard-(\d+)\.parquet$")
# Metadata that must agree between the shards of one dataset.
_MUST_MATCH = ("schema_version", "feature_dim", "feature_dtype", "weights_checksum", "boxes")
_DETECTOR_MUST_MATCH = ("config_yaml", "weights_checksum")


def shard_number(path):
    match = _SHARD_NAME.search(os.path.basename(path))
    if not match:
        raise ValueError(f"not a shard file name (shard-NNNNN.parquet): {path}")
    return int(match.group(1))


def build_index(shard_paths):
    """(index table, metadata dict) for the given shard files."""
    shard_paths = sorted(shard_paths, key=shard_number)
    numbers = [shard_number(p) for p in shard_paths]
    if len(set(numbers)) != len(numbers):
        raise ValueError("the same shard number appears twice")
    reference, columns, ids, shard_col, row_col, failures, metas = None, None, [], [], [], 0, []
    for number, path in zip(numbers, shard_paths):
        meta = read_shard_metadata(path)
        metas.append(meta)
        names = pq.read_schema(path).names
        if reference is None:
            reference, columns = meta, names
        else:
            _check_same(reference, meta, path)
            if names != columns:  # e.g. a shard from before the attribute columns among newer ones
                raise ValueError(f"{path}: columns {names} differ from the first shard's {columns}; "
                                 "re-extract it")
        column = pq.read_table(path, columns=["image_id"]).column("image_id").to_numpy(zero_copy_only=False)
        ids.append(column)
        shard_col.append(np.full(len(column), number, dtype=np.int32))
        row_col.append(np.arange(len(column), dtype=np.int32))
        fail_path = failures_path_for(path)
        if os.path.exists(fail_path):
            failures += pq.read_metadata(fail_path).num_rows
    image_ids = np.concatenate(ids) if ids else np.array([], dtype=object)
    unique, counts = np.unique(image_ids.astype(str), return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"image ids in more than one row: {unique[counts > 1][:5].tolist()}")
    check_coverage(metas)
    table = pa.table({
        "image_id": pa.array(image_ids.tolist(), pa.string()),
        "shard": pa.array(np.concatenate(shard_col) if shard_col else [], pa.int32()),
        "row": pa.array(np.concatenate(row_col) if row_col else [], pa.int32()),
    })
    reference = dict(reference or {})
    for key in ("shard", "manifest_rows", "manifest_num_rows"):
        reference.pop(key, None)
    reference.update({
        "vocabularies": reference.get("vocabularies"),
        "shards": {str(n): os.path.basename(p) for n, p in zip(numbers, shard_paths)},
        "num_images": len(image_ids),
        "num_failures": failures,
    })
    return table, reference


def check_coverage(metas):
    """The shards' manifest row ranges must tile the whole manifest they were cut from. They do
    not when the manifest changed after the run planned its shards: Snakemake counts them from
    the manifest checkpoint's output as it was when the run started."""
    if not metas or any("manifest_num_rows" not in m for m in metas):
        return  # shards written before the total was recorded
    totals = {m["manifest_num_rows"] for m in metas}
    ranges = sorted(tuple(m["manifest_rows"]) for m in metas)
    starts, stops = [r[0] for r in ranges], [r[1] for r in ranges]
    if len(totals) != 1 or starts != [0, *stops[:-1]] or stops[-1] != next(iter(totals)):
        raise ValueError(f"the shards cover manifest rows {ranges} of {sorted(totals)}: the manifest changed "
                         "after this run planned its shards (they are counted from the manifest as it was when "
                         "the run started). Run the same command again: the shards already extracted are kept.")


def _check_same(reference, meta, path):
    for key in _MUST_MATCH:
        if reference.get(key) != meta.get(key):
            raise ValueError(f"{path}: {key} differs from the first shard "
                             f"({meta.get(key)!r} vs {reference.get(key)!r}); re-extract it")
    if _vocabulary_checksums(reference) != _vocabulary_checksums(meta):
        raise ValueError(f"{path}: vocabularies differ from the first shard "
                         f"({_vocabulary_checksums(meta)} vs {_vocabulary_checksums(reference)}); re-extract it")
    for key in _DETECTOR_MUST_MATCH:
        if reference.get("detector", {}).get(key) != meta.get("detector", {}).get(key):
            raise ValueError(f"{path}: detector {key} differs from the first shard; re-extract it")
    if reference.get("code_version") != meta.get("code_version"):
        log.warning("%s was written by %s, the first shard by %s", path, meta.get("code_version"),
                    reference.get("code_version"))


def _vocabulary_checksums(meta):
    """{vocabulary name: sha256} of a shard's `vocabularies` (none: {})."""
    vocabularies = meta.get("vocabularies") or {}
    return {name: (v or {}).get("sha256") for name, v in sorted(vocabularies.items()) if v}
