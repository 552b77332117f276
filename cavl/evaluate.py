"""Evaluation stage: a finetuned model on its task's eval split → metrics.json + predictions.parquet.

    python -m cavl.evaluate --task vqa --model results/vqa/model --eval resources/tasks/vqa/val.parquet \\
        --train resources/tasks/vqa/train.parquet --features resources/features/coco/index.parquet \\
        --metrics results/vqa/metrics.json --predictions results/vqa/predictions.parquet
    python -m cavl.evaluate --task zs_tir --config config.yaml --backbone results/pretrain/model \\
        --eval resources/tasks/tir/test.parquet --features resources/features/flickr30k/index.parquet \\
        --metrics results/zs_tir/metrics.json --predictions results/zs_tir/predictions.parquet

Every path is an argument, none has a default: `--model` and `--train` (the majority-answer
chance) for a finetuned task; an evaluate-only task (zs_tir) has no model folder and takes
`--backbone` and its settings from `--config` instead. `--backbone` of a finetuned task overrides
the backbone its model folder records.

metrics.json (DESIGN.md): task, split, method, metrics (percent, the task's official metric),
num_examples, chance (same keys, random / majority predictor on the same split, from
cavl.metrics.chance), trainable_params, total_params, model (checksum of the finetuned weights
and their backbone), config (the resolved task settings the model was finetuned with), and the
task's own fields (`Task.report`), among them `significance`: per headline metric the counts, the
chance predictor and the exact one-sided p-value against it (cavl.metrics.significance.RECORD_KEYS).
Both files are written atomically; the scoring itself is cavl.finetune_model.evaluate.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict

import torch

from cavl.config import read_config_specs
from cavl.finetune_model import FinetuneModel, evaluate, settings_from_config
from cavl.io import write_json_atomic, write_parquet_atomic
from cavl.tasks import REGISTRY, get_task


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m cavl.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=sorted(REGISTRY), help="task of the model")
    p.add_argument("--model", help="finetuned model folder (required, except for evaluate-only tasks, which have none)")
    p.add_argument("--backbone", help="backbone folder (required for evaluate-only tasks; otherwise the default is "
                                      "the one the model records)")
    p.add_argument("--eval", required=True, help="split table to evaluate")
    p.add_argument("--split", help="name of the evaluated split (default: the file name's stem)")
    p.add_argument("--train", help="train split table, for the majority-answer chance (required, except for "
                                    "evaluate-only tasks)")
    p.add_argument("--features", required=True, help="feature index of the task's images")
    p.add_argument("--metrics", required=True, help="metrics JSON to write")
    p.add_argument("--predictions", required=True, help="predictions Parquet to write")
    p.add_argument("--batch-size", type=int, help="items per batch (default: the model's eval_batch_size)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the model's setting)")
    p.add_argument("--cpu", action="store_true", help="evaluate on CPU even when a GPU is visible")
    p.add_argument("--config", action="append", default=[],
                   help="evaluate-only tasks (zs_tir), which have no model folder: YAML/JSON config file or "
                        "inline JSON with their finetune.tasks.<task> settings; repeatable")
    args = p.parse_args(argv)
    if get_task(args.task).zero_shot:
        if args.model:
            p.error(f"--model: {args.task} is evaluate-only, it has no model folder")
        if not args.backbone:
            p.error(f"--backbone is required for {args.task}, which evaluates the backbone as it is")
    else:
        missing = [f"--{k}" for k in ("model", "train") if not getattr(args, k)]
        if missing:
            p.error(f"the following arguments are required for {args.task}: {', '.join(missing)}")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    task = args.task
    zero_shot = get_task(task).zero_shot
    if zero_shot:  # no model folder: the task's settings come from --config
        settings = asdict(settings_from_config(read_config_specs(args.config), task))
    else:
        settings = FinetuneModel.saved_config(args.model)["settings"]
    torch.set_num_threads(max(1, args.threads or settings["threads"]))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    metrics, predictions = evaluate(
        task, args.model, eval_path=args.eval, train_path=args.train, features=args.features,
        backbone=args.backbone, split=args.split, batch_size=args.batch_size, device=device,
        settings=settings if zero_shot else None)
    write_parquet_atomic(predictions, args.predictions)
    write_json_atomic(metrics, args.metrics)
    shown = ", ".join(f"{k}={v:.2f}" for k, v in metrics["metrics"].items() if v is not None)
    chance = ", ".join(f"{k}={v:.2f}" for k, v in metrics["chance"].items() if v is not None)
    print(f"{task} {metrics['split']} ({metrics['method']}, {metrics['num_examples']} examples): {shown} "
          f"| chance: {chance}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
