"""Benchmarks of feature extraction and reading; prints figures.

    python -m benchmarks.extraction                      # defaults: modest sizes, ~minutes on 2 CPU cores
    python -m benchmarks.extraction --rss-images 1000    # the full peak-RSS check

1. Throughput of one model on the same images: the pipeline (`run_shard`: decoding in workers,
   batched forward, Parquet writing) against a DefaultPredictor-style per-image loop (goal ≥ 1.0×)
   and the bare batched forward over pre-decoded batches (goal ≥ 0.9×). CUDA when present.
2. Peak RSS of `python -m extract` for a shard of --rss-images images and a quarter of that.
3. RegionReader's read throughput against reading the files' bytes raw (goal ≥ 0.5× raw).
"""

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from cavl.testing import write_manifest, write_scenes
from extract.boxes import BoxConfig
from extract.detector import DetectorConfig, RegionExtractor
from extract.images import ImageDataset, Resize, collate, configure_pil
from extract.shard import PerImagePredictor, run_shard


def _cpu_seconds():
    """CPU time of this process and of its reaped children (DataLoader workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _measure(n, fn):
    """(images per wall-clock second, CPU seconds per image) of one run of `fn` over n images."""
    t, c = time.perf_counter(), _cpu_seconds()
    fn()
    return n / (time.perf_counter() - t), (_cpu_seconds() - c) / n


def bench_throughput(args, workdir):
    sizes = [(args.height, args.width)] * args.images
    rows = write_scenes(os.path.join(workdir, "images"), sizes, seed=0)
    manifest = write_manifest(os.path.join(workdir, "manifest.parquet"), rows)
    extractor = RegionExtractor(
        DetectorConfig(config=args.detector_config, weights=args.weights, min_size=args.min_size,
                       max_size=args.max_size, proposals=args.proposals, device=args.device,
                       opts=tuple(args.opts)),
        BoxConfig(max_boxes=args.max_boxes))
    print(f"\n## Throughput: {extractor.dcfg.config}, {extractor.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if extractor.device.type == 'cuda' else ''}, "
          f"weights {'random' if not args.weights else args.weights}, amp={extractor.amp}, "
          f"{args.images} JPEGs {args.width}x{args.height} -> input {extractor.min_size}/{extractor.max_size} px, "
          f"batch {args.batch_size}, {args.workers} workers, torch threads {torch.get_num_threads()}")

    dataset = ImageDataset([(r["image_id"], r["path"], None) for r in rows],
                           Resize(extractor.min_size, extractor.max_size), extractor.input_format)
    batches = [collate([dataset[i] for i in range(k, min(k + args.batch_size, len(rows)))],
                       extractor.size_divisibility) for k in range(0, len(rows), args.batch_size)]
    predictor = PerImagePredictor(extractor)
    sync = torch.cuda.synchronize if extractor.device.type == "cuda" else (lambda: None)

    def ceiling():
        for b in batches:
            extractor(b.images, b.input_sizes, None)
        sync()

    def per_image():
        for r in rows:
            predictor(r["path"])
        sync()

    forward_seconds = []

    class _Timed:
        """The extractor, timing its forward calls (to split the pipeline's time)."""

        def __getattr__(self, name):
            return getattr(extractor, name)

        def __call__(self, *a, **k):
            t = time.perf_counter()
            out = extractor(*a, **k)
            sync()
            forward_seconds.append(time.perf_counter() - t)
            return out

    def pipeline():
        run_shard(manifest, 0, os.path.join(workdir, "shard-00000.parquet"), None, None,
                  shard_size=len(rows), batch_size=args.batch_size, num_workers=args.workers,
                  extractor=_Timed())

    ceiling()  # warm-up (allocator, kernels)
    head = extractor.attribute_head
    if head is not None:
        print(f"  attribute head's share of the batched forward: {_attribute_share(head, ceiling, sync):.2%} "
              f"(goal <= 2%)")
    results = {"pipeline": [], "per-image loop": [], "ceiling": []}
    shares = []
    for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
        forward_seconds.clear()
        results["pipeline"].append(_measure(len(rows), pipeline))
        shares.append(sum(forward_seconds) * results["pipeline"][-1][0] / len(rows))
        results["per-image loop"].append(_measure(len(rows), per_image))
        results["ceiling"].append(_measure(len(rows), ceiling))
    best = {k: max(r for r, _ in v) for k, v in results.items()}
    cpu = {k: min(c for _, c in v) for k, v in results.items()}
    for name, runs in results.items():
        print(f"  {name:15s} {best[name]:8.2f} images/s  {cpu[name]:6.2f} CPU s/image   "
              f"(runs: {', '.join(f'{r:.2f}' for r, _ in runs)} images/s)")
    print(f"  pipeline / per-image loop = {best['pipeline'] / best['per-image loop']:.2f}x images/s, "
          f"{cpu['per-image loop'] / cpu['pipeline']:.2f}x by CPU time (goal >= 1.0)")
    print(f"  pipeline / ceiling        = {best['pipeline'] / best['ceiling']:.2f}x images/s, "
          f"{cpu['ceiling'] / cpu['pipeline']:.2f}x by CPU time (goal >= 0.9)")
    print(f"  share of the pipeline's wall time spent in the batched forward: "
          f"{', '.join(f'{x:.1%}' for x in shares)} (the rest is start-up, waiting for data, writing)")
    print("  (best of the runs; CPU time counts decoding in the workers too and is steadier on a shared machine)")


def bench_train(args, workdir):
    """Seconds per detector-training iteration: extract.train's trainer against a plain
    Detectron2 DefaultTrainer on the same config and images, interleaved."""
    from detectron2.data import DatasetCatalog
    from detectron2.engine import DefaultTrainer
    from detectron2.structures import BoxMode

    from extract import train as T

    rows = write_scenes(os.path.join(workdir, "train_images"), [(args.height, args.width)] * args.images, seed=1)
    records = [{"file_name": r["path"], "image_id": r["image_id"], "source": "bench", "height": r["height"],
                "width": r["width"], "annotations": [
                    {"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": k % 2, "attributes": [1 + k % 3]}
                    for k, b in enumerate(r["gt_boxes"])]} for r in rows]
    vocab = {}
    for kind, names in (("objects", "square\nellipse\n"), ("attributes", "red\ngreen\nblue\n")):
        vocab[kind] = os.path.join(workdir, f"{kind}_vocab.txt")
        with open(vocab[kind], "w") as f:
            f.write(names)
    detector = {"config": args.detector_config, "opts": args.opts, "device": args.device, "attributes": True,
                "min_size": args.min_size, "max_size": args.max_size}
    settings = {"init_weights": None, "opts": ["MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0"],
                "num_workers": 0, "batch_size": args.batch_size, "lr": 0.005, "iterations": args.train_iterations,
                "lr_steps": [], "warmup_iterations": 0, "checkpoint_every": args.train_iterations,
                "seed": 0, "gpus": 0}
    DatasetCatalog.register(T.TRAIN_DATASET, lambda: records)

    class Plain(DefaultTrainer):
        def build_writers(self):
            return []  # the default TensorBoard writer needs a package the pipeline does not install

    def ours(k):
        cfg = T.build_train_cfg(detector, settings, vocab, os.path.join(workdir, f"ours{k}"))
        T.train(cfg, records, log_every=args.train_iterations)

    def plain(k):
        cfg = T.build_train_cfg(detector, settings, vocab, os.path.join(workdir, f"plain{k}"))
        os.makedirs(cfg.OUTPUT_DIR)
        torch.manual_seed(0)
        trainer = Plain(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()

    print(f"\n## Detector training: {args.detector_config}, {args.images} images {args.width}x{args.height} -> "
          f"{args.min_size}/{args.max_size} px, batch {args.batch_size}, {args.train_iterations} iterations "
          f"(model build included), torch threads {torch.get_num_threads()}")
    times = {"extract.train": [], "plain DefaultTrainer": []}
    for k in range(args.repeats):
        for name, fn in (("extract.train", ours), ("plain DefaultTrainer", plain)):
            t = time.perf_counter()
            fn(k)
            times[name].append((time.perf_counter() - t) / args.train_iterations)
    for name, runs in times.items():
        print(f"  {name:22s} {min(runs):7.2f} s/iteration   (runs: {', '.join(f'{r:.2f}' for r in runs)})")
    print(f"  plain / extract.train = {min(times['plain DefaultTrainer']) / min(times['extract.train']):.2f}x "
          f"(goal >= 1.0: no overhead of ours)")


def _attribute_share(head, forward, sync):
    """Share of `forward`'s wall time spent in the attribute head (timed around each call)."""
    spent, predict = [], head.predict_attributes

    def timed(*a, **k):
        sync()
        t = time.perf_counter()
        out = predict(*a, **k)
        sync()
        spent.append(time.perf_counter() - t)
        return out

    head.predict_attributes = timed
    try:
        t = time.perf_counter()
        forward()
        total = time.perf_counter() - t
    finally:
        del head.predict_attributes  # back to the class's method
    return sum(spent) / total


def _run_logged(cmd, log_path):
    """Run a command; return (its summary line as a dict, peak RSS of it or its reaped children, MB)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    with open(log_path) as f:
        text = f.read()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{text[-3000:]}")
    summary = json.loads(text.rsplit("summary ", 1)[1].splitlines()[0])
    return summary, usage.ru_maxrss / 1024  # Linux reports kilobytes


def bench_rss(args, workdir):
    big = args.rss_images
    small = max(big // 4, 1)
    side = args.rss_size
    rows = write_scenes(os.path.join(workdir, "rss_images"), [(side, side)] * big, seed=1)
    print(f"\n## Memory of `python -m extract` (shards of {small} and {big} images {side}x{side}, "
          f"input {side} px, {args.max_boxes} boxes, batch {args.batch_size}, row groups of 64)")
    figures = {}
    for n in (small, big):
        manifest = write_manifest(os.path.join(workdir, f"rss_{n}.parquet"), rows[:n])
        cmd = [sys.executable, "-m", "extract", "--manifest", manifest, "--shard", "0", "--shard-size", str(n),
               "--out", os.path.join(workdir, f"rss_{n}", "shard-00000.parquet"),
               "--num-workers", str(args.workers), "--settings", json.dumps({
                   "detector": {"config": args.detector_config, "weights": args.weights, "device": args.device,
                                "min_size": side, "max_size": side, "proposals": args.proposals},
                   "boxes": {"max_boxes": args.max_boxes}, "batch_size": args.batch_size})]
        summary, peak = _run_logged(cmd, os.path.join(workdir, f"rss_{n}.log"))
        figures[n] = summary
        print(f"  {n:6d} images: peak RSS {peak:7.1f} MB (process and workers), main process "
              f"{summary['rss_mb_first_batch']:7.1f} MB after the first batch, {summary['rss_mb_end']:7.1f} MB "
              f"at the end  ({n / summary['seconds']:.2f} images/s incl. start-up)")
    growth = [figures[n]["rss_mb_end"] - figures[n]["rss_mb_first_batch"] for n in (small, big)]
    print(f"  growth during the shard: {growth[0]:+.1f} MB ({small} images), {growth[1]:+.1f} MB ({big} images); "
          f"end RSS {big} vs {small} images: {figures[big]['rss_mb_end'] - figures[small]['rss_mb_end']:+.1f} MB")


def bench_read(args, workdir):
    from cavl.data.regions import RegionReader
    from cavl.io import write_parquet_atomic
    from cavl.shards import ShardWriter, build_index

    n, boxes, dim, shards = args.read_images, args.read_boxes, args.read_dim, args.read_shards
    rng = np.random.default_rng(0)
    folder = os.path.join(workdir, "read")
    paths, per_shard = [], -(-n // shards)
    for k in range(shards):
        path = os.path.join(folder, f"shard-{k:05d}.parquet")
        ids = [f"img{i}" for i in range(k * per_shard, min((k + 1) * per_shard, n))]
        with ShardWriter(path, dim, "float16", {"feature_dim": dim, "feature_dtype": "float16"}) as w:
            for lo in range(0, len(ids), 16):
                chunk = ids[lo:lo + 16]
                count = len(chunk) * boxes
                w.add(chunk, np.full((len(chunk), 2), 480), np.full(len(chunk), boxes), np.zeros(len(chunk)),
                      rng.random((count, 4), np.float32) * 400, rng.random(count, np.float32),
                      rng.integers(0, 80, count), rng.standard_normal((count, dim), np.float32))
        paths.append(path)
    table, meta = build_index(paths)
    index = os.path.join(folder, "index.parquet")
    write_parquet_atomic(table, index, meta)
    file_bytes = sum(os.path.getsize(p) for p in paths)
    payload = n * boxes * (dim * 2 + 16)
    ids = table.column("image_id").to_pylist()
    print(f"\n## Feature reading: {n} images x {boxes} boxes x {dim}-d float16 in {shards} shards "
          f"({file_bytes / 1e6:.1f} MB on disk, warm page cache; the reader copies each image into a batch buffer)")

    def raw():
        for p in paths:
            with open(p, "rb") as f:
                f.read()

    def reader(order):
        # As a training loader would: look up each image and copy it into a batch buffer.
        r = RegionReader(index)
        batch_f, batch_b = np.zeros((boxes, dim), np.float16), np.zeros((boxes, 4), np.float32)
        total = 0
        for image_id in order:
            features, bxs, num = r.get(image_id)
            batch_f[:num], batch_b[:num] = features, bxs
            total += num
        assert total == n * boxes

    shuffled = list(rng.permutation(ids))
    timings = {"raw bytes": [], "reader, index order": [], "reader, random order": []}
    for _ in range(3):
        for name, fn in (("raw bytes", raw), ("reader, index order", lambda: reader(ids)),
                         ("reader, random order", lambda: reader(shuffled))):
            t = time.perf_counter()
            fn()
            timings[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in timings.items()}
    for name, t in best.items():
        print(f"  {name:22s} {n / t:10.0f} images/s  {file_bytes / t / 1e6:8.0f} MB/s (file bytes)"
              + ("" if name == "raw bytes" else f"  {payload / t / 1e6:8.0f} MB/s (arrays)"
                 + f"  = {best['raw bytes'] / t:.2f}x raw"))
    warm = RegionReader(index)
    for image_id in ids:
        warm.get(image_id)
    t = time.perf_counter()
    for image_id in shuffled:
        warm.get(image_id)
    dt = time.perf_counter() - t
    print(f"  lookups once shards are loaded (no copy): {n / dt:,.0f} images/s ({dt / n * 1e6:.1f} us per image)")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.extraction", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", "--detector-config", dest="detector_config", default=DetectorConfig.config,
                   help="model-zoo name or yaml path, e.g. extract/configs/butd_R101_C4_attr.yaml "
                   "(with --min-size 600 --max-size 1000: the published extraction size)")
    p.add_argument("--weights", default=None, help="checkpoint; default random init")
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=24, help="throughput: number of images")
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--min-size", type=int, default=224)
    p.add_argument("--max-size", type=int, default=373)
    p.add_argument("--proposals", type=int, default=300)
    p.add_argument("--max-boxes", type=int, default=36)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rss-images", type=int, default=1000, help="peak RSS: images in the big shard (0: skip)")
    p.add_argument("--rss-size", type=int, default=64, help="peak RSS: image side (small keeps it quick)")
    p.add_argument("--read-images", type=int, default=4000)
    p.add_argument("--read-boxes", type=int, default=36)
    p.add_argument("--read-dim", type=int, default=1024)
    p.add_argument("--read-shards", type=int, default=4)
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "rss", "read"])
    p.add_argument("--opts", nargs="*", default=[], help="detectron2 overrides of --config (KEY VALUE ...)")
    p.add_argument("--train", action="store_true",
                   help="only the detector-training benchmark (extract.train vs a plain DefaultTrainer)")
    p.add_argument("--train-iterations", type=int, default=10)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_pil()
    with tempfile.TemporaryDirectory(prefix="extract-bench-") as workdir:
        if args.train:
            bench_train(args, workdir)
            return 0
        if "throughput" not in args.skip:
            bench_throughput(args, workdir)
        if "rss" not in args.skip and args.rss_images:
            bench_rss(args, workdir)
        if "read" not in args.skip:
            bench_read(args, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
