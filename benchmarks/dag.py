"""How long Snakemake takes to build the DAG of `pretrain` at paper scale (goal: ≤ 60 s).

    .venv/bin/python -m benchmarks.dag                     # shard sizes 64 (demo) and 2000 (paper)
    .venv/bin/python -m benchmarks.dag --shard-size 64 --repeats 3

Builds a scratch working folder for configs/paper.yaml whose inputs all exist and are up to
date: placeholder annotations, detector weights and vocabularies, manifests of paper size
(123,287 COCO and 108,077 VG images, no image files) and pretraining tables. A second case adds
every feature shard (empty placeholders), as when a run resumes. Then times `snakemake -n
pretrain` and prints the wall time, the jobs planned and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
PAPER_IMAGES = {"coco": 123_287, "vg": 108_077}
GOAL_S = 60.0


PAPER_INPUTS = (  # the files configs/paper.yaml names that `pretrain`'s DAG needs
    "data/coco/annotations/captions_train2014.json", "data/coco/annotations/captions_val2014.json",
    "data/vg/image_data.json", "data/vg/region_descriptions.json", "data/weights/faster_rcnn_from_caffe_attr.pkl",
    "extract/vocabularies/butd_vg/objects_vocab.txt", "extract/vocabularies/butd_vg/attributes_vocab.txt")


def synthetic_manifest(dataset: str, count: int) -> pa.Table:
    """`count` manifest rows of the contract's columns (no gt boxes, as for COCO and VG)."""
    ids = [str(i) for i in range(1, count + 1)]
    folder = {"coco": "data/coco/train2014", "vg": "data/vg/VG_100K"}[dataset]
    return pa.table({
        "image_id": ids,
        "path": [f"{folder}/{i}.jpg" for i in ids],
        "width": np.full(count, 640, dtype=np.int32),
        "height": np.full(count, 480, dtype=np.int32),
        "gt_boxes": pa.array([[]] * count, type=pa.list_(pa.list_(pa.float32()))),
        "gt_box_labels": pa.array([[]] * count, type=pa.list_(pa.string())),
    })


def build_workdir(folder: Path, shard_size: int, shards_exist: bool) -> Path:
    """The scratch folder: old inputs, newer manifests and tables (and, with `shards_exist`,
    placeholder feature shards newer still); returns the override config."""
    past = time.time() - 3600
    for path in (folder / p for p in PAPER_INPUTS):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n")
        os.utime(path, (past, past))  # older than everything made from them
    for dataset, count in PAPER_IMAGES.items():
        out = folder / f"resources/manifests/{dataset}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(synthetic_manifest(dataset, count), out)
        # every output of the checkpoint must exist, or Snakemake leaves it unresolved in a dry run
        pq.write_table(synthetic_manifest(dataset, 0), out.with_suffix(".missing.parquet"))
        if shards_exist:
            features = folder / f"resources/features/{dataset}"
            features.mkdir(parents=True, exist_ok=True)
            for k in range(-(-count // shard_size)):
                for suffix in ("parquet", "failures.parquet"):
                    (features / f"shard-{k:05d}.{suffix}").touch()
    tables = pa.table({"example_id": ["0"], "dataset": ["coco"], "image_id": ["1"], "caption": ["a"]})
    for split in ("train", "val"):
        out = folder / f"resources/tasks/pretrain/{split}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(tables, out)
    override = folder / "bench.yaml"
    override.write_text(f"extract:\n  shard_size: {shard_size}\n")
    return override


def time_dry_run(folder: Path, override: Path) -> tuple[float, str]:
    """Wall seconds of `snakemake -n pretrain` and its output."""
    command = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(folder), "-n", "pretrain",
               "--configfile", str(ROOT / "config.yaml"), str(ROOT / "configs/paper.yaml"), str(override)]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    elapsed = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"snakemake -n pretrain failed:\n{output[-4000:]}")
    return elapsed, output


def planned(output: str) -> dict[str, int]:
    """Jobs per rule from the dry run's job-stats table."""
    counts = {}
    for line in output.split("Job stats:")[-1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line)
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dag", description=__doc__.split("\n")[0])
    p.add_argument("--shard-size", type=int, action="append",
                   help="images per extraction job (repeatable; default: 64 and 2000)")
    p.add_argument("--repeats", type=int, default=1, help="dry runs per shard size (the best is reported)")
    args = p.parse_args(argv)
    print("snakemake -n pretrain, paper-size manifests: "
          + ", ".join(f"{d} {n:,} images" for d, n in PAPER_IMAGES.items()))
    worst = 0.0
    cases = [(size, False) for size in args.shard_size or [64, 2000]]
    cases.insert(1, (cases[0][0], True))
    for shard_size, shards_exist in cases:
        with tempfile.TemporaryDirectory(prefix="cavl-bench-dag-") as tmp:
            folder = Path(tmp)
            override = build_workdir(folder, shard_size, shards_exist)
            runs = [time_dry_run(folder, override) for _ in range(args.repeats)]
        times, jobs = [t for t, _ in runs], planned(runs[-1][1])
        expected = 0 if shards_exist else sum(-(-n // shard_size) for n in PAPER_IMAGES.values())
        if jobs.get("extract_shard", 0) != expected or jobs.get("pretrain") != 1:
            raise SystemExit(f"unexpected plan for shard size {shard_size}: {jobs} "
                             f"(expected {expected} extract_shard jobs and pretrain)")
        best = min(times)
        worst = max(worst, best)
        state = "shards exist " if shards_exist else "no features  "
        print(f"shard_size {shard_size:>5}, {state}: {jobs['total']:>5} jobs "
              f"({jobs.get('extract_shard', 0)} extract_shard) "
              f"DAG + dry run {best:6.1f} s (runs: {', '.join(f'{t:.1f}' for t in times)}); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"slowest: {worst:.1f} s — goal ≤ {GOAL_S:.0f} s: {'met' if worst <= GOAL_S else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
