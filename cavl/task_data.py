"""Task examples: one Parquet per split → ``resources/tasks/{task}/{split}.parquet``.

    python -m cavl.task_data --task vqa --spec '<JSON {source: config["datasets"][source]}>' \
        --out-dir resources/tasks/vqa
    python -m cavl.task_data --task vqa --split val --spec '…' \
        --out resources/tasks/vqa/val.parquet        # one split (the Snakemake rule)

Pretraining's tables are made here; every other task's come from its cavl.tasks.REGISTRY entry
(sources, fixed splits, reader, columns). The workflow declares outputs with :func:`task_splits`.
Schemas (docs/contracts.md): TASK_SCHEMAS.
"""

import argparse
import os
import sys

import pyarrow as pa

from cavl.formats import coco, flickr30k, vg
from cavl.formats._common import spec_get
from cavl.formats.errors import FormatError, SpecError
from cavl.io import write_parquet_atomic
from cavl.manifest import parse_spec
from cavl.tasks import REGISTRY, table_reader

# Tasks with tables of their own: pretraining, then the registered tasks (zs_tir reads tir's).
OWN_TABLES = {name: entry for name, entry in REGISTRY.items() if not entry.tables}
TASK_SOURCES = {
    "pretrain": ("coco", "vg"),  # either or both
    **{name: entry.sources for name, entry in OWN_TABLES.items()},
}
TASKS = tuple(TASK_SOURCES)

_str, _i32, _i64 = pa.string(), pa.int32(), pa.int64()
_boxes = pa.list_(pa.list_(pa.float32()))
COLUMN_TYPES = {"string": _str, "int32": _i32, "int64": _i64, "bool": pa.bool_(),
                "list<string>": pa.list_(_str), "list<list<float32>>": _boxes}


def _schema(*fields):
    # nullable fields: nulls appear only where contracts.md allows them (e.g. an unlabelled split)
    return pa.schema([pa.field(name, typ) for name, typ in fields])


TASK_SCHEMAS = {
    "pretrain": _schema(("example_id", _str), ("dataset", _str),
                        ("image_id", _str), ("caption", _str)),
    **{name: _schema(*((column, COLUMN_TYPES[typ]) for column, typ in entry.columns))
       for name, entry in OWN_TABLES.items()},
}

FIXED_SPLITS = {name: list(entry.splits) for name, entry in OWN_TABLES.items() if entry.splits}


def _check_task(task):
    if task not in TASK_SOURCES:
        raise SpecError(f"unknown task {task!r} (expected one of {', '.join(TASKS)})")


def task_splits(task, datasets_config):
    """The splits `task` writes, given config["datasets"] (at least the task's sources); reads no
    files. pretrain: ``train`` (VG's region descriptions join it) and COCO's caption splits;
    vqa/vcr/nlvr2: the configured splits; rpg/tir: train, val, test."""
    _check_task(task)
    if task in FIXED_SPLITS:
        return list(FIXED_SPLITS[task])
    if task == "pretrain":
        _pretrain_sources(datasets_config)
        splits = []
        if "coco" in datasets_config:
            splits = list(spec_get(datasets_config["coco"], "captions", "datasets.coco", dict))
        return splits if "train" in splits else ["train"] + splits
    source = TASK_SOURCES[task][0]
    splits = spec_get(spec_get(datasets_config, source, "datasets"), "splits",
                      f"datasets.{source}", dict)
    if not splits:
        raise SpecError(f"datasets.{source}.splits: no splits configured")
    return list(splits)


def _pretrain_sources(datasets_config):
    """The caption sources (coco, vg) present in `datasets_config`; at least one."""
    sources = [d for d in TASK_SOURCES["pretrain"] if d in datasets_config]
    if not sources:
        raise SpecError("pretraining needs datasets.coco or datasets.vg (neither is given)")
    return sources


