"""What every task shares: the Task interface, region features, sequences → model inputs, batches.

A task turns each *item* (an example, or — VCR — one sub-question of it) into K input
sequences `[CLS] a [SEP] (b [SEP])` + the regions of one image (`TextImage`); the backbone
encodes all B·K sequences of a batch; the task's head sees their pooled states as (B, K, H)
and returns logits, which its forward wraps in a `TaskOutput` for its loss, decoding and metric.

Regions are read, cut and padded as in pretraining (cavl.data.regions), and batches are drawn by
the same sampler (cavl.data.batches): a pure function of (seed, epoch, rank, batch index), so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cavl.adapters import TaskHead
from cavl.data.batches import EpochBatches
from cavl.data.regions import RegionSource, pad_regions

log = logging.getLogger(__name__)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass
class TextImage:
    """One input sequence: text a (and b) as words, the image whose regions follow the text."""

    words_a: list  # words of the first text segment
    image_id: str  # image of the task's feature dataset
    words_b: list | None = None  # words of the second segment (token type 1), or None
    links_a: list | None = None  # per word of a: region indices it refers to ([] for none), or None
    links_b: list | None = None  # the same for b


@dataclass
class DataSettings:
    """A task's sequences (`finetune.tasks.<task>.max_text_len`, `.max_regions`)."""

    max_text_len: int  # wordpiece tokens per sequence, [CLS]/[SEP] included (longest segment cut first)
    max_regions: int  # region tokens per image (given boxes first, then the detector's best)


def encode_sequences(seqs: list, tokenizer, regions: RegionSource, cfg: DataSettings) -> dict:
    """Sequences → padded numpy inputs of the backbone.

    input_ids, attention_mask, token_type_ids (N, L); visual_feats (N, R, D), visual_boxes
    (N, R, 5), visual_mask (N, R) (cavl.data.regions.pad_regions); region_links (N, R, L) float32
    (1 where text token l refers to region r, a given box; only when some sequence has links).
    """
    pairs = [s.words_b is not None for s in seqs]
    if any(pairs) and not all(pairs):
        raise ValueError("a batch mixes single-segment and two-segment sequences")
    enc = tokenizer([list(s.words_a) for s in seqs], [list(s.words_b) for s in seqs] if pairs[0] else None,
                    is_split_into_words=True, truncation=True, max_length=cfg.max_text_len,
                    padding="longest", return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)  # (N, L)
    mask = enc["attention_mask"].astype(np.int64)
    types = enc["token_type_ids"].astype(np.int64) if "token_type_ids" in enc else np.zeros_like(ids)
    regs = [regions.get(s.image_id, cfg.max_regions) for s in seqs]
    feats, boxes, vmask = pad_regions(regs, cfg.max_regions, regions.feature_dim)  # (N, R, D), (N, R, 5), (N, R)
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
           "visual_feats": feats, "visual_boxes": boxes, "visual_mask": vmask}
    links = None
    if any(s.links_a is not None or s.links_b is not None for s in seqs):
        N, L = ids.shape
        links = np.zeros((N, feats.shape[1], L), np.float32)  # (N, R, L)
        dropped = 0
        for i, s in enumerate(seqs):
            per_segment = (s.links_a, s.links_b)
            for j, (word, seg) in enumerate(zip(enc.word_ids(i), enc.sequence_ids(i))):
                if word is None or per_segment[seg] is None:
                    continue
                for r in per_segment[seg][word]:
                    if r < regs[i].num_given:  # links refer to the given (ground-truth) boxes
                        links[i, r, j] = 1.0
                    else:
                        dropped += 1
        if dropped:
            log.warning("%d word-region links point past the given boxes of their image (features "
                        "extracted without the manifest's boxes, or max_regions too small); dropped", dropped)
        out["region_links"] = links
    return out


@dataclass
class Encoded:
    """What a head sees of a batch of B items with K sequences each."""

    pooled: torch.Tensor  # (B, K, H) pooled [CLS] states
    states: torch.Tensor  # (B, K, T, H) token states (text first, then regions)
    text_len: int  # L: the first L of the T positions are text tokens
    batch: dict  # the batch (targets, links, ...)


@dataclass
class TaskOutput:
    """What `Task.forward` gives its `loss` and `decode` (tir subclasses it: TirOutput)."""

    logits: torch.Tensor  # the head's scores, first dimension = items (tir: + its negatives)


@dataclass(frozen=True)
class TaskLoss(Mapping):
    """The total `loss` that is back-propagated and its named parts (`<task>_loss`, ...); reads as
    the mapping {"loss": total, **parts}, which cavl.train_loop steps on and logs."""

    loss: torch.Tensor  # () the total
    parts: dict = field(default_factory=dict)  # name (ending in "_loss") → () tensor

    def __getitem__(self, key):
        return self.loss if key == "loss" else self.parts[key]

    def __iter__(self):
        yield "loss"
        yield from self.parts

    def __len__(self):
        return 1 + len(self.parts)


