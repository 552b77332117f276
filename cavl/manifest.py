"""Image manifests: one row per image of a dataset → ``resources/manifests/{dataset}.parquet``.

    python -m cavl.manifest --dataset coco --spec '<JSON of config["datasets"]["coco"]>' \
        --out resources/manifests/coco.parquet
    python -m cavl.manifest --kind images --dataset my_photos \
        --spec '<JSON of config["datasets"]["images"]["my_photos"]>' \
        --out resources/manifests/my_photos.parquet

``--kind images``: a folder of the user's own images (cavl/formats/images.py; an unreadable
image header is listed with width/height 0 and recorded by the extraction as a failure).

Schema and the ``{out without .parquet}.missing.parquet`` table beside it (the images left out
by ``missing_images: skip``; empty with ``error``, the default): docs/contracts.md.
"""

import argparse
import json
import os
import sys

import pyarrow as pa

from cavl.formats import coco, flickr30k, images, nlvr2, vcr, vg
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
# official: one of DATASETS; images: an own-images dataset (config datasets.images.<name>).
KINDS = ("official", "images")


def dataset_key(dataset, kind="official"):
    """The config key of a dataset: ``datasets.coco``, ``datasets.images.my_photos``."""
    return f"datasets.images.{dataset}" if kind == "images" else f"datasets.{dataset}"


def missing_path(out):
    """Where the missing-images table of the manifest `out` goes: ``x.parquet`` →
    ``x.missing.parquet``."""
    return os.fspath(out).removesuffix(".parquet") + ".missing.parquet"


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


def _warn_unreadable(path, reason):
    print(f"warning: {path}: cannot read the image header ({reason}); listed with width/height 0, "
          "the extraction records it in its failures table", file=sys.stderr)


def manifest_rows(dataset, spec, on_missing=None, kind="official"):
    """Rows (dicts) of the manifest of `dataset` given its `datasets` entry (kind ``images``: a
    `datasets.images` entry). on_missing: None → a missing image file raises MissingImageError;
    else it is called with the error and the image left out (:class:`MissingImages`)."""
    if kind == "images":
        problem = images.name_problem(dataset)
        if problem:
            raise SpecError(f"{dataset_key(dataset, kind)}: {problem}")
        return images.manifest_rows(dataset, spec, on_missing, on_unreadable=_warn_unreadable)
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


def build_manifest(dataset, spec, out, missing_out=None, kind="official"):
    """Write the dataset's manifest and missing-images table (`missing_out`, default
    :func:`missing_path` of `out`) atomically → (row count, :class:`MissingImages`). With
    ``missing_images: error`` a missing image raises MissingImageError and nothing is written."""
    where = dataset_key(dataset, kind)
    mode = missing_images_mode(spec, where)
    missing = MissingImages()
    rows = manifest_rows(dataset, spec, missing if mode == "skip" else None, kind=kind)
    if not rows and len(missing):
        raise SpecError(f"{where}: all {len(missing)} listed images are missing (first: "
                        f"{missing.rows[0]['path']}); check the image folders")
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    kind_metadata = {"kind": kind} if kind != "official" else {}
    metadata = {"dataset": dataset, "missing_images": mode, **kind_metadata}
    write_parquet_atomic(missing.table(), missing_out or missing_path(out), metadata=metadata)
    write_parquet_atomic(table, out, metadata={"dataset": dataset, **kind_metadata})
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
    parser.add_argument("--dataset", required=True,
                        help=f"{', '.join(DATASETS)}; with --kind images, the name of the entry")
    parser.add_argument("--kind", choices=KINDS, default="official",
                        help="official (default): an official dataset; images: an entry of "
                             "datasets.images (a folder of your own images)")
    parser.add_argument("--spec", required=True,
                        help='JSON of config["datasets"][dataset] (or of config["datasets"]["images"]'
                             '[dataset]; or @file holding it)')
    parser.add_argument("--out", required=True, help="output parquet path")
    parser.add_argument("--missing-out", default=None,
                        help="missing-images table (default: OUT with .parquet → .missing.parquet)")
    args = parser.parse_args(argv)
    if args.kind == "official" and args.dataset not in DATASETS:
        parser.error(f"argument --dataset: invalid choice: {args.dataset!r} (choose from "
                     f"{', '.join(DATASETS)}, or give --kind images for your own images)")
    missing_out = args.missing_out or missing_path(args.out)
    key = dataset_key(args.dataset, args.kind)
    try:
        spec = parse_spec(args.spec)
        n, missing = build_manifest(args.dataset, spec, args.out, missing_out, kind=args.kind)
    except MissingImageError as e:
        print(f"error: {e} ({key}.missing_images: skip leaves missing "
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
