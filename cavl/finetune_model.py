"""The finetuning model of every task and method: FinetuneModel, its settings, training, saving,
loading, prediction and evaluation — used by `cavl.finetune` (settings → `train` → the model
folder) and `cavl.evaluate` (model folder → `evaluate` → metrics.json + predictions).

Settings: only the config's `finetune` section is read — shared settings plus
`finetune.tasks.<task>`, validated against workflow/schemas/config.schema.yaml, whose defaults are
the only ones (`settings_from_config`). The backbone is the pretraining stage's model folder.

Best epoch, not last: after every epoch the model is scored with the task's main metric (as
`evaluate` scores it) on a selection split — the table `finetune.tasks.<task>.select_split`, or,
when that is null, a seeded `finetune.select_fraction` of the train split's images held out from
training (whole images: none is on both sides). The selection split is never the eval split. The
model saved is the best epoch's (ties: the earlier); the log has a `select_<metric>` record per
epoch and a `best_epoch` event, finetune_config.json a `selection`.

Training is cavl.train_loop's (exact resume from the checkpoint folder, DDP, log.jsonl + curves).
With `adapter1` or `linear` the backbone is frozen (eval mode, no_grad); with the cache enabled its
final hidden states are precomputed once into the cache folder (cavl.backbone_cache).

The model folder holds only what the method trained (`finetuned.safetensors`: every parameter with
requires_grad) and `finetune_config.json` (task, method, adapter settings, task state, the epoch
selection, parameter counts, the backbone as a path + SHA-256 reference);
`FinetuneModel.from_finetuned(folder)` loads it back onto the referenced backbone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from cavl.adapters import (AdapterSettings, ShortcutAdapter, backbone_frozen, check_method, configure_trainable,
                           count_parameters, install_bottleneck_adapters, params_line, state_checksum,
                           trainable_state, uses_adapter1, uses_adapter2)
from cavl.backbone_cache import precompute
from cavl.data.batches import make_loader
from cavl.io import atomic_dir, file_sha256
from cavl.model import WEIGHTS_NAME, CavlModel, CavlOutput
from cavl.tasks import REGISTRY, get_task
from cavl.tasks.base import DataSettings, Encoded, Task, TaskBatches, TaskLoss, TaskOutput
from cavl.settings import (CacheSettings, FinetuneSection, OptimConfig, TrainConfig, TrainedTaskSection,
                           load_section, operational_keys, option_keys, task_section, without)
from cavl.train_loop import Trainer, cleanup_distributed, seed_everything, setup_distributed
from cavl.training_log import finalize_log

log = logging.getLogger(__name__)

FINETUNED_WEIGHTS = "finetuned.safetensors"
FINETUNED_CONFIG = "finetune_config.json"


@dataclass
class FinetuneSettings:
    """Everything one finetuning run of one task depends on: the `finetune` section with the task's
    entry resolved over it (`settings_from_config`). Saved with the model (finetune_config.json)."""

    task: str  # registry name
    method: str  # full | linear | adapter1 | adapter2 | adapter1+2
    train_split: str  # split trained on
    eval_split: str  # split evaluated (rule evaluate; in-training eval when train.eval_every > 0)
    select_split: str | None  # split the best epoch is chosen on; None: held-out images of train_split
    select_fraction: float  # select_split None: share of the train split's images held out for it
    options: dict  # the task's own keys (vqa: answer_vocab_size; cavl.settings.option_keys)
    data: DataSettings
    adapters: AdapterSettings
    cache: CacheSettings
    optim: OptimConfig
    train: TrainConfig
    eval_batch_size: int  # items per evaluation batch
    gpus: int  # processes under torchrun (0 = one CPU process)
    threads: int  # torch CPU threads per process
    num_workers: int  # DataLoader worker processes per training process


# An evaluate-only task (zs_tir) trains nothing, and its entry has none of these keys: its settings
# record them as these placeholders (method → finetune.optim.lr's rate of it), which nothing reads.
ZERO_SHOT_PLACEHOLDERS = {"method": "adapter2", "train_split": "train", "select_split": None, "epochs": 2,
                          "batch_size": 16}


def settings_from_config(config: dict, task: str, method: str | None = None) -> FinetuneSettings:
    """`config["finetune"]` (as in config.yaml), validated against the schema, whose defaults are
    the only ones → the settings of one task: its `finetune.tasks.<task>` entry over the shared
    section (lr: the task's own rate, a number or per method, over finetune.optim.lr; `method`
    overrides its method). A bad key raises cavl.config.ConfigError (a ValueError) naming it."""
    if task not in REGISTRY:
        raise ValueError(f"unknown task {task!r}; registered: {', '.join(REGISTRY)}")
    f = load_section(FinetuneSection, config, "finetune")
    entry = getattr(f.tasks, task)
    t = asdict(entry) if isinstance(entry, TrainedTaskSection) else {**ZERO_SHOT_PLACEHOLDERS, **asdict(entry)}
    method = check_method(method or t["method"])
    train_split, eval_split, select_split = t["train_split"], t["eval_split"], t["select_split"]
    if select_split is not None and select_split in (eval_split, train_split):
        what = ("the split evaluated (eval_split): the reported score would be tuned on it"
                if select_split == eval_split else
                "the split trained on (train_split): null holds out part of its images instead")
        raise ValueError(f"finetune.tasks.{task}.select_split = {select_split!r} is {what}; "
                         f"choose another split for finetune.tasks.{task}.select_split")
    lr = dict(f.optim.lr)  # per method
    own = t.get("lr")
    if own is not None:  # the task's own
        lr.update(own if isinstance(own, dict) else dict.fromkeys(lr, own))
    shared = {k: v for k, v in asdict(f.optim).items() if k != "lr"}
    # new_lr_scale: finetuning has no such key, every trained parameter gets the one rate
    optim = OptimConfig(**shared, lr=float(lr[method]), new_lr_scale=1.0)
    train = TrainConfig(**asdict(f.train), epochs=int(t["epochs"]), batch_size=int(t["batch_size"]))
    return FinetuneSettings(
        task=task, method=method, train_split=train_split, eval_split=eval_split, select_split=select_split,
        select_fraction=f.select_fraction, options={k: t[k] for k in option_keys(type(entry))},
        data=DataSettings(max_text_len=int(t["max_text_len"]), max_regions=int(t["max_regions"])),
        adapters=f.adapters, cache=f.cache, optim=optim, train=train, eval_batch_size=f.eval_batch_size,
        gpus=f.gpus, threads=f.threads, num_workers=f.num_workers)


def fingerprint(s: FinetuneSettings, backbone_sha: str, inputs: list) -> str:
    """Hash of what a checkpoint depends on: settings less their operational keys (those of the
    shared section and of the task's entry, which sits at the top of the settings:
    cavl.settings.operational), backbone, inputs."""
    shared = {k for k in operational_keys(FinetuneSection) if not k.startswith("tasks.")}
    d = without(asdict(s), shared | operational_keys(task_section(s.task)))
    h = hashlib.sha256(json.dumps({"finetune": d, "backbone": backbone_sha}, sort_keys=True).encode())
    for path in inputs:
        h.update(file_sha256(path).encode())
    return h.hexdigest()


class FinetuneModel(nn.Module):
    """Backbone, adapters of `method`, and the task's head; forward(batch) → TaskLoss.

    Encoding a batch (B items × K sequences = N sequences) is one backbone forward
    (cavl.model.CavlModel: embeddings with word-region links, the encoder — frozen methods: eval
    mode, no_grad, or the cached `backbone_states` — the shortcut (Adapter I), the pooler); the head
    then runs on Encoded(pooled (B, K, H), states (B, K, T, H)).
    """

    def __init__(self, backbone: CavlModel, task: Task, state: dict, method: str, adapters: AdapterSettings):
        super().__init__()
        self.task, self.state, self.method, self.adapter_settings = task, state, check_method(method), adapters
        cfg = backbone.config
        if uses_adapter2(method):
            install_bottleneck_adapters(backbone, adapters.bottleneck)
        self.backbone = backbone
        self.shortcut = ShortcutAdapter(cfg, adapters) if uses_adapter1(method) else None
        self.head = task.make_head(cfg.hidden_size, state, cfg.layer_norm_eps, cfg.hidden_dropout_prob)
        configure_trainable(self, backbone, method, adapters)

    @property
    def frozen_backbone(self) -> bool:
        return backbone_frozen(self.method)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()  # frozen and cacheable: no dropout in it
        return self

    def _backbone(self, batch: dict, **kwargs) -> CavlOutput:
        """The backbone's forward on the sequences of a batch (its `region_links` included)."""
        return self.backbone(batch["input_ids"], batch["attention_mask"], batch["visual_feats"],
                             batch["visual_boxes"], batch["visual_mask"], batch["token_type_ids"],
                             word_region_links=batch.get("region_links"), frozen=self.frozen_backbone, **kwargs)

    def backbone_states(self, batch) -> torch.Tensor:
        """The backbone's final hidden states (N, L+R, H), without the shortcut — what the cache stores."""
        return self._backbone(batch).last_hidden_state

    def encode(self, batch) -> Encoded:
        """The batch's sequences through backbone, adapters and shortcut (one backbone forward),
        as the head sees them; frozen methods read the cached states when the batch has them."""
        cached = batch.get("backbone_states") if self.frozen_backbone else None
        out = self._backbone(batch, cached_states=cached, shortcut=self.shortcut)
        h, pooled = out.last_hidden_state, out.pooled_output  # (N, T, H), (N, H)
        N, T, H = h.shape
        K = self.task.num_candidates
        return Encoded(pooled.view(N // K, K, H), h.view(N // K, K, T, H), out.text_len, batch)

    def encode_text(self, input_ids, attention_mask, token_type_ids=None) -> CavlOutput:
        """A text-only pass through backbone, adapters and shortcut (retrieval's E′)."""
        return self.backbone.encode_text(input_ids, attention_mask, token_type_ids, shortcut=self.shortcut,
                                         frozen=self.frozen_backbone)

    def encode_image(self, visual_feats, visual_boxes, visual_mask) -> CavlOutput:
        """An image-only pass (`[CLS] [SEP]` + regions) through backbone, adapters and shortcut (F′)."""
        return self.backbone.encode_image(visual_feats, visual_boxes, visual_mask, shortcut=self.shortcut,
                                          frozen=self.frozen_backbone)

    def task_output(self, batch) -> TaskOutput:
        """The task's forward pass (default: the head on `encode(batch)`)."""
        return self.task.forward(self, batch)

    def loss(self, out: TaskOutput, batch) -> TaskLoss:
        return self.task.loss(out, batch, self.state)

    def forward(self, batch) -> TaskLoss:
        """The losses of a batch; a TaskLoss reads as {"loss": total, "<task>_loss": ...} (cavl.train_loop)."""
        return self.loss(self.task_output(batch), batch)

    def save_finetuned(self, directory, backbone_ref: dict, info: dict, extra=None):
        """Write the trained tensors + finetune_config.json into `directory`, atomically."""
        trainable, total = count_parameters(self)
        config = {"model_type": "cavl-finetune", "task": self.task.name, "method": self.method,
                  "adapters": asdict(self.adapter_settings), "task_state": self.state,
                  "backbone": backbone_ref, "backbone_config": asdict(self.backbone.config),
                  "trainable_params": trainable, "total_params": total,
                  "params_line": params_line(trainable, total), **info}
        state = {k: v.contiguous().cpu() for k, v in trainable_state(self).items()}

        def write(tmp: Path):
            save_file(state, str(tmp / FINETUNED_WEIGHTS), metadata={"format": "pt"})
            (tmp / FINETUNED_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
            if extra is not None:
                extra(tmp)

        with atomic_dir(directory) as tmp:
            write(tmp)

    @staticmethod
    def saved_config(directory) -> dict:
        """The finetune_config.json of a folder written by `save_finetuned`."""
        return json.loads((Path(directory) / FINETUNED_CONFIG).read_text())

    @classmethod
    def from_finetuned(cls, directory, backbone=None) -> tuple["FinetuneModel", dict]:
        """(model, its finetune_config) from a folder written by `save_finetuned`; the backbone
        comes from the referenced folder (or `backbone`) and must match its recorded SHA-256."""
        directory = Path(directory)
        config = cls.saved_config(directory)
        path = Path(backbone or config["backbone"]["path"])
        sha = file_sha256(path / WEIGHTS_NAME)
        if sha != config["backbone"]["sha256"]:
            raise ValueError(f"backbone {path / WEIGHTS_NAME} has SHA-256 {sha}, but {directory} was finetuned "
                             f"from {config['backbone']['sha256']}: finetune again or pass the original backbone")
        model = cls(CavlModel.from_pretrained(path), get_task(config["task"]), config["task_state"],
                    config["method"], AdapterSettings(**config["adapters"]))
        weights = load_file(str(directory / FINETUNED_WEIGHTS))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected:
            raise ValueError(f"{directory / FINETUNED_WEIGHTS} holds tensors the model lacks: {unexpected[:5]}")
        untrained = set(missing) & {k for k, p in model.named_parameters() if p.requires_grad}
        if untrained:
            raise ValueError(f"{directory / FINETUNED_WEIGHTS} lacks trained tensors: {sorted(untrained)[:5]}")
        return model, config


def model_checksum(directory) -> str:
    """Identity of a finetuned model: SHA-256 over its weights file and its backbone's."""
    own = file_sha256(Path(directory) / FINETUNED_WEIGHTS)
    backbone = FinetuneModel.saved_config(directory)["backbone"]["sha256"]
    return hashlib.sha256(f"{own}:{backbone}".encode()).hexdigest()


def load_tokenizer(backbone_dir):
    """The tokenizer saved with the backbone (the pretraining stage writes it into its folder)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the folder's config.json is a CAVL one, not a BERT one: expected
    try:
        return AutoTokenizer.from_pretrained(str(backbone_dir))
    finally:
        hf_logging.set_verbosity(level)


@torch.no_grad()
def predict(model: FinetuneModel, batches: TaskBatches, device) -> tuple[dict, float]:
    """Decoded outputs of every item of `batches` (in item order) and their mean loss."""
    was_training = model.training
    model.eval()
    outputs, losses = {}, []
    try:
        for k in range(len(batches)):
            batch = {key: v.to(device) if torch.is_tensor(v) else v for key, v in batches[k].items()}
            out = model.task_output(batch)
            losses.append(float(model.loss(out, batch).loss))
            for key, v in model.task.decode(out, batch).items():
                outputs.setdefault(key, []).append(v)
    finally:
        model.train(was_training)
    outputs = {k: np.concatenate(v) for k, v in outputs.items()}
    return outputs, float(np.mean(losses))


def score_split(model: FinetuneModel, examples, regions, tokenizer, data: DataSettings, batch_size: int, device,
                batches: TaskBatches | None = None) -> tuple[pd.DataFrame, float | None]:
    """(predictions table, mean loss or None) of `model` on `examples`, as rule evaluate scores a
    split: the task's whole-split path (tir: retrieval) if it has one, else item by item
    (`batches`: those of `examples`, prebuilt, e.g. with a backbone cache)."""
    task, state = model.task, model.state
    predictions = task.predict_split(model, examples, regions, tokenizer, data, batch_size, device)
    if predictions is not None:
        return predictions, None
    if batches is None:
        batches = TaskBatches(task, examples, state, regions, tokenizer, data, batch_size, shuffle=False)
    outputs, loss = predict(model, batches, device)
    return task.predictions(examples, batches.items, outputs, state), loss


def evaluate(task_name: str, model_dir, eval_path, train_path, features, backbone=None, split=None,
             batch_size=None, device="cpu", settings=None) -> tuple[dict, "object"]:
    """(metrics.json content, predictions DataFrame) of the model in `model_dir` on `eval_path`.

    Evaluate-only tasks (zs_tir) have no model folder: the backbone is evaluated as it is, with
    `settings` (the task's resolved finetune settings, as a dict)."""
    task = get_task(task_name)
    if task.zero_shot:
        model, config = task.zero_shot_model(backbone, settings)
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
    state, settings, data = model.state, config["settings"], DataSettings(**config["settings"]["data"])
    model.to(device)
    regions = task.region_source(features, data)
    examples = task.labelled(task.with_features(task.read(eval_path), regions, "eval"), "eval")
    train = task.read(train_path) if train_path else None
    tokenizer = load_tokenizer(backbone or config["backbone"]["path"])
    batch_size = batch_size or settings["eval_batch_size"]
    predictions, _ = score_split(model, examples, regions, tokenizer, data, batch_size, device)
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


@dataclass
class FinetunePaths:
    """The files one finetuning run reads and writes: cavl.finetune's path arguments, every one given."""

    backbone: str  # pretrained model folder, with its tokenizer (the pretraining stage's output)
    train: str  # train split table
    features: str  # feature index of the task's images
    out: str  # model folder written at the end (FinetuneModel.save_finetuned)
    log: str  # training log, JSON lines
    curves: str  # PNG of the loss curves
    checkpoints: str  # checkpoint folder: resume, and the best epoch's trainable state
    cache: str  # backbone cache folder (frozen methods with finetune.cache.enabled)
    select: str | None = None  # selection split table: given exactly when the task's select_split is set
    eval: str | None = None  # eval split table of the in-training evaluation (read when train.eval_every > 0)


def make_select_fn(task: Task, examples, state: dict, regions, tokenizer, data: DataSettings, batch_size: int,
                   device, cache=None):
    """Best-epoch selection: the task's metrics (and loss, where it has one) on the selection
    examples, computed as rule evaluate computes them (main process); `cache`: the precomputed
    backbone states of their sequences (cavl.backbone_cache), or None."""
    batches = TaskBatches(task, examples, state, regions, tokenizer, data, batch_size, shuffle=False, cache=cache)

    def select_fn(model: FinetuneModel, step: int) -> dict:
        predictions, loss = score_split(model, examples, regions, tokenizer, data, batch_size, device, batches)
        metrics = {k: v for k, v in task.metrics(predictions, examples, state).items() if v is not None}
        return metrics if loss is None else {f"{task.name}_loss": loss, **metrics}

    return select_fn


def image_groups(task: Task, examples: pd.DataFrame) -> np.ndarray:
    """Per example, a group label such that examples sharing an image (through any of the task's
    image columns: nlvr2's pair) have the same one — the connected components of images."""
    columns = [examples[c].astype(str).to_numpy() for c in task.image_columns]
    parent = {}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for images in zip(*columns):
        for image in images:
            parent.setdefault(image, image)
        root = find(images[0])
        for image in images[1:]:
            other = find(image)
            if other != root:
                parent[other] = root
    return np.asarray([find(i) for i in columns[0]], dtype=object) if len(examples) else np.zeros(0, object)


def hold_out_images(task: Task, examples: pd.DataFrame, fraction: float,
                    seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train part, selection part) of a train split: a seeded `fraction` of its images goes to the
    selection part with every example that shows one, so no image is on both sides (image groups:
    `image_groups`). Which images go depends on (seed, image ids), not on the row order; at least
    one group goes and one stays."""
    groups = image_groups(task, examples)
    members = {}
    for image_col in task.image_columns:
        for g, image in zip(groups, examples[image_col].astype(str)):
            members.setdefault(g, set()).add(image)
    if len(members) < 2:
        raise ValueError(f"{task.name}: the train split has {len(members)} image group(s); holding images out for "
                         f"epoch selection needs 2 or more (or set finetune.tasks.{task.name}.select_split)")
    n_images = sum(len(m) for m in members.values())
    target = max(1, round(fraction * n_images))
    order = sorted(members, key=lambda g: hashlib.sha256(f"{seed}:{min(members[g])}".encode()).hexdigest())
    held, count = set(), 0
    for g in order[:-1]:  # the last group always trains
        if count >= target:
            break
        held.add(g)
        count += len(members[g])
    mask = np.isin(groups, list(held))
    return examples[~mask].reset_index(drop=True), examples[mask].reset_index(drop=True)


def make_eval_fn(model_task: Task, examples, batches: TaskBatches, state: dict, device):
    """In-training evaluation: loss and the task's metrics on the eval split (main process)."""

    def eval_fn(model: FinetuneModel, step: int) -> dict:
        outputs, loss = predict(model, batches, device)
        preds = model_task.predictions(examples, batches.items, outputs, state)
        metrics = model_task.metrics(preds, examples, state)
        return {f"val_{model_task.name}_loss": loss, **{f"val_{k}": v for k, v in metrics.items() if v is not None}}

    return eval_fn


def selection_examples(task: Task, s: FinetuneSettings, paths: FinetunePaths, train_ex: pd.DataFrame, regions):
    """(train examples, selection examples, selection record): the labelled examples of the selection
    table (`paths.select`), or — select_split null — a held-out share of the train split's images."""
    if s.select_split is None:
        train_ex, select_ex = hold_out_images(task, train_ex, s.select_fraction, s.train.seed)
        return train_ex, select_ex, {"split": s.train_split, "held_out_fraction": s.select_fraction,
                                     "seed": s.train.seed, "examples": len(select_ex)}
    tables = {"train": paths.train,  # and the table rule evaluate scores, beside it
              "eval": str(Path(paths.train).parent / f"{s.eval_split}.parquet")}
    same = {os.path.realpath(v): k for k, v in tables.items()}.get(os.path.realpath(paths.select))
    if same:
        raise ValueError(f"the selection table {paths.select} is the {same} split's table: choose another split "
                         f"for finetune.tasks.{task.name}.select_split")
    select_ex = task.labelled(task.with_features(task.read(paths.select), regions, "select"), "select")
    groups = image_groups(task, pd.concat([train_ex, select_ex], ignore_index=True))
    shared = set(groups[: len(train_ex)]) & set(groups[len(train_ex) :])
    if shared:
        log.warning("%s: %d image group(s) of the selection split %s are also in the train split", task.name,
                    len(shared), paths.select)
    return train_ex, select_ex, {"split": s.select_split, "held_out_fraction": None, "examples": len(select_ex)}


def train(s: FinetuneSettings, paths: FinetunePaths, cpu: bool = False, threads: int | None = None) -> None:
    """Finetune the task of `s` (one process, or one of torchrun's): the best epoch's model into
    `paths.out`, the log and curves into `paths.log` and `paths.curves` (main process); resumes from
    `paths.checkpoints`. `cpu`: even when a GPU is visible; `threads`: torch CPU threads per process
    (None: finetune.threads)."""
    env = setup_distributed(cpu=cpu)
    try:
        torch.set_num_threads(max(1, threads or s.threads))
        task = get_task(s.task)
        tokenizer = load_tokenizer(paths.backbone)
        regions = task.region_source(paths.features, s.data)
        train_ex = task.labelled(task.with_features(task.read(paths.train), regions, "train"), "train")
        seed = s.train.seed
        train_ex, select_ex, selection = selection_examples(task, s, paths, train_ex, regions)
        state = task.prepare(train_ex, s.options)
        batches = TaskBatches(task, train_ex, state, regions, tokenizer, s.data, s.train.batch_size, seed,
                              env.rank, env.world_size)

        backbone_sha = file_sha256(Path(paths.backbone) / WEIGHTS_NAME)
        seed_everything(seed)
        model = FinetuneModel(CavlModel.from_pretrained(paths.backbone), task, state, s.method, s.adapters)
        task.init_from_pretrained(model, paths.backbone)  # e.g. tir: the head starts as pretraining's ITM head
        trainable, total = count_parameters(model)
        if env.is_main:
            log.info("finetuning %s with %s on %d examples (%d items); %d process(es) × batch %d × accum %d; "
                     "device %s", task.name, s.method, len(train_ex), len(batches.items), env.world_size,
                     s.train.batch_size, s.train.grad_accum, env.device)
            log.info("best epoch chosen by %s on %s: %d examples", task.main_metric,
                     paths.select or f"{s.select_fraction:g} of the train images (seed {seed})", len(select_ex))
            print(params_line(trainable, total), flush=True)

        select_cache = None
        if model.frozen_backbone and s.cache.enabled:  # the train and selection sequences' states, once
            model.to(env.device)
            model.eval()
            select = TaskBatches(task, select_ex, state, regions, tokenizer, s.data, s.eval_batch_size, shuffle=False)
            with torch.no_grad():
                (batches.cache, select_cache), stats = precompute(
                    paths.cache, [batches, select],
                    lambda b: model.backbone_states({k: v.to(env.device) for k, v in b.items()}),
                    backbone=state_checksum(model.backbone), hidden=model.backbone.config.hidden_size,
                    chunk_size=s.eval_batch_size, dtype=s.cache.dtype, rank=env.rank, world_size=env.world_size)
            if env.is_main:
                log.info("backbone cache %s: %d sequences, %d computed now", paths.cache, stats["sequences"],
                         stats["computed"])

        eval_fn = None
        if s.train.eval_every > 0:
            eval_ex = task.labelled(task.with_features(task.read(paths.eval), regions, "eval"), "eval")
            eval_batches = TaskBatches(task, eval_ex, state, regions, tokenizer, s.data, s.eval_batch_size,
                                       shuffle=False)
            eval_fn = make_eval_fn(task, eval_ex, eval_batches, state, env.device)

        select_fn = make_select_fn(task, select_ex, state, regions, tokenizer, s.data, s.eval_batch_size,
                                   env.device, cache=select_cache)
        inputs = [paths.train, paths.features, *([paths.select] if paths.select else [])]
        trainer = Trainer(
            model, s.optim, s.train, env, paths.checkpoints, fingerprint(s, backbone_sha, inputs),
            loader_factory=lambda epoch, start: make_loader(batches, epoch, start, s.num_workers,
                                                            pin_memory=env.device.type == "cuda"),
            micro_batches_per_epoch=len(batches), samples_per_micro_batch=s.train.batch_size,
            eval_fn=eval_fn, desc=f"finetune {task.name}", select_fn=select_fn, select_metric=task.main_metric)
        model = trainer.fit()  # the best epoch's weights

        if env.is_main:
            resolved = asdict(s)
            run = {"world_size": env.world_size, "steps": trainer.total_steps, "resumed_from": trainer.resumed_from,
                   "inputs": [str(p) for p in inputs], "torch": str(torch.__version__)}
            best = trainer.best or {}
            selection = {**selection, "metric": task.main_metric, "epoch": best.get("epoch"),
                         "step": best.get("step"), "value": best.get("value"), "history": trainer.selection}
            model.cpu().save_finetuned(
                paths.out, {"path": str(paths.backbone), "sha256": backbone_sha},
                {"settings": resolved, "run": run, "selection": selection},
                extra=lambda tmp: (tmp / "resolved_config.yaml").write_text(
                    yaml.safe_dump({"finetune": resolved, "run": run, "selection": selection}, sort_keys=False)))
            finalize_log(paths.checkpoints, paths.log, paths.curves)
            log.info("wrote %s, %s, %s", paths.out, paths.log, paths.curves)
    finally:
        cleanup_distributed()
