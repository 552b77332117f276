"""Evaluation stage: a finetuned model on its task's eval split → metrics.json + predictions.parquet.

    python -m cavl.evaluate --task vqa          # results/vqa/model → results/vqa/metrics.json, predictions.parquet

metrics.json (DESIGN.md): task, split, method, metrics (percent, the task's official metric),
num_examples, chance (same keys, random / majority predictor on the same split, from
cavl.metrics.chance), trainable_params, total_params, model (checksum of the finetuned weights
and their backbone), config (the resolved task settings the model was finetuned with), and the
task's own fields (`Task.report`) — among them `significance`: per tested metric (the headline:
vqa accuracy, vcr q2ar/q2a/qa2r, nlvr2 accuracy, rpg r@1, tir and zs_tir i2t_r@1 and t2i_r@1) the
counts, the chance predictor and the exact one-sided p-value against it
(cavl.metrics.significance.RECORD_KEYS; zs_tir's comes from the TIR task's `report`).
Both files are written atomically.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from cavl.finetune import FinetuneModel, load_tokenizer, model_checksum, read_config, score_split, settings_from_config
from cavl.io import write_json_atomic, write_parquet_atomic
from cavl.tasks import REGISTRY, get_task
from cavl.tasks.base import DataSettings

log = logging.getLogger("cavl.evaluate")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m cavl.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, choices=sorted(REGISTRY), help="task of the model")
    p.add_argument("--model", help="finetuned model folder (default results/{task}/model)")
    p.add_argument("--backbone", help="backbone folder (default: the one the model records)")
    p.add_argument("--eval", help="split table to evaluate (default resources/tasks/{task}/{eval_split}.parquet)")
    p.add_argument("--split", help="name of the evaluated split (default: the file name's stem)")
    p.add_argument("--train", help="train split table, for the majority-answer chance "
                                    "(default resources/tasks/{task}/{train_split}.parquet)")
    p.add_argument("--features", help="feature index of the task's images (default resources/features/{dataset}/index.parquet)")
    p.add_argument("--metrics", help="metrics JSON to write (default results/{task}/metrics.json)")
    p.add_argument("--predictions", help="predictions Parquet to write (default results/{task}/predictions.parquet)")
    p.add_argument("--batch-size", type=int, help="items per batch (default: the model's eval_batch_size)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the model's setting)")
    p.add_argument("--cpu", action="store_true", help="evaluate on CPU even when a GPU is visible")
    p.add_argument("--config", action="append", default=[],
                   help="evaluate-only tasks (zs_tir), which have no model folder: YAML/JSON config file or "
                        "inline JSON with their finetune.tasks.<task> settings; repeatable")
    return p.parse_args(argv)


def evaluate(task_name: str, model_dir, eval_path, train_path, features, backbone=None, split=None,
             batch_size=None, device="cpu", settings=None) -> tuple[dict, "object"]:
    """(metrics.json content, predictions DataFrame) of the model in `model_dir` on `eval_path`.

    Evaluate-only tasks (zs_tir) have no model folder: the backbone is evaluated as it is, with
    `settings` (the task's resolved finetune settings, as a dict)."""
    if get_task(task_name).zero_shot:
        model, config = get_task(task_name).zero_shot_model(backbone, settings)
    else:
        model, config = FinetuneModel.from_finetuned(model_dir, backbone)
    if config["task"] != task_name:
        raise ValueError(f"{model_dir} was finetuned for {config['task']!r}, not {task_name!r}")
    split = split or Path(eval_path).stem
    selection = config.get("selection") or {}  # the split the model's epoch was chosen on
    if selection.get("split") == split and selection.get("held_out_fraction") is None:
        raise ValueError(f"{model_dir} kept the epoch that scored best on split {split!r} "
                         f"(finetune.tasks.{task_name}.select_split): its score there is not a held-out one; "
                         f"evaluate another split")
    task, state, settings = model.task, model.state, config["settings"]
    model.to(device)
    regions = task.region_source(features, DataSettings(**settings["data"]))
    examples = task.labelled(task.with_features(task.read(eval_path), regions, "eval"), "eval")
    train = task.read(train_path) if train_path else None
    tokenizer = load_tokenizer(backbone or config["backbone"]["path"])
    predictions, _ = score_split(model, examples, regions, tokenizer, DataSettings(**settings["data"]),
                                 batch_size or settings["eval_batch_size"], device)
    metrics = {
        "task": task_name,
        "split": split,
        "method": config["method"],
        "metrics": task.metrics(predictions, examples, state),
        "num_examples": int(len(predictions)),
        "chance": task.chance(train, examples, state),
        "trainable_params": config["trainable_params"],
        "total_params": config["total_params"],
        "model": config["checksum"] if task.zero_shot else model_checksum(model_dir),
        "config": settings,
        **task.report(predictions, examples, state, train),
    }
    return metrics, predictions


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    task = args.task
    model_dir = Path(args.model or f"results/{task}/model")
    zero_shot = get_task(task).zero_shot
    if zero_shot:  # no model folder: the task's settings come from --config
        settings = asdict(settings_from_config(read_config(args.config), task))
    else:
        settings = FinetuneModel.saved_config(model_dir)["settings"]
    torch.set_num_threads(max(1, args.threads or settings["threads"]))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    dataset = REGISTRY[task].image_datasets[0]
    tables = REGISTRY[task].tables or task
    metrics, predictions = evaluate(
        task, model_dir,
        eval_path=args.eval or f"resources/tasks/{tables}/{settings['eval_split']}.parquet",
        train_path=args.train or (None if zero_shot else f"resources/tasks/{tables}/{settings['train_split']}.parquet"),
        features=args.features or f"resources/features/{dataset}/index.parquet",
        backbone=args.backbone or ("results/pretrain/model" if zero_shot else None), split=args.split,
        batch_size=args.batch_size, device=device, settings=settings if zero_shot else None)
    write_parquet_atomic(predictions, args.predictions or f"results/{task}/predictions.parquet")
    write_json_atomic(metrics, args.metrics or f"results/{task}/metrics.json")
    shown = ", ".join(f"{k}={v:.2f}" for k, v in metrics["metrics"].items() if v is not None)
    chance = ", ".join(f"{k}={v:.2f}" for k, v in metrics["chance"].items() if v is not None)
    print(f"{task} {metrics['split']} ({metrics['method']}, {metrics['num_examples']} examples): {shown} "
          f"| chance: {chance}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
