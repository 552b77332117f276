"""Two-stage vs exhaustive retrieval: wall time and recall (`python -m benchmarks.retrieval`).

  demo  — the tir test split with the finetuned tir model when those exist, else a synthetic set
          of the same scale (20 images × 5 captions) and a tiny model finetuned on it here.
  large — 1,000 synthetic images × 5,000 random captions and a tiny random model: two-stage
          timed in full; exhaustive (5M pairs) timed on a subset of pairs and extrapolated.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cavl.testing import VOCAB, word_tokenizer, write_synthetic_flickr30k, write_tiny_pretrained

log = logging.getLogger("benchmarks.retrieval")


def _row(name, mode, k, pairs, seconds, metrics=None, note=""):
    return {"set": name, "mode": mode, "k": k, "pairs": int(pairs), "seconds": float(seconds),
            "metrics": metrics or {}, "note": note}


def demo_set(args, tmp: Path):
    """(model, examples, regions, tokenizer, data, note) of the demo-scale retrieval set."""
    from cavl.finetune_model import FinetuneModel, load_tokenizer
    from cavl.tasks.base import DataSettings

    model_dir, eval_path, features = Path(args.model), Path(args.eval), Path(args.features)
    if model_dir.exists() and eval_path.exists() and features.exists():
        note = f"demo tir test split, model {model_dir}"
    else:
        from cavl import finetune

        log.info("no demo artifacts (%s, %s, %s): synthetic set of demo scale, tiny model finetuned here",
                 model_dir, eval_path, features)
        root = write_synthetic_flickr30k(tmp / "syn", sizes={"train": 60, "val": 2, "test": 20}, seed=1)
        write_tiny_pretrained(root / "backbone")
        config = {"finetune": {"threads": args.threads, "eval_batch_size": 64,
                               "tasks": {"tir": {"method": "full", "epochs": 20, "batch_size": 16, "max_text_len": 20,
                                                 "max_regions": 8, "lr": 5e-3, "pwcl_weight": 0.1}}}}
        out = tmp / "syn_tir"
        finetune.main(["--task", "tir", "--config", json.dumps(config), "--cpu", "--backbone", str(root / "backbone"),
                       "--train", str(root / "tasks/tir/train.parquet"),
                       "--select", str(root / "tasks/tir/val.parquet"),
                       "--features", str(root / "features/flickr30k/index.parquet"), "--out", str(out / "model"),
                       "--train-log", str(out / "log.jsonl"), "--curves", str(out / "curves.png"),
                       "--checkpoints", str(out / "ck"), "--cache", str(out / "cache")])
        model_dir, eval_path = out / "model", root / "tasks/tir/test.parquet"
        features = root / "features/flickr30k/index.parquet"
        note = "synthetic demo-scale set (20 images × 5 captions), tiny model (H=32, 2 layers) finetuned 20 epochs"
    model, config = FinetuneModel.from_finetuned(model_dir, args.backbone)
    model.to(args.device)
    task, data = model.task, DataSettings(**config["settings"]["data"])
    regions = task.region_source(str(features), data)
    examples = task.labelled(task.with_features(task.read(eval_path), regions, "eval"), "eval")
    tokenizer = load_tokenizer(args.backbone or config["backbone"]["path"])
    return model.eval(), examples, regions, tokenizer, data, note


def bench_demo(args, tmp: Path) -> list:
    """Exhaustive measured in full; two-stage recall from the same pair scores (looked up in its
    (I, C) matrix), its time = the measured embedding pass + pairs × the measured per-pair ITM cost."""
    from cavl import retrieval
    from cavl.tasks.tir import retrieval_set

    model, examples, regions, tokenizer, data, note = demo_set(args, tmp)
    w = float(model.state.get("sim_weight", 0.0))
    images, cap2img = retrieval_set(examples)
    captions = examples["caption"].astype(str).tolist()
    scorer = retrieval.ModelScorer(model, tokenizer, regions, data, args.batch_size, args.device)
    scorer.set_items(images, captions)
    t0 = time.perf_counter()
    itm = retrieval.exhaustive(len(images), scorer.pair_scores, cap2img).i2t_scores  # (I, C) ITM scores
    _sync(args.device)
    t_itm = time.perf_counter() - t0
    per_pair = t_itm / itm.size
    t0 = time.perf_counter()
    sim = retrieval.cosine(scorer.image_embeddings(), scorer.text_embeddings())
    _sync(args.device)
    t_emb = time.perf_counter() - t0
    name = f"demo {len(images)}x{len(captions)}"
    def memo(pairs):
        return itm[pairs[:, 0], pairs[:, 1]]

    full = retrieval.exhaustive(len(images), memo, cap2img, sim, w)
    rows = [_row(name, "exhaustive", None, full.pairs_scored, t_itm + (t_emb if w else 0.0), full.metrics(),
                 f"{note}; re-ranking score ITM + {w:g}·cos")]
    for k in args.ks:
        t0 = time.perf_counter()
        res = retrieval.two_stage(sim, memo, k, cap2img, w)
        t_rank = time.perf_counter() - t0
        rows.append(_row(name, "two_stage", k, res.pairs_scored, t_emb + res.pairs_scored * per_pair + t_rank,
                         res.metrics(), "time modelled: embed + pairs x per-pair ITM cost"))
    return rows


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# Sizes of the large set's random model: tiny on CPU (a timing of the machinery), MiniLM-L6's
# (the demo's BERT) with 36 regions of 1024-d on CUDA, where such a model is cheap to run.
LARGE_SIZES = {"cpu": {"hidden": 32, "layers": 2, "heads": 2, "regions": 8, "dim": 32, "batch": 1024},
               "cuda": {"hidden": 384, "layers": 6, "heads": 12, "regions": 36, "dim": 1024, "batch": 1024}}


def large_model(hidden: int, layers: int, heads: int, visual_dim: int, vocab: list):
    from cavl.adapters import AdapterSettings
    from cavl.finetune_model import FinetuneModel
    from cavl.model import CavlConfig, CavlModel
    from cavl.tasks import get_task

    torch.manual_seed(0)
    cfg = CavlConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=4 * hidden, max_position_embeddings=64, visual_dim=visual_dim,
                     cls_token_id=vocab.index("[CLS]"), sep_token_id=vocab.index("[SEP]"),
                     mask_token_id=vocab.index("[MASK]"))
    task = get_task("tir")
    return FinetuneModel(CavlModel(cfg), task, task.prepare(None, {}), "linear", AdapterSettings()).eval()


def bench_large(args, tmp: Path) -> list:
    """1k × 5k synthetic: two-stage runs timed in full, exhaustive timed on a subset and extrapolated."""
    from cavl import retrieval
    from cavl.data.regions import RegionSource
    from cavl.tasks.base import DataSettings
    from cavl.testing import write_feature_shards

    rng = np.random.default_rng(0)
    I, C, D, R = args.large_images, args.large_images * 5, args.large_dim, args.large_regions
    images = [f"img{i}" for i in range(I)]
    items = {}
    for i in images:
        b = np.sort(rng.uniform(0, 100, (R, 4)), axis=1)
        items[i] = (rng.normal(size=(R, D)).astype(np.float32), b, 100, 100, 0)
    index = write_feature_shards(tmp / "large", "synthetic", items, shard_size=256, dim=D)  # read as the pipeline does
    words = VOCAB[5:]
    captions = [" ".join(rng.choice(words, int(rng.integers(6, 11)))) for _ in range(C)]
    cap2img = np.repeat(np.arange(I), 5)
    model = large_model(args.large_hidden, args.large_layers, args.large_heads, D, VOCAB).to(args.device)
    data = DataSettings(max_text_len=16, max_regions=R)
    scorer = retrieval.ModelScorer(model, word_tokenizer(), RegionSource(index, R), data, args.large_batch_size,
                                   args.device)
    name = f"synthetic {I}x{C}"
    size = (f"random model: hidden {args.large_hidden}, {args.large_layers} layers, {args.large_heads} heads, "
            f"{R} regions of dim {D}, captions 6-10 words; batch {args.large_batch_size}; device {args.device}")
    rows = []
    for k in args.ks:
        t0 = time.perf_counter()
        res = retrieval.retrieve(scorer, images, captions, cap2img, "two_stage", k, sim_weight=1.0)
        t = time.perf_counter() - t0
        phases = ", ".join(f"{p} {s:.1f}s" for p, s in res.seconds.items())
        rows.append(_row(name, "two_stage", k, res.pairs_scored, t, None, f"measured ({phases})"))
        log.info("large two_stage k=%d: %.1fs", k, t)
    scorer.set_items(images, captions)
    pairs = retrieval.exhaustive_pairs(I, C)
    sample = pairs[rng.choice(len(pairs), size=min(args.exhaustive_sample, len(pairs)), replace=False)]
    sample = sample[np.lexsort((sample[:, 1], sample[:, 0]))]
    scorer.pair_scores(sample[: args.large_batch_size])  # warm-up (CUDA kernels, allocator)
    _sync(args.device)
    t0 = time.perf_counter()
    scorer.pair_scores(sample)
    _sync(args.device)
    t = time.perf_counter() - t0
    rows.append(_row(name, "exhaustive", None, len(pairs), t * len(pairs) / len(sample), None,
                     f"extrapolated from {len(sample):,} pairs in {t:.1f}s"))
    return rows, size


def print_table(rows):
    exh = {r["set"]: r["seconds"] for r in rows if r["mode"] == "exhaustive"}
    print(f"{'set':<22} {'mode':<11} {'k':>4} {'pairs':>10} {'seconds':>10} {'speed-up':>9}  "
          f"{'i2t R@1':>7} {'t2i R@1':>7} {'rsum':>7}  note")
    for r in rows:
        m = r["metrics"]
        fmt = lambda key: f"{m[key]:7.2f}" if key in m else f"{'-':>7}"  # noqa: E731
        speed = exh.get(r["set"], float("nan")) / max(r["seconds"], 1e-9)
        print(f"{r['set']:<22} {r['mode']:<11} {'' if r['k'] is None else r['k']:>4} {r['pairs']:>10,} "
              f"{r['seconds']:>10.1f} {speed:>8.1f}x  {fmt('i2t_r@1')} {fmt('t2i_r@1')} {fmt('rsum')}  {r['note']}")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.retrieval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="results/tir/model", help="finetuned tir model of the demo set")
    p.add_argument("--backbone", help="backbone folder (default: the one the model records)")
    p.add_argument("--eval", default="resources/tasks/tir/test.parquet", help="retrieval split of the demo set")
    p.add_argument("--features", default="resources/features/flickr30k/index.parquet", help="its feature index")
    p.add_argument("--ks", type=int, nargs="+", default=[16, 32, 128], help="shortlist sizes")
    p.add_argument("--batch-size", type=int, default=64, help="fused pairs per batch (demo set)")
    p.add_argument("--large-images", type=int, default=1000, help="images of the large synthetic set (5 captions each)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda")
    p.add_argument("--large-hidden", type=int, help="hidden size of the large set's random model "
                                                    "(default: 32 on CPU, 384 = MiniLM-L6 on CUDA)")
    p.add_argument("--large-layers", type=int, help="its layers (default 2 on CPU, 6 on CUDA)")
    p.add_argument("--large-heads", type=int, help="its attention heads (default 2 on CPU, 12 on CUDA)")
    p.add_argument("--large-regions", type=int, help="regions per image of the large set (default 8 on CPU, 36 on CUDA)")
    p.add_argument("--large-dim", type=int, help="region feature width of the large set (default 32 on CPU, 1024 on CUDA)")
    p.add_argument("--large-batch-size", type=int, help="fused pairs per batch, large set (default 1024)")
    p.add_argument("--exhaustive-sample", type=int, default=50000, help="pairs timed to extrapolate exhaustive")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", help="also write the rows as JSON here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(max(1, args.threads))
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for key, value in LARGE_SIZES[torch.device(args.device).type].items():
        name = "large_batch_size" if key == "batch" else f"large_{key}"
        if getattr(args, name) is None:
            setattr(args, name, value)
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="bench_retrieval.", ignore_cleanup_errors=True) as tmp:
        if not args.skip_demo:
            rows += bench_demo(args, Path(tmp))
        if not args.skip_large:
            large, size = bench_large(args, Path(tmp))
            rows += large
            notes.append(size)
    gpu = f", {torch.cuda.get_device_name()}" if torch.device(args.device).type == "cuda" else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}{gpu}")
    print_table(rows)
    for n in notes:
        print("large set:", n)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
