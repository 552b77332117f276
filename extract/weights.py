"""Check that a detector checkpoint fits an architecture, without running the model.

    python -m extract.weights check faster_rcnn_from_caffe_attr.pkl
    python -m extract.weights check model.pth --config COCO-Detection/faster_rcnn_R_101_C4_3x.yaml

Builds the architecture (default: the BUTD R101-C4 with attributes, extract/configs/), loads the
file into it the way extraction does (restricted unpickling: numpy arrays only) and prints the
missing keys, the unexpected keys and the shape mismatches. Exit status 0 only when there are none.
"""

import argparse
import os
import pickle
import sys
from dataclasses import dataclass, replace

from detectron2.modeling import build_model

from cavl.io import file_sha256
from extract.detector import DetectorConfig, build_cfg, load_checkpoint

BUTD_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "butd_R101_C4_attr.yaml")


@dataclass
class CheckReport:
    missing: list  # keys the model has and the file lacks
    unexpected: list  # keys the file has and the model lacks
    mismatched: list  # (key, file shape, model shape)
    model_keys: int

    @property
    def ok(self):
        return not (self.missing or self.unexpected or self.mismatched)


def check_checkpoint(path, dcfg):
    """Load `path` into the architecture of `dcfg` (built on the CPU, never run) → CheckReport."""
    model = build_model(build_cfg(replace(dcfg, weights=None, device="cpu")))
    missing, unexpected, mismatched = load_checkpoint(model, path)
    return CheckReport(sorted(missing), sorted(unexpected), sorted(mismatched), len(model.state_dict()))


def format_report(path, config, report):
    lines = [f"checkpoint {path} (sha256 {file_sha256(path)[:16]}...)",
             f"architecture {config}: {report.model_keys} keys"]
    for title, items in (("missing keys (in the architecture, not in the file)", report.missing),
                         ("unexpected keys (in the file, not in the architecture)", report.unexpected)):
        lines.append(f"{title}: {len(items)}")
        lines += [f"  {key}" for key in items]
    lines.append(f"shape mismatches: {len(report.mismatched)}")
    lines += [f"  {key}: file {list(a)} vs architecture {list(b)}" for key, a, b in report.mismatched]
    lines.append("OK: every key is present with its shape" if report.ok else "FAILED: the file does not fit")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m extract.weights", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="compare a checkpoint's keys and shapes with an architecture")
    check.add_argument("file", help="checkpoint: Detectron2 .pkl (numpy arrays) or .pth")
    check.add_argument("--config", default=BUTD_CONFIG,
                       help="Detectron2 model-zoo name or yaml path (default: the BUTD R101-C4 with attributes)")
    check.add_argument("--attributes", action="store_true", help="add the attribute head (as extract --attributes)")
    check.add_argument("--objects-vocab", help="object vocabulary: sets the number of classes")
    check.add_argument("--attributes-vocab", help="attribute vocabulary: sets the number of attributes")
    check.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="detectron2 config overrides")
    args = parser.parse_args(argv)
    dcfg = DetectorConfig(config=args.config, opts=tuple(args.opts), attributes=args.attributes,
                          objects_vocab=args.objects_vocab, attributes_vocab=args.attributes_vocab)
    try:
        report = check_checkpoint(args.file, dcfg)
    except (OSError, ValueError, pickle.UnpicklingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(args.file, args.config, report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
