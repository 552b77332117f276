"""Contrastive pretraining stage: MLM + ITM + PwCL on COCO captions and VG region descriptions.

    python -m cavl.pretrain --config config.yaml                           # one process
    torchrun --standalone --nproc_per_node 4 -m cavl.pretrain --config …   # DDP

Only the `model` and `pretrain` config sections are read (schema-validated, cavl.settings).
Outputs: the model folder (`CavlModel` / `CavlForPretraining.from_pretrained`), the log (JSON
lines) and the curves PNG; a rerun resumes from the newest usable checkpoint in `--checkpoints`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from cavl.adapters import count_parameters, params_line
from cavl.config import PRETRAIN_SOURCES
from cavl.config import read_config_specs as read_config
from cavl.model import CavlForPretraining, ObjectiveConfig, resolve_checkpoint_path
from cavl.data.batches import make_loader
from cavl.data.regions import feature_statistics, open_sources
from cavl.pretrain_data import PretrainBatches, PretrainDataConfig, load_examples
from cavl.settings import (ModelSettings, PretrainSection, TrainConfig, from_settings, load_section,
                           operational_keys, without)
from cavl.train_loop import Trainer, cleanup_distributed, seed_everything, setup_distributed
from cavl.training_log import finalize_log

log = logging.getLogger("cavl.pretrain")


def settings_from_config(config: dict) -> tuple[ModelSettings, PretrainSection]:
    """The validated `model` and `pretrain` sections (a bad key: cavl.config.ConfigError)."""
    model = load_section(ModelSettings, config, "model")
    s = load_section(PretrainSection, config, "pretrain")
    B, negatives = s.train.batch_size, s.itm.negative_fraction
    matched = B - int(round(B * negatives))
    if s.pwcl.weight > 0 and s.pwcl.encoding == "joint" and matched < 2:
        raise ValueError(f"pretrain.pwcl.encoding 'joint' takes PwCL's pairs from the matched rows of a batch: "
                         f"pretrain.train.batch_size {B} with pretrain.itm.negative_fraction "
                         f"{negatives} leaves {matched} (need >= 2)")
    return model, s


def data_config(s: PretrainSection) -> PretrainDataConfig:
    """What the batches are made of; pretrain.data.sources null means every source."""
    return from_settings(PretrainDataConfig, s,
                         sources=list(PRETRAIN_SOURCES) if s.data.sources is None else list(s.data.sources))


def objective_config(s: PretrainSection) -> ObjectiveConfig:
    """The objectives' weights and PwCL's settings (saved with the model)."""
    return from_settings(ObjectiveConfig, s)


def fingerprint(model: ModelSettings, s: PretrainSection, inputs: list) -> str:
    """Hash of everything a checkpoint depends on: model settings, process count, data, objectives,
    optimiser, the loop less its operational keys (cavl.settings.operational), and the input bytes."""
    run = {"gpus": s.gpus, "data": asdict(data_config(s)), "objective": asdict(objective_config(s)),
           "optim": asdict(s.optim),
           "train": without(asdict(s.train), operational_keys(TrainConfig))}
    h = hashlib.sha256(json.dumps({"model": asdict(model), "pretrain": run}, sort_keys=True).encode())
    for path in inputs:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def retrieval_scores(model: CavlForPretraining, texts: dict, regions: dict, chunk: int = 64) -> torch.Tensor:
    """cos(E', F') for every (caption i, image j) of N held-out pairs → (N, N): from text-only and
    image-only passes (`separate`), else from N² fused passes over (caption i, image j)."""
    norm = torch.nn.functional.normalize
    if model.objective.pwcl_encoding == "separate":
        e = model.text_embedding(texts["ids"], texts["mask"])  # (N, H)
        f = model.image_embedding(regions["feats"], regions["boxes"], regions["mask"])  # (N, H)
        return norm(e.float(), dim=-1) @ norm(f.float(), dim=-1).t()  # (N, N)
    N = texts["ids"].shape[0]
    ii, jj = torch.meshgrid(torch.arange(N), torch.arange(N), indexing="ij")
    ii, jj = ii.flatten(), jj.flatten()  # (N²,)
    out = torch.empty(N * N)
    for s in range(0, N * N, chunk):
        i, j = ii[s : s + chunk], jj[s : s + chunk]
        e, f = model.pair_embeddings(texts["ids"][i], texts["mask"][i], regions["feats"][j],
                                     regions["boxes"][j], regions["mask"][j])  # (c, H) each
        out[s : s + chunk] = (norm(e.float(), dim=-1) * norm(f.float(), dim=-1)).sum(-1).cpu()
    return out.view(N, N)


def recall_at_1(scores: torch.Tensor) -> dict:
    """Percent of captions whose own image ranks first (t2i) and of images whose caption does (i2t)."""
    target = torch.arange(scores.shape[0])
    return {"t2i_r@1": 100.0 * (scores.argmax(1).cpu() == target).float().mean().item(),
            "i2t_r@1": 100.0 * (scores.argmax(0).cpu() == target).float().mean().item()}


def make_eval_fn(val: PretrainBatches | None, settings: PretrainSection, device):
    if val is None:
        return None
    # retrieval pairs: the first caption of each of the first N distinct val images
    first = np.unique(val.image_codes, return_index=True)[1]
    first = np.sort(first)[: settings.eval.retrieval_pairs]

    def eval_fn(model: CavlForPretraining, step: int) -> dict:
        metrics, n = {}, 0
        for k in range(min(settings.eval.val_batches, len(val))):
            batch = {k2: v.to(device) for k2, v in val[k].items()}
            out = model(batch, gather=False)  # the main process only: no other rank to gather from
            for name, v in out.items():
                metrics[f"val_{name}"] = metrics.get(f"val_{name}", 0.0) + v.item()
            n += 1
        metrics = {k: v / n for k, v in metrics.items()}
        if len(first) >= 2:
            ids, mask, _ = val.tokenize(val.captions[first])
            feats, boxes, vmask = val.padded_regions(first)
            t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
            scores = retrieval_scores(model, {"ids": t(ids), "mask": t(mask)},
                                      {"feats": t(feats), "boxes": t(boxes), "mask": t(vmask)})
            metrics.update({f"val_{k}": v for k, v in recall_at_1(scores).items()})
            metrics["val_chance_r@1"] = 100.0 / len(first)
        return metrics

    return eval_fn


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m cavl.pretrain", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--config", action="append", default=[],
                   help="YAML/JSON config file or inline JSON; repeatable, later ones override")
    p.add_argument("--train", required=True, help="pretrain task train split")
    p.add_argument("--val", default="", help="pretrain task val split (default: none, no evaluation)")
    p.add_argument("--features", required=True,
                   help="feature root holding {dataset}/index.parquet and the shards")
    p.add_argument("--out", required=True, help="model folder written at the end")
    # (not `--log`: torchrun would take it for an abbreviation of its own --log-dir options)
    p.add_argument("--train-log", required=True, help="training log (JSON lines)")
    p.add_argument("--curves", required=True, help="PNG of the loss curves")
    p.add_argument("--checkpoints", required=True, help="checkpoint folder (resume)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (overrides pretrain.threads)")
    p.add_argument("--cpu", action="store_true", help="train on CPU even when a GPU is visible")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    config = read_config(args.config)
    model_s, s = settings_from_config(config)
    env = setup_distributed(cpu=args.cpu)
    try:
        torch.set_num_threads(max(1, args.threads or s.threads))
        bert = resolve_checkpoint_path(model_s.bert)
        tokenizer = AutoTokenizer.from_pretrained(str(bert))
        seed = s.train.seed
        data = data_config(s)
        sources = open_sources(args.features, data.sources)
        train_ex = load_examples(args.train, data, seed, sources)
        batches = PretrainBatches(train_ex, sources, tokenizer, data, s.train.batch_size, seed,
                                  env.rank, env.world_size)
        val = None
        if args.val:
            val_ex = load_examples(args.val, data, seed, sources)
            if len(val_ex) >= 2:
                val = PretrainBatches(val_ex, sources, tokenizer, data, min(s.train.batch_size, len(val_ex)),
                                      seed + 1, shuffle=True)
        if env.is_main:
            log.info("pretraining on %d examples (%s), %d val; %d process(es) × batch %d × accum %d; device %s",
                     len(train_ex), ", ".join(f"{k}={v}" for k, v in train_ex["dataset"].value_counts().items()),
                     0 if val is None else len(val.captions), env.world_size, s.train.batch_size,
                     s.train.grad_accum, env.device)

        seed_everything(seed)
        obj = objective_config(s)
        model = CavlForPretraining.from_bert(bert, batches.feature_dim, obj,
                                             hidden_dropout_prob=model_s.hidden_dropout,
                                             attention_probs_dropout_prob=model_s.attention_dropout)
        if model_s.standardize_features:
            model.bert.set_visual_feature_statistics(*feature_statistics(sources, train_ex, data.max_regions))
        if env.is_main:
            print(params_line(*count_parameters(model)), file=sys.stderr)

        inputs = [args.train] + [Path(args.features) / d / "index.parquet" for d in data.sources]
        trainer = Trainer(
            model, s.optim, s.train, env, args.checkpoints, fingerprint(model_s, s, inputs),
            loader_factory=lambda epoch, start: make_loader(batches, epoch, start, s.data.num_workers,
                                                            pin_memory=env.device.type == "cuda"),
            micro_batches_per_epoch=len(batches),
            samples_per_micro_batch=s.train.batch_size,
            eval_fn=make_eval_fn(val, s, env.device),
            find_unused_parameters=min(obj.mlm_weight, obj.itm_weight, obj.pwcl_weight) == 0,
            desc="pretrain",
        )
        model = trainer.fit()

        if env.is_main:
            resolved = {"model": asdict(model_s), "pretrain": asdict(s),
                        "run": {"world_size": env.world_size, "steps": trainer.total_steps,
                                "resumed_from": trainer.resumed_from, "bert_path": str(bert),
                                "inputs": [str(p) for p in inputs], "torch": str(torch.__version__)}}

            def extra(tmp: Path):
                tokenizer.save_pretrained(str(tmp))
                (tmp / "resolved_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

            model.cpu().save_pretrained(args.out, extra=extra)
            finalize_log(args.checkpoints, args.train_log, args.curves)
            log.info("wrote %s, %s, %s", args.out, args.train_log, args.curves)
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
