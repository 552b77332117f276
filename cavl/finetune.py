"""Adaptive finetuning stage: one entry point for every task and method.

    python -m cavl.finetune --task vqa --config config.yaml --backbone results/pretrain/model \\
        --train resources/tasks/vqa/train.parquet --features resources/features/coco/index.parquet \\
        --out results/vqa/model --train-log results/vqa/log.jsonl --curves results/vqa/curves.png \\
        --checkpoints results/vqa/checkpoints --cache results/vqa/cache          # one process
    torchrun --standalone --nproc_per_node 4 -m cavl.finetune --task vqa …       # DDP

`--config` takes YAML/JSON files or inline JSON objects (repeatable, later ones override); only
the `finetune` section is read. Every path is an argument, none has a default: `--select` exactly
when `finetune.tasks.<task>.select_split` is set, `--eval` when `finetune.train.eval_every` > 0.
The model, the best-epoch selection, the training run and the files written: cavl.finetune_model.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cavl.config import read_config_specs
from cavl.finetune_model import FinetunePaths, FinetuneSettings, settings_from_config, train
from cavl.tasks import REGISTRY


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m cavl.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=sorted(REGISTRY), help="task to finetune on")
    p.add_argument("--config", action="append", default=[],
                   help="YAML/JSON config file or inline JSON; repeatable, later ones override")
    p.add_argument("--method", help="override finetune.tasks.<task>.method")
    p.add_argument("--backbone", required=True, help="pretrained model folder (with its tokenizer)")
    p.add_argument("--train", required=True, help="train split table")
    p.add_argument("--select", help="selection split table, the best epoch is chosen on it: required when "
                                     "finetune.tasks.<task>.select_split is set, refused when it is null")
    p.add_argument("--eval", help="eval split table of the in-training evaluation: required when "
                                   "finetune.train.eval_every > 0, unused otherwise")
    p.add_argument("--features", required=True, help="feature index of the task's images")
    p.add_argument("--out", required=True, help="model folder written at the end")
    # Not `--log`: torchrun would take it for its own --log-* options.
    p.add_argument("--train-log", required=True, help="training log, JSON lines")
    p.add_argument("--curves", required=True, help="PNG of the loss curves")
    p.add_argument("--checkpoints", required=True, help="checkpoint folder (resume, the best epoch's state)")
    p.add_argument("--cache", required=True,
                   help="backbone cache folder (used by the frozen methods when finetune.cache.enabled)")
    p.add_argument("--threads", type=int, help="torch CPU threads per process (default finetune.threads)")
    p.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is visible")
    return p.parse_args(argv)


def paths_from_args(args, s: FinetuneSettings) -> FinetunePaths:
    """The run's paths as given; --select and --eval checked against the settings that read them."""
    task = s.task
    if args.select and s.select_split is None:
        raise ValueError(f"--select {args.select} given, but finetune.tasks.{task}.select_split is null (the epoch "
                         f"is chosen on held-out train images): set select_split or drop --select")
    if s.select_split is not None and not args.select:
        raise ValueError(f"finetune.tasks.{task}.select_split is {s.select_split!r}: pass its table with --select "
                         f"(or set select_split to null to hold out train images)")
    if s.train.eval_every > 0 and not args.eval:
        raise ValueError(f"finetune.train.eval_every is {s.train.eval_every}: pass the eval split's table with --eval")
    return FinetunePaths(backbone=args.backbone, train=args.train, features=args.features, out=args.out,
                         log=args.train_log, curves=args.curves, checkpoints=args.checkpoints, cache=args.cache,
                         select=args.select, eval=args.eval)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    s = settings_from_config(read_config_specs(args.config), args.task, args.method)
    train(s, paths_from_args(args, s), cpu=args.cpu, threads=args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
