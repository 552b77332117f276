"""Atomic file writing: a file appears under its final name only when it is complete."""

import json
import os
import tempfile
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds.

    A crash (or exception) inside the block leaves no file at `path`, and no temp file behind
    when Python gets to clean up; a SIGKILL leaves at most a hidden `.{name}.*.tmp` sibling.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_parquet_atomic(table, path, metadata=None):
    """Write a pyarrow Table or pandas DataFrame to `path` atomically.

    `metadata`: optional dict of str → JSON-serialisable values, stored in the file's schema
    metadata (each value JSON-encoded) so plain pyarrow can read it back.
    """
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): json.dumps(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_json_atomic(obj, path):
    """Write `obj` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
