"""Image manifests: one row per image of a dataset → ``resources/manifests/{dataset}.parquet``.

    python -m cavl.manifest --dataset coco --spec '<JSON of config["datasets"]["coco"]>' \
        --out resources/manifests/coco.parquet

Schema (docs/contracts.md): image_id str, path str, width/height int32,
gt_boxes list<list<float32>>, gt_box_labels list<str>.
"""

import argparse
import json
import sys

import pyarrow as pa

from cavl.formats import coco, flickr30k, nlvr2, vcr, vg
from cavl.formats._common import spec_get
from cavl.formats.errors import FormatError, SpecError
from cavl.io import write_parquet_atomic

MANIFEST_SCHEMA = pa.schema([
    pa.field("image_id", pa.string()),
    pa.field("path", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("gt_boxes", pa.list_(pa.list_(pa.float32()))),
    pa.field("gt_box_labels", pa.list_(pa.string())),
])

DATASETS = ("coco", "vg", "flickr30k", "nlvr2", "vcr")


def _splits(spec, where):
    splits = spec_get(spec, "splits", where, dict)
    if not splits:
        raise SpecError(f"{where}.splits: no splits configured")
    for name, value in splits.items():
        if not isinstance(value, str):
            raise SpecError(f"{where}.splits.{name}: must be a file path")
    return splits


def manifest_rows(dataset, spec):
    """Rows (dicts) of the manifest of `dataset` given its config.yaml `datasets` entry."""
    where = f"datasets.{dataset}"
    if dataset == "coco":
        captions = spec_get(spec, "captions", where, dict)
        if not captions:
            raise SpecError(f"{where}.captions: no splits configured")
        pairs = []
        for split, entry in captions.items():
            w = f"{where}.captions.{split}"
            pairs.append((spec_get(entry, "annotations", w, str), spec_get(entry, "images", w, str),
                          entry.get("instances")))
        return coco.manifest_rows(pairs)
    if dataset == "vg":
        return vg.manifest_rows(spec_get(spec, "image_data", where, str),
                                spec_get(spec, "image_root", where, str), spec.get("objects"))
    if dataset == "flickr30k":
        return flickr30k.manifest_rows(spec_get(spec, "karpathy_split", where, str),
                                       spec_get(spec, "image_root", where, str),
                                       spec_get(spec, "entities_root", where, str))
    if dataset == "nlvr2":
        return nlvr2.manifest_rows(_splits(spec, where), spec_get(spec, "image_root", where, str))
    if dataset == "vcr":
        return vcr.manifest_rows(list(_splits(spec, where).values()),
                                 spec_get(spec, "image_root", where, str))
    raise SpecError(f"unknown dataset {dataset!r} (expected one of {', '.join(DATASETS)})")


def build_table(rows):
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def build_manifest(dataset, spec, out):
    """Read the dataset's official files and write its manifest atomically; → row count."""
    table = build_table(manifest_rows(dataset, spec))
    write_parquet_atomic(table, out, metadata={"dataset": dataset})
    return table.num_rows


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
    args = parser.parse_args(argv)
    try:
        n = build_manifest(args.dataset, parse_spec(args.spec), args.out)
    except (FormatError, SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: {n} images → {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