class Mlp(nn.Module):
    """The VisualBERT / MMF classifier: dense → GELU → LayerNorm → dropout → linear."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, eps: float = 1e-12, dropout: float = 0.1,
                 init_std: float = 0.02):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps),
                                 nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=init_std)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.net(x)


class MlpHead(TaskHead):
    """A head scoring with an `Mlp`; subclasses' forward feeds it their view of the Encoded batch."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, eps: float, dropout: float):
        super().__init__()
        self.mlp = Mlp(in_dim, hidden, out_dim, eps, dropout)


def cross_entropy_loss(out: TaskOutput, labels: torch.Tensor, name: str) -> TaskLoss:
    """TaskLoss of a K-way choice: cross-entropy of the (float32) logits, as the part `name`."""
    loss = F.cross_entropy(out.logits.float(), labels)
    return TaskLoss(loss, {name: loss})


class Task:
    """One downstream task. Subclasses set the class attributes and override the methods."""

    name: str = ""  # registry name (the Snakemake `task` wildcard)
    num_candidates: int = 1  # K: sequences per item (VCR: 4 choices; NLVR2: 2 images)
    main_metric: str = "accuracy"  # the metric benchmarks, in-training evaluation and best-epoch selection use
    image_columns: tuple = ("image_id",)  # example columns holding image ids (rows without features are dropped)
    label_columns: tuple = ()  # example columns that must be known to train / score
    # the task's own settings (its `finetune.tasks.<task>` keys besides those every task has) with
    # the schema's defaults: cavl.settings.task_options(name)
    options: dict = {}
    zero_shot: bool = False  # evaluate-only: the pretrained model as it is, never finetuned (zs_tir)
    skip_given: bool = False  # regions: the detector's only, the given ground-truth boxes left out (rpg, tir)

    def region_source(self, index_path, data: "DataSettings") -> RegionSource:
        """The first `data.max_regions` regions of each image: given boxes first (unless
        `skip_given`), then the detector's."""
        return RegionSource(index_path, data.max_regions, skip_given=self.skip_given)

    def read(self, path) -> pd.DataFrame:
        """The task table of one split (docs/contracts.md); an empty one is an error naming it."""
        table = pd.read_parquet(path)
        if table.empty:
            raise ValueError(f"{path}: the split has no examples (too few images for it in the data?)")
        return table

    def prepare(self, train: pd.DataFrame, options: dict) -> dict:
        """Task state learnt from the train split (e.g. the answer vocabulary); saved with the model."""
        return {}

    def items(self, examples: pd.DataFrame) -> pd.DataFrame:
        """One row per item with `example` (row position in `examples`); default one per example."""
        return pd.DataFrame({"example": np.arange(len(examples))})

    def sequences(self, example: dict, item: dict, state: dict) -> list:
        """The K `TextImage` sequences of one item."""
        raise NotImplementedError

    def targets(self, examples: pd.DataFrame, items: pd.DataFrame, state: dict) -> dict:
        """Training targets of a batch of items (numpy arrays, first dimension = items);
        `examples` holds each item's example row, aligned with `items`."""
        raise NotImplementedError

    def make_head(self, hidden: int, state: dict, eps: float, dropout: float) -> TaskHead:
        """The head: a TaskHead whose forward(Encoded) returns the logits."""
        raise NotImplementedError

    def init_from_pretrained(self, model, backbone_dir):
        """Start task parts of a new finetuning model from the pretraining folder (tir: the ITM head)."""

    def forward(self, model, batch: dict) -> TaskOutput:
        """The head on the encoded batch (`model`: a FinetuneModel); tir adds in-batch hard negatives."""
        return TaskOutput(model.head(model.encode(batch)))

    def loss(self, out: TaskOutput, batch: dict, state: dict) -> TaskLoss:
        """TaskLoss(total, {"<task>_loss": ...}); `state`: the task state (tir: its loss weights)."""
        raise NotImplementedError

    def decode(self, out: TaskOutput, batch: dict) -> dict:
        """Per-item outputs worth keeping (numpy arrays, first dimension = items)."""
        raise NotImplementedError

    def predictions(self, examples: pd.DataFrame, items: pd.DataFrame, outputs: dict, state: dict) -> pd.DataFrame:
        """The predictions table (one row per example) from the decoded outputs of all items."""
        raise NotImplementedError

    def metrics(self, predictions: pd.DataFrame, examples: pd.DataFrame, state: dict) -> dict:
        raise NotImplementedError

    def chance(self, train: pd.DataFrame, examples: pd.DataFrame, state: dict) -> dict:
        raise NotImplementedError

    def predict_split(self, model, examples: pd.DataFrame, regions: RegionSource, tokenizer, data: "DataSettings",
                      batch_size: int, device) -> pd.DataFrame | None:
        """The predictions table of a whole split at once (tir: every image against every caption),
        or None for the per-item path (cavl.finetune_model.predict, then `predictions`)."""
        return None

    def report(self, predictions: pd.DataFrame, examples: pd.DataFrame, state: dict,
               train: pd.DataFrame | None = None) -> dict:
        """Extra top-level fields of metrics.json (e.g. `significance`; vqa: the question-type prior)."""
        return {}

    def with_features(self, examples: pd.DataFrame, regions: RegionSource, what: str) -> pd.DataFrame:
        """`examples` whose images all have region features (a warning counts the others)."""
        keep = np.ones(len(examples), dtype=bool)
        for col in self.image_columns:
            keep &= examples[col].astype(str).map(lambda i: i in regions).to_numpy()
        dropped = int((~keep).sum())
        if dropped:
            log.warning("%s: %d of %d examples have no region features (failed extraction?); skipped",
                        what, dropped, len(examples))
        return examples[keep].reset_index(drop=True)

    def labelled_mask(self, examples: pd.DataFrame) -> np.ndarray:
        """Which examples have known labels (default: no null in `label_columns`)."""
        keep = np.ones(len(examples), dtype=bool)
        for col in self.label_columns:
            keep &= examples[col].notna().to_numpy()
        return keep

    def gold(self, examples: pd.DataFrame, predictions: pd.DataFrame, key: str) -> pd.DataFrame:
        """The example row of each prediction, matched on the id column `key`."""
        return examples.set_index(key).loc[predictions[key]]

    def labelled(self, examples: pd.DataFrame, what: str) -> pd.DataFrame:
        """`examples` whose labels are known (an unlabelled split cannot be trained on or scored)."""
        keep = self.labelled_mask(examples)
        if not keep.any():
            raise ValueError(f"{what}: no labelled examples")
        if not keep.all():
            log.warning("%s: %d unlabelled examples skipped", what, int((~keep).sum()))
        return examples[keep].reset_index(drop=True)


