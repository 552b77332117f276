"""Image manifests: one row per image of a dataset → ``resources/manifests/{dataset}.parquet``.

    python -m cavl.manifest --dataset coco --spec '<JSON of config["datasets"]["coco"]>' \
        --out resources/manifests/coco.parquet

Schema (docs/contracts.md): image_id str, path str, width/height int32,
gt_boxes list<list<float32>>, gt_box_labels list<str>.

Beside it, every build also writes ``{out without .parquet}.missing.parquet`` (e.g.
``resources/manifests/vg.missing.parquet``): the listed images whose file is missing and that
were left out because the spec says ``missing_images: skip`` (columns image_id, path = the
expected file, source = the annotation file, record = where in it, reason). With
``missing_images: error`` (the default) a missing image fails the build, and the table is
written empty.
"""

import argparse
import json
import os
import sys

import pyarrow as pa

from cavl.formats import coco, flickr30k, nlvr2, vcr, vg
from cavl.formats._common import spec_get
from cavl.formats.errors import FormatError, MissingImageError, SpecError
from cavl.io import write_parquet_atomic

MANIFEST_SCHEMA = pa.schema([
    pa.field("image_id", pa.string()),
    pa.field("path", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("gt_boxes", pa.list_(pa.list_(pa.float32()))),
    pa.field("gt_box_labels", pa.list_(pa.string())),
])

MISSING_SCHEMA = pa.schema([
    pa.field("image_id", pa.string()),
    pa.field("path", pa.string()),
    pa.field("source", pa.string()),
    pa.field("record", pa.string()),
    pa.field("reason", pa.string()),
])

DATASETS = ("coco", "vg", "flickr30k", "nlvr2", "vcr")
MISSING_IMAGES = ("error", "skip")


def missing_path(out):
    """Where the missing-images table of the manifest `out` goes: ``x.parquet`` →
    ``x.missing.parquet``."""
    out = os.fspath(out)
    base = out[:-len(".parquet")] if out.endswith(".parquet") else out
    return base + ".missing.parquet"


def missing_images_mode(spec, where):
    """The spec's ``missing_images``: ``error`` (default) or ``skip``."""
    value = spec.get("missing_images") if isinstance(spec, dict) else None
    if value is None:
        return "error"
    if value not in MISSING_IMAGES:
        raise SpecError(f"{where}.missing_images: must be one of {', '.join(MISSING_IMAGES)}, "
                        f"got {value!r}")
    return value


class MissingImages:
    """Collects the images a reader reports missing (its ``on_missing`` callback)."""

    def __init__(self):
        self.rows = []

    def __call__(self, error: MissingImageError):
        self.rows.append({"image_id": error.image_id, "path": error.image_path,
                          "source": error.path, "record": error.record,
                          "reason": error.message})

    def __len__(self):
        return len(self.rows)

    def table(self):
        return pa.Table.from_pylist(self.rows, schema=MISSING_SCHEMA)


def _folder(spec, key, where):
    """spec[key], a folder that must exist (else a skip would leave out every image)."""
    folder = spec_get(spec, key, where, str)
    if not os.path.isdir(folder):
        raise SpecError(f"{where}.{key}: image folder not found: {folder}")
    return folder


def _splits(spec, where):
    splits = spec_get(spec, "splits", where, dict)
    if not splits:
        raise SpecError(f"{where}.splits: no splits configured")
    for name, value in splits.items():
        if not isinstance(value, str):
            raise SpecError(f"{where}.splits.{name}: must be a file path")
    return splits


def manifest_rows(dataset, spec, on_missing=None):
    """Rows (dicts) of the manifest of `dataset` given its config.yaml `datasets` entry.

    on_missing: None → a listed image whose file is missing raises MissingImageError;
    else it is called with that error and the image is left out (:class:`MissingImages`).
    """
    where = f"datasets.{dataset}"
    if dataset == "coco":
        captions = spec_get(spec, "captions", where, dict)
        if not captions:
            raise SpecError(f"{where}.captions: no splits configured")
        pairs = []
        for split, entry in captions.items():
            w = f"{where}.captions.{split}"
            pairs.append((spec_get(entry, "annotations", w, str), _folder(entry, "images", w),
                          entry.get("instances")))
        return coco.manifest_rows(pairs, on_missing)
    if dataset == "vg":
        return vg.manifest_rows(spec_get(spec, "image_data", where, str),
                                _folder(spec, "image_root", where), spec.get("objects"),
                                on_missing)
    if dataset == "flickr30k":
        return flickr30k.manifest_rows(spec_get(spec, "karpathy_split", where, str),
                                       _folder(spec, "image_root", where),
                                       spec_get(spec, "entities_root", where, str), on_missing)
    if dataset == "nlvr2":
        return nlvr2.manifest_rows(_splits(spec, where),
                                   spec_get(spec, "image_root", where, (str, dict)), on_missing)
    if dataset == "vcr":
        return vcr.manifest_rows(list(_splits(spec, where).values()),
                                 _folder(spec, "image_root", where), on_missing)
    raise SpecError(f"unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)})")


def build_table(rows):
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def build_manifest(dataset, spec, out, missing_out=None):
    """Read the dataset's official files and write its manifest and missing-images table
    (`missing_out`, default :func:`missing_path` of `out`) atomically.

    → (row count, :class:`MissingImages`). With ``missing_images: error`` a missing image
    raises MissingImageError and nothing is written.
    """
    where = f"datasets.{dataset}"
    mode = missing_images_mode(spec, where)
    missing = MissingImages()
    rows = manifest_rows(dataset, spec, missing if mode == "skip" else None)
    if not rows and len(missing):
        raise SpecError(f"{where}: all {len(missing)} listed images are missing (first: "
                        f"{missing.rows[0]['path']}); check the image folders")
    table = build_table(rows)
    metadata = {"dataset": dataset, "missing_images": mode}
    write_parquet_atomic(missing.table(), missing_out or missing_path(out), metadata=metadata)
    write_parquet_atomic(table, out, metadata={"dataset": dataset})
    return table.num_rows, missing


def parse_spec(text):
    """The --spec argument: a JSON object, or ``@file`` holding one."""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise SpecError(f"--spec {text}: cannot read: {e.strerror or e}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"--spec: invalid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise SpecError("--spec: must be a JSON object")
    return spec


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cavl.manifest", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--spec", required=True,
                        help='JSON of config["datasets"][dataset] (or @file holding it)')
    parser.add_argument("--out", required=True, help="output parquet path")
    parser.add_argument("--missing-out", default=None,
                        help="missing-images table (default: OUT with .parquet → .missing.parquet)")
    args = parser.parse_args(argv)
    missing_out = args.missing_out or missing_path(args.out)
    try:
        spec = parse_spec(args.spec)
        n, missing = build_manifest(args.dataset, spec, args.out, missing_out)
    except MissingImageError as e:
        print(f"error: {e} (datasets.{args.dataset}.missing_images: skip leaves missing "
              f"images out)", file=sys.stderr)
        return 1
    except (FormatError, SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if len(missing) or spec.get("missing_images") == "skip":
        print(f"{args.dataset}: skipped {len(missing)} images whose file is missing "
              f"(missing_images: skip) → {missing_out}", file=sys.stderr)
    print(f"{args.dataset}: {n} images → {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