def eval_image_ids(datasets_config, vg_spec):
    """(COCO ids, Flickr30k ids) of the evaluation images of `datasets.vg.exclude_eval_images`:
    COCO's in every captions split but train, Flickr30k's Karpathy val and test."""
    names = vg_spec.get("exclude_eval_images") or []
    unknown = set(names) - {"coco", "flickr30k"}
    if unknown:
        raise SpecError(f"datasets.vg.exclude_eval_images: unknown dataset(s) {sorted(unknown)} "
                        "(coco, flickr30k)")
    coco_ids, flickr_ids = set(), set()
    if "coco" in names:
        captions = spec_get(spec_get(datasets_config, "coco", "--spec"), "captions", "datasets.coco", dict)
        for name, entry in captions.items():
            if name != "train":
                images, _ = coco.read_captions(spec_get(entry, "annotations", f"datasets.coco.captions.{name}", str))
                coco_ids.update(str(im["id"]) for im in images)
    if "flickr30k" in names:
        spec = spec_get(datasets_config, "flickr30k", "--spec (datasets.vg.exclude_eval_images names it)")
        karpathy = flickr30k.read_karpathy(spec_get(spec, "karpathy_split", "datasets.flickr30k", str))
        flickr_ids.update(im["image_id"] for im in karpathy if im["split"] != "train")
    return coco_ids, flickr_ids


def task_rows(task, datasets_config, split=None):
    """{split: rows} of `task`: every split of task_splits, or only `split`."""
    _check_task(task)
    if task != "pretrain":
        for source in TASK_SOURCES[task]:
            spec_get(datasets_config, source, "--spec")
    splits = task_splits(task, datasets_config)
    if split is not None:
        if split not in splits:
            raise SpecError(f"task {task} has no split {split!r} "
                            f"(configured: {', '.join(splits)})")
        splits = [split]
    if task == "pretrain":
        sources = _pretrain_sources(datasets_config)
        captions = datasets_config["coco"]["captions"] if "coco" in sources else {}
        out = {}
        for split in splits:
            rows = []
            if split in captions:
                rows += coco.caption_rows(spec_get(captions[split], "annotations",
                                                   f"datasets.coco.captions.{split}", str))
            if split == "train" and "vg" in sources:
                vg_spec = datasets_config["vg"]
                image_data = spec_get(vg_spec, "image_data", "datasets.vg", str)
                vg_rows = vg.caption_rows(spec_get(vg_spec, "region_descriptions", "datasets.vg", str),
                                          image_data)
                held_out = vg.images_also_in(image_data, *eval_image_ids(datasets_config, vg_spec))
                kept = [r for r in vg_rows if r["image_id"] not in held_out]
                rows += kept
                print(f"pretrain train: left out {len(held_out)} VG images ({len(vg_rows) - len(kept)} of "
                      f"{len(vg_rows)} region descriptions) that are evaluation images of "
                      f"{', '.join(vg_spec.get('exclude_eval_images') or []) or 'no dataset'}", file=sys.stderr)
            out[split] = rows
        return out
    source = TASK_SOURCES[task][0]
    return table_reader(task)(datasets_config[source], splits, f"datasets.{source}")


def build_task(task, datasets_config, out_dir=None, split=None, out=None):
    """Write ``{out_dir}/{split}.parquet`` for every split, or only `split` (to `out` if given)
    → {split: row count}. All splits are read and checked before any file is written."""
    if split is None and out is not None:
        raise SpecError("--out needs --split (use --out-dir for all splits)")
    if out is None and out_dir is None:
        raise SpecError("give --out-dir, or --split with --out")
    tables = {name: pa.Table.from_pylist(rows, schema=TASK_SCHEMAS[task])
              for name, rows in task_rows(task, datasets_config, split).items()}
    for name, table in tables.items():
        path = out if out is not None else os.path.join(out_dir, f"{name}.parquet")
        write_parquet_atomic(table, path, metadata={"task": task, "split": name})
    return {name: t.num_rows for name, t in tables.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cavl.task_data",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--spec", required=True,
                        help='JSON {source: config["datasets"][source]} (or @file holding it)')
    parser.add_argument("--out-dir", help="write {out-dir}/{split}.parquet for every split")
    parser.add_argument("--split", help="write only this split (to --out, or into --out-dir)")
    parser.add_argument("--out", help="output parquet path of --split")
    args = parser.parse_args(argv)
    if args.out_dir is None and args.out is None:
        parser.error("give --out-dir, or --split with --out")
    try:
        counts = build_task(args.task, parse_spec(args.spec), args.out_dir, args.split, args.out)
    except (FormatError, SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{s} {n}" for s, n in counts.items())
    print(f"{args.task}: {summary} → {args.out or args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