class TaskBatches(EpochBatches):
    """Map-style dataset of this rank's micro-batches of the current epoch (cavl.data.batches.EpochBatches:
    shuffle=True for training, shuffle=False for evaluation: items in order, the last batch may be short).

    `cache`: the frozen backbone's precomputed states of this table's sequences (a
    cavl.backbone_cache.BackboneStates, row = item · K + k); each batch then also carries
    `backbone_states`.
    """

    def __init__(self, task: Task, examples: pd.DataFrame, state: dict, regions: RegionSource, tokenizer,
                 cfg: DataSettings, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, cache=None):
        self.task, self.examples, self.state = task, examples.reset_index(drop=True), state
        self.items = task.items(self.examples).reset_index(drop=True)
        self._example_records = self.examples.to_dict("records")
        self._item_records = self.items.to_dict("records")
        self.regions, self.tokenizer, self.cfg = regions, tokenizer, cfg
        self.cache = cache
        super().__init__(len(self.items), batch_size, seed, rank, world_size, shuffle)

    def sequences(self, idx) -> list:
        """The K sequences of each item at positions `idx`, item after item."""
        seqs = []
        for i in idx:
            item = self._item_records[i]
            got = self.task.sequences(self._example_records[item["example"]], item, self.state)
            if len(got) != self.task.num_candidates:
                raise ValueError(f"{self.task.name}: {len(got)} sequences for an item, expected "
                                 f"{self.task.num_candidates}")
            seqs += got
        return seqs

    def batch(self, k, idx) -> dict:
        """The batch of the items at positions `idx` (any order); `k` (the batch index) is unused."""
        idx = np.asarray(idx, dtype=np.int64)
        inputs = encode_sequences(self.sequences(idx), self.tokenizer, self.regions, self.cfg)
        batch = {k: torch.from_numpy(v) for k, v in inputs.items()}
        items = self.items.iloc[idx]
        examples = self.examples.iloc[items["example"].to_numpy()]
        for k, v in self.task.targets(examples, items, self.state).items():
            batch[k] = torch.from_numpy(np.asarray(v))
        batch["item_index"] = torch.from_numpy(idx)
        if self.cache is not None:
            K = self.task.num_candidates
            rows = (idx[:, None] * K + np.arange(K)).ravel()  # the batch's sequences, item after item
            batch["backbone_states"] = torch.from_numpy(
                self.cache.lookup(rows, inputs["attention_mask"], inputs["visual_mask"]))
        return batch
