"""Extract the region features of one shard of an image manifest.

    python -m extract --manifest resources/manifests/coco.parquet --shard 3 --shard-size 500 \\
        --out resources/features/coco/shard-00003.parquet --settings '{"boxes": {"max_boxes": 100}}'

Shard k holds manifest rows [k·S, (k+1)·S) with S = --shard-size (or S = ceil(rows / N) with
--num-shards N). Images are decoded and resized in DataLoader workers, run through the detector
a batch at a time, and streamed into the shard (cavl/shards.py), which appears only when
complete; unreadable images go to the failures table beside it. See `python -m extract -h`.
"""

import argparse
import glob
import hashlib
import logging
import math
import json
import os
import resource
import sys
import time
from dataclasses import asdict
from functools import partial

import numpy as np
import pyarrow.parquet as pq
import torch
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image

from cavl import shards as shard_format
from cavl.shards import FEATURE_DTYPES, ShardWriter, failures_path_for
from extract.boxes import BoxConfig
from extract.detector import DetectorConfig, RegionExtractor
from extract.images import MAX_IMAGE_PIXELS, Batch, ImageDataset, Resize, collate, configure_pil, worker_init

log = logging.getLogger("extract")


def code_version():
    """Package version + a checksum of extract/*.py and the shard writer (cavl/shards.py)."""
    digest = hashlib.sha256()
    for path in [*sorted(glob.glob(os.path.join(os.path.dirname(__file__), "*.py"))), shard_format.__file__]:
        with open(path, "rb") as f:
            digest.update(os.path.basename(path).encode() + b"\0" + f.read())
    try:
        from importlib.metadata import version

        package = version("cavl")
    except Exception:  # not installed (running from a bare checkout)
        package = "unknown"
    return f"cavl-{package}+extract.{digest.hexdigest()[:12]}"


