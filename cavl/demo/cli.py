"""Command line of the demo data generator (``python -m cavl.demo``)."""

import argparse
import os

from . import coco, flickr30k, nlvr2, vcr, vg, vqa, variants
from .files import rng_for, write_json_atomic

DEFAULT_COUNTS = {"coco": 120, "vg": 60, "flickr30k": 160, "nlvr2": 400, "vcr": 200}


def _count(text):
    name, sep, value = text.partition("=")
    if not sep or name not in DEFAULT_COUNTS:
        raise argparse.ArgumentTypeError(
            f"expected NAME=N with NAME one of {', '.join(DEFAULT_COUNTS)}, got {text!r}")
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: {value!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{name}: count must be >= 0, got {n}")
    return name, n


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m cavl.demo",
        description="Write the embedded demo data: seeded synthetic scenes with annotations "
                    "in the official formats of COCO captions, VQA v2, Visual Genome, VCR, "
                    "NLVR2, Flickr30k (Karpathy split) and Flickr30k Entities.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--image-size", type=int, default=224,
                   help="image side in pixels; some images are ~11%% shorter in one side "
                        "(default: 224)")
    p.add_argument("--variant", type=int, choices=sorted(variants.VARIANTS), default=1,
                   help="synthetic world (cavl/demo/variants.py): 1 = the original demo, 2 = "
                        "another palette, 2-6 objects per image, other VQA questions and its "
                        "own random streams (default: 1)")
    p.add_argument("--count", type=_count, action="append", default=[], metavar="NAME=N",
                   help="images for one dataset (repeatable); defaults: "
                        + ", ".join(f"{k}={v}" for k, v in DEFAULT_COUNTS.items()))
    args = p.parse_args(argv)
    if args.image_size < 64:
        p.error(f"--image-size must be at least 64, got {args.image_size}")
    args.counts = dict(args.count)
    return args


def generate(out_dir, seed=0, image_size=224, counts=None, log=print, variant=1):
    """Write everything under `out_dir`; returns the scenes dict written to scenes.json.
    Each dataset writes its images first, then its annotation files (each atomically).
    `counts`: images per dataset (missing ones: DEFAULT_COUNTS); `variant`: see variants.py."""
    counts = dict(DEFAULT_COUNTS, **(counts or {}))
    world = variants.get(variant)

    def rng(name):
        return rng_for(seed, name, world.number)

    scenes = {}
    coco_images, scenes["coco"], line = coco.write(out_dir, rng("coco"), counts["coco"],
                                                   image_size, world)
    log(line)
    log(vqa.write(out_dir, rng("vqa"), coco_images, world))
    for name, module in (("vg", vg), ("flickr30k", flickr30k), ("nlvr2", nlvr2), ("vcr", vcr)):
        scenes[name], line = module.write(out_dir, rng(name), counts[name], image_size, world)
        log(line)
    write_json_atomic(scenes, os.path.join(out_dir, "scenes.json"))
    return scenes


def main(argv=None):
    args = parse_args(argv)
    generate(args.out, args.seed, args.image_size, args.counts, variant=args.variant)
    return 0
