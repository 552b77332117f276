"""Index of a dataset's feature shards: image_id → (shard, row).

    python -m extract.gather --shards resources/features/coco/shard-*.parquet \\
        --out resources/features/coco/index.parquet

Reads only each shard's footer and image_id column. Refuses shards extracted with different
detectors, weights, box settings or feature layouts (mixing them would silently corrupt training)
and duplicate image ids; a different code version is only warned about. The shards must also
agree on their label vocabularies (`vocabularies`: the same files by sha256, or all none). The
index's metadata repeats the shards' common metadata (`vocabularies` included: null for shards
without one, e.g. those written before shards had attribute columns) plus the shard file names
and failure counts.
"""

import argparse
import logging
import os
import re
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cavl.io import write_parquet_atomic
from extract.writer import failures_path_for, read_shard_metadata

log = logging.getLogger("extract.gather")

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


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m extract.gather", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", nargs="+", required=True, help="the dataset's shard-NNNNN.parquet files")
    p.add_argument("--out", required=True, help="index Parquet to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    table, metadata = build_index(args.shards)
    write_parquet_atomic(table, args.out, metadata)
    log.info("indexed %d images from %d shards (%d failures) into %s", metadata["num_images"],
             len(args.shards), metadata["num_failures"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