def rss_mb():
    """Resident memory of this process now, MB (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def shard_range(num_rows, shard, shard_size=None, num_shards=None):
    """Manifest rows [start, stop) of `shard`."""
    if (shard_size is None) == (num_shards is None):
        raise ValueError("give exactly one of shard_size and num_shards")
    if shard_size is None:
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard} out of range for {num_shards} shards")
        shard_size = max(1, math.ceil(num_rows / num_shards))
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    start = shard * shard_size
    if shard < 0 or (start >= num_rows and shard > 0):
        raise ValueError(f"shard {shard} is past the end of a {num_rows}-image manifest")
    return start, min(start + shard_size, num_rows)


def read_manifest_rows(manifest, start, stop, with_boxes):
    columns = ["image_id", "path"] + (["gt_boxes"] if with_boxes else [])
    table = pq.read_table(manifest, columns=columns).slice(start, stop - start)
    ids, paths = table.column("image_id").to_pylist(), table.column("path").to_pylist()
    boxes = table.column("gt_boxes").to_pylist() if with_boxes else [None] * len(ids)
    return [(str(i), p, b) for i, p, b in zip(ids, paths, boxes)]


def remove_stale_temporaries(*paths):
    """Hidden temporaries a killed earlier run of this shard left (cavl.io.atomic_path names)."""
    for path in paths:
        directory, name = os.path.split(path)
        for stale in glob.glob(os.path.join(directory or ".", f".{glob.escape(name)}.*.tmp")):
            log.info("removing %s left by an interrupted run", stale)
            os.remove(stale)


def to_original_pixels(boxes, counts, input_sizes, orig_sizes):
    """Boxes (S, 4) in input pixels → original pixels, clipped to the image."""
    scale = (orig_sizes.float() / input_sizes.float()).flip(1).repeat(1, 2)  # (B, 4): W/w H/h W/w H/h
    limit = orig_sizes.float().flip(1).repeat(1, 2)  # (B, 4): W H W H
    per_box = torch.repeat_interleave(torch.arange(len(counts)), counts)
    return torch.minimum((boxes * scale[per_box]).clamp(min=0), limit[per_box])


class PerImagePredictor:
    """One image at a time, as Detectron2's DefaultPredictor runs (`read_image`, `ResizeShortestEdge`,
    a batch of one): the reference the batched pipeline is checked (tests) and timed against."""

    def __init__(self, extractor):
        self.extractor = extractor
        self.aug = T.ResizeShortestEdge([extractor.min_size, extractor.min_size], extractor.max_size)

    def __call__(self, path, gt_boxes=None):
        image = read_image(path, format=self.extractor.input_format)  # (H, W, 3) uint8
        H, W = image.shape[:2]
        transform = self.aug.get_transform(image)
        resized = transform.apply_image(image)
        h, w = resized.shape[:2]
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))[None]
        given = None
        if gt_boxes is not None:
            given = [torch.as_tensor(transform.apply_box(np.asarray(gt_boxes, np.float32).reshape(-1, 4)))]
        out = self.extractor(tensor, torch.tensor([[h, w]]), given)
        out["boxes"] = to_original_pixels(out["boxes"], out["counts"], torch.tensor([[h, w]]),
                                          torch.tensor([[H, W]]))
        return out


def run_shard(manifest, shard, out, dcfg, box_cfg, *, shard_size=None, num_shards=None,
              feature_dtype="float16", batch_size=4, num_workers=2, threads=None, row_group_size=64,
              max_image_pixels=MAX_IMAGE_PIXELS, failures_out=None, extractor=None):
    """Extract one shard → a summary dict. The shard file appears only on success. `extractor`: a
    built RegionExtractor to use instead of `dcfg`/`box_cfg` (the benchmark reuses one model)."""
    t0 = time.time()
    if threads:
        torch.set_num_threads(int(threads))
    configure_pil()
    failures_out = failures_out or failures_path_for(out)
    remove_stale_temporaries(out, failures_out)
    num_rows = pq.read_metadata(manifest).num_rows
    start, stop = shard_range(num_rows, shard, shard_size, num_shards)
    extractor = extractor or RegionExtractor(dcfg, box_cfg)
    dcfg, box_cfg = extractor.dcfg, extractor.box_cfg
    rows = read_manifest_rows(manifest, start, stop, with_boxes=box_cfg.given != "none")
    log.info("shard %d: manifest rows [%d, %d) of %d in %s", shard, start, stop, num_rows, manifest)
    log.info("detector %s on %s, %d-d features, input %d/%d px, amp=%s, weights %s", dcfg.config,
             extractor.device, extractor.feature_dim, extractor.min_size, extractor.max_size,
             extractor.amp, extractor.weights_checksum)
    dataset = ImageDataset(rows, Resize(extractor.min_size, extractor.max_size),
                           extractor.input_format, max_image_pixels)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=partial(collate, size_divisibility=extractor.size_divisibility),
        pin_memory=extractor.device.type == "cuda", worker_init_fn=worker_init,
        prefetch_factor=2 if num_workers else None)
    metadata = {
        "feature_dim": extractor.feature_dim,
        "feature_dtype": feature_dtype,
        "detector": extractor.describe(),
        "vocabularies": extractor.vocabularies(),
        "weights_checksum": extractor.weights_checksum,
        "nms_threshold": box_cfg.nms_threshold,
        "boxes": {**asdict(box_cfg), "coordinates": "x1 y1 x2 y2, original image pixels"},
        "code_version": code_version(),
        "manifest": os.path.basename(manifest),
        "shard": shard,
        "manifest_rows": [start, stop],
        "manifest_num_rows": num_rows,
        "batch_size": batch_size,
    }
    done = model_failures = 0
    rss_first = None
    with ShardWriter(out, extractor.feature_dim, feature_dtype, metadata, row_group_size,
                     failures_out) as writer:
        for step, batch in enumerate(loader):
            writer.add_failures((image_id, path, reason) for _, image_id, path, reason in batch.failures)
            for part, regions, error in _extract(extractor, batch) if batch.image_ids else ():
                if regions is None:
                    model_failures += 1
                    writer.add_failures([(part.image_ids[0], rows[part.rows[0]][1], error)])
                    continue
                boxes = to_original_pixels(regions["boxes"], regions["counts"], part.input_sizes,
                                           part.orig_sizes)
                regions = {k: v.numpy() for k, v in regions.items()}
                writer.add(part.image_ids, part.orig_sizes.numpy(), regions["counts"], regions["num_given"],
                           boxes.numpy(), regions["scores"], regions["classes"], regions["features"],
                           regions.get("attributes"), regions.get("attribute_scores"))
            done += len(batch.image_ids) + len(batch.failures)
            rss_first = rss_first or rss_mb()
            if step % 10 == 0 or done == len(rows):
                rate = done / max(time.time() - t0, 1e-9)
                log.info("%d/%d images (%.2f images/s, rss %.0f MB)", done, len(rows), rate, rss_mb())
        if model_failures and writer.num_rows == 0:
            raise RuntimeError("the detector failed on every image of the shard; see the log")
    summary = {"shard": shard, "images": len(rows), "extracted": writer.num_rows,
               "failed": writer.num_failures, "seconds": round(time.time() - t0, 2),
               # memory after the first batch and at the end: streaming keeps them equal
               "rss_mb_first_batch": round(rss_first or rss_mb(), 1), "rss_mb_end": round(rss_mb(), 1),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    log.info("wrote %s", out)
    log.info("summary %s", json.dumps(summary))
    return summary


def _extract(extractor, batch):
    """Yield (batch or one-image part, regions or None, error); if the batch fails, retry its
    images one by one: an image the model cannot handle becomes a failure, not the end of the shard."""
    errors = (RuntimeError, ValueError, AssertionError, IndexError)
    try:
        yield batch, extractor(batch.images, batch.input_sizes, batch.given), None
        return
    except errors as e:
        if len(batch.image_ids) == 1:
            log.exception("detector failed on %s", batch.image_ids[0])
            yield batch, None, f"detector error: {type(e).__name__}: {e}"
            return
        log.warning("detector failed on a batch (%s: %s); retrying its images one by one", type(e).__name__, e)
    for k, (h, w) in enumerate(batch.input_sizes.tolist()):
        part = Batch(batch.images[k:k + 1, :, :h, :w], batch.input_sizes[k:k + 1], batch.orig_sizes[k:k + 1],
                     batch.rows[k:k + 1], batch.image_ids[k:k + 1], batch.given and batch.given[k:k + 1], [])
        try:
            yield part, extractor(part.images, part.input_sizes, part.given), None
        except errors as e:
            log.exception("detector failed on %s", part.image_ids[0])
            yield part, None, f"detector error: {type(e).__name__}: {e}"


# The keys of --settings besides `detector` and `boxes` (run_shard's keyword arguments).
OUTPUT_SETTINGS = ("feature_dtype", "batch_size", "row_group_size", "max_image_pixels")


def settings_from_json(text):
    """--settings → (DetectorConfig, BoxConfig, run_shard keyword arguments); an unknown key or a
    bad value is an argparse error naming the key."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not a JSON object: {e}")
    if not isinstance(doc, dict):
        raise argparse.ArgumentTypeError("not a JSON object")
    unknown = set(doc) - {"detector", "boxes", *OUTPUT_SETTINGS}
    parts = {"detector": (DetectorConfig, doc.get("detector", {})), "boxes": (BoxConfig, doc.get("boxes", {}))}
    for name, (cls, section) in parts.items():
        unknown |= {f"{name}.{k}" for k in set(section) - set(cls.__dataclass_fields__)}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown key(s) {', '.join(sorted(unknown))}")
    detector = dict(parts["detector"][1])
    if len(detector.get("opts", ())) % 2:
        raise argparse.ArgumentTypeError("detector.opts takes KEY, VALUE pairs")
    detector["opts"] = tuple(map(str, detector.get("opts", ())))
    try:
        box_cfg = BoxConfig(**parts["boxes"][1])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"boxes: {e}")
    if doc.get("feature_dtype", "float16") not in FEATURE_DTYPES:
        raise argparse.ArgumentTypeError(f"feature_dtype must be one of {sorted(FEATURE_DTYPES)}")
    return DetectorConfig(**detector), box_cfg, {k: doc[k] for k in OUTPUT_SETTINGS if k in doc}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m extract", description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("shard")
    g.add_argument("--manifest", required=True, help="image manifest Parquet (docs/contracts.md)")
    g.add_argument("--shard", type=int, required=True, help="shard index k (0-based)")
    size = g.add_mutually_exclusive_group(required=True)
    size.add_argument("--shard-size", type=int, help="images per shard")
    size.add_argument("--num-shards", type=int, help="number of shards (size = ceil(rows / N))")
    g.add_argument("--out", required=True, help="shard Parquet to write (shard-{k:05d}.parquet)")
    g.add_argument("--failures-out", help="failures table (default: beside --out, .failures.parquet)")

    p.add_argument("--settings", required=True, type=settings_from_json, metavar="JSON",
                   help="what shapes the features, one JSON object: {\"detector\": {config, weights, seed, "
                        "min_size, max_size, proposals, opts, device, amp, attributes, objects_vocab, "
                        "attributes_vocab}, \"boxes\": {mode, max_boxes, min_boxes, score_threshold, "
                        "nms_threshold, given}, \"feature_dtype\", \"batch_size\", \"row_group_size\", "
                        "\"max_image_pixels\"}; a key left out keeps DetectorConfig's / BoxConfig's / run_shard's "
                        "default")

    o = p.add_argument_group("throughput (does not change the features)")
    o.add_argument("--num-workers", type=int, default=2, help="DataLoader decoding processes (default: %(default)s)")
    o.add_argument("--threads", type=int, help="torch threads in the main process (default: torch's choice)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    dcfg, box_cfg, output = args.settings
    run_shard(args.manifest, args.shard, args.out, dcfg, box_cfg, shard_size=args.shard_size,
              num_shards=args.num_shards, num_workers=args.num_workers, threads=args.threads,
              failures_out=args.failures_out, **output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
