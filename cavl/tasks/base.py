"""What every task shares: the Task interface, region features, sequences → model inputs, batches.

A task turns each *item* (an example, or — VCR — one sub-question of it) into K input
sequences `[CLS] a [SEP] (b [SEP])` + the regions of one image (`TextImage`); the backbone
encodes all B·K sequences of a batch; the task's head sees their pooled states as (B, K, H)
and returns logits; the task's loss, decoding and metric take it from there.

    task = get_task("vqa")
    examples = task.read("resources/tasks/vqa/train.parquet")
    state = task.prepare(examples, options)                      # e.g. the answer vocabulary
    regions = RegionSource("resources/features/coco/index.parquet")
    batches = TaskBatches(task, examples, state, regions, tokenizer, DataSettings(), batch_size=32, seed=0)
    loader = make_loader(batches, epoch=0, start=0)              # cavl.pretrain_data's, reused

Batches are a pure function of (seed, epoch, rank, batch index), as in pretraining, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch import nn

from cavl.adapters import TaskHead
from cavl.features import FeatureReader
from cavl.io import file_sha256
from cavl.pretrain_data import normalise_boxes, pad_regions

log = logging.getLogger(__name__)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ---------------------------------------------------------------------------------------------
# Sequences and regions
# ---------------------------------------------------------------------------------------------


@dataclass
class TextImage:
    """One input sequence: text a (and b) as words, the image whose regions follow the text."""

    words_a: list  # words of the first text segment
    image_id: str  # image of the task's feature dataset
    words_b: list | None = None  # words of the second segment (token type 1), or None
    links_a: list | None = None  # per word of a: region indices it refers to ([] for none), or None
    links_b: list | None = None  # the same for b


@dataclass
class ImageRegions:
    features: np.ndarray  # (N, D) float32
    boxes: np.ndarray  # (N, 5) float32: x1/W, y1/H, x2/W, y2/H, area fraction
    num_given: int  # the first num_given regions are the manifest's ground-truth boxes, in order


class RegionSource:
    """Region features of one dataset by image id: `cavl.features.FeatureReader` for the
    features and boxes, plus each shard's image sizes and given-box counts (read once per shard)."""

    def __init__(self, index_path):
        self.index_path = os.fspath(index_path)
        self.reader = FeatureReader(self.index_path)
        self.feature_dim = self.reader.feature_dim
        table = pq.read_table(self.index_path, columns=["image_id", "shard"])
        self._shard_of = dict(zip(table.column("image_id").to_pylist(), table.column("shard").to_pylist()))
        self._info = {}  # shard → {image_id: (width, height, num_given)}

    def __contains__(self, image_id):
        return str(image_id) in self._shard_of

    def checksum(self) -> str:
        """SHA-256 of the index file (its metadata records the detector, weights and box settings)."""
        return file_sha256(self.index_path)

    def _shard_info(self, shard):
        info = self._info.get(shard)
        if info is None:
            path = os.path.join(self.reader.directory, self.reader.metadata["shards"][str(shard)])
            names = pq.read_schema(path).names
            cols = ["image_id", "width", "height"] + (["num_given"] if "num_given" in names else [])
            t = pq.read_table(path, columns=cols).to_pydict()
            given = t.get("num_given", [0] * len(t["image_id"]))
            info = self._info[shard] = {i: (w, h, g) for i, w, h, g in
                                        zip(t["image_id"], t["width"], t["height"], given)}
        return info

    def get(self, image_id, max_regions: int) -> ImageRegions:
        image_id = str(image_id)
        feats, boxes, n = self.reader.get(image_id)
        w, h, given = self._shard_info(self._shard_of[image_id])[image_id]
        n = min(n, max_regions)
        return ImageRegions(np.asarray(feats[:n], dtype=np.float32), normalise_boxes(boxes[:n], w, h),
                            min(int(given), n))

    def __getstate__(self):  # DataLoader workers re-open the shards themselves
        state = dict(self.__dict__)
        state["reader"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.reader = FeatureReader(self.index_path)


# ---------------------------------------------------------------------------------------------
# Sequences → model inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class DataSettings:
    max_text_len: int = 40  # wordpiece tokens per sequence, [CLS]/[SEP] included (longest segment cut first)
    max_regions: int = 36  # region tokens per image (given boxes first, then the detector's best)


def encode_sequences(seqs: list, tokenizer, regions: RegionSource, cfg: DataSettings) -> dict:
    """Sequences → padded numpy inputs of the backbone, plus a content key per sequence.

    input_ids, attention_mask, token_type_ids (N, L); visual_feats (N, R, D), visual_boxes
    (N, R, 5), visual_mask (N, R); region_links (N, R, L) float32 (1 where text token l refers
    to region r, a given box; only when some sequence has links); `keys`: per sequence a digest of everything
    the backbone sees of it (for the backbone cache).
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
    keys = []
    for i, reg in enumerate(regs):
        n_t, n_r = int(mask[i].sum()), len(reg.features)
        h = hashlib.blake2b(digest_size=16)
        for part in (ids[i, :n_t], types[i, :n_t], feats[i, :n_r], boxes[i, :n_r]):
            h.update(np.ascontiguousarray(part).tobytes())
        if links is not None:
            h.update(np.ascontiguousarray(links[i, :n_r, :n_t]).tobytes())
        keys.append(h.hexdigest())
    out["keys"] = keys
    return out


# ---------------------------------------------------------------------------------------------
# The task interface
# ---------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """What a head sees of a batch of B items with K sequences each."""

    pooled: torch.Tensor  # (B, K, H) pooled [CLS] states
    states: torch.Tensor  # (B, K, T, H) token states (text first, then regions)
    text_len: int  # L: the first L of the T positions are text tokens
    batch: dict  # the batch (targets, links, ...)


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


class Task:
    """One downstream task. Subclasses set the class attributes and override the methods."""

    name: str = ""  # registry name (the Snakemake `task` wildcard)
    num_candidates: int = 1  # K: sequences per item (VCR: 4 choices; NLVR2: 2 images)
    main_metric: str = "accuracy"  # the metric benchmarks, in-training evaluation and best-epoch selection use
    image_columns: tuple = ("image_id",)  # example columns holding image ids (rows without features are dropped)
    label_columns: tuple = ()  # example columns that must be known to train / score
    # the task's own settings (`finetune.tasks.<task>` keys besides finetune.TASK_KEYS) and their
    # defaults, which must equal the schema's (tests/test_finetune.py checks)
    options: dict = {}
    zero_shot: bool = False  # evaluate-only: the pretrained model as it is, never finetuned (zs_tir)

    # -- data -----------------------------------------------------------------------------------

    def region_source(self, index_path, data: "DataSettings") -> "RegionSource":
        """The regions this task's sequences see (default: all of each image's regions; rpg and tir
        leave out the given ground-truth boxes)."""
        return RegionSource(index_path)

    def read(self, path) -> pd.DataFrame:
        """The task table of one split (docs/contracts.md); an empty one is an error naming it."""
        table = pd.read_parquet(path)
        if table.empty:
            raise ValueError(f"{path}: the split has no examples (too few images for it in the data?)")
        return table

    def prepare(self, train: pd.DataFrame, options: dict) -> dict:
        """Task state learnt from the train split (e.g. the answer vocabulary); JSON-serialisable,
        saved with the model."""
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

    # -- model ----------------------------------------------------------------------------------

    def make_head(self, hidden: int, state: dict, eps: float, dropout: float) -> TaskHead:
        """The head: a TaskHead whose forward(Encoded) returns the logits."""
        raise NotImplementedError

    def init_from_pretrained(self, model, backbone_dir):
        """Start task parts of a new finetuning model from the pretraining folder (default: nothing;
        tir: its head is pretraining's ITM head when the folder has one)."""

    def model_logits(self, model, batch: dict):
        """What `loss` and `decode` receive for a batch: the head on the encoded batch. A task
        needing more passes than its sequences overrides it (tir: in-batch hard negatives)."""
        return model.head(model.encode(batch))

    def loss(self, logits: torch.Tensor, batch: dict) -> dict:
        """{"loss": total, "<task>_loss": ...}."""
        raise NotImplementedError

    # -- evaluation -----------------------------------------------------------------------------

    def decode(self, logits: torch.Tensor, batch: dict) -> dict:
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
        """The predictions table of a whole split at once (tir: every image against every
        caption), or None for the per-item path (cavl.finetune.predict, then `predictions`)."""
        return None

    def report(self, predictions: pd.DataFrame, examples: pd.DataFrame, state: dict,
               train: pd.DataFrame | None = None) -> dict:
        """Extra top-level fields of metrics.json (rpg: the phrases excluded for having no box;
        vqa: the question-type prior from `train` and a paired test against it)."""
        return {}

    # -- shared helpers ---------------------------------------------------------------------------

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

    def labelled(self, examples: pd.DataFrame, what: str) -> pd.DataFrame:
        """`examples` whose labels are known (an unlabelled split cannot be trained on or scored)."""
        keep = self.labelled_mask(examples)
        if not keep.any():
            raise ValueError(f"{what}: no labelled examples")
        if not keep.all():
            log.warning("%s: %d unlabelled examples skipped", what, int((~keep).sum()))
        return examples[keep].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


class TaskBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item k is the k-th micro-batch of this rank in the current epoch.

    Training (shuffle=True): global batch k takes items perm[k·B·W : (k+1)·B·W] of the epoch's
    seeded permutation, rank r the r-th slice of B; the last incomplete global batch is dropped.
    Evaluation (shuffle=False): items in order, the last batch may be short.
    With a backbone cache attached (`cache`), each batch also carries `backbone_states`.
    """

    def __init__(self, task: Task, examples: pd.DataFrame, state: dict, regions: RegionSource, tokenizer,
                 cfg: DataSettings, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, cache=None):
        self.task, self.examples, self.state = task, examples.reset_index(drop=True), state
        self.items = task.items(self.examples).reset_index(drop=True)
        self._example_records = self.examples.to_dict("records")
        self._item_records = self.items.to_dict("records")
        self.regions, self.tokenizer, self.cfg = regions, tokenizer, cfg
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle, self.cache = shuffle, cache
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        self.epoch = epoch
        n = len(self.items)
        self.order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def __len__(self):
        if self.shuffle:
            return len(self.items) // (self.batch_size * self.world_size)
        return -(-len(self.items) // self.batch_size)

    def indices(self, k):
        if self.shuffle:
            start = (k * self.world_size + self.rank) * self.batch_size
        else:
            start = k * self.batch_size
        return self.order[start : start + self.batch_size]

    def sequences(self, idx) -> list:
        seqs = []
        for i in idx:
            item = self._item_records[i]
            got = self.task.sequences(self._example_records[item["example"]], item, self.state)
            if len(got) != self.task.num_candidates:
                raise ValueError(f"{self.task.name}: {len(got)} sequences for an item, expected "
                                 f"{self.task.num_candidates}")
            seqs += got
        return seqs

    def build(self, idx) -> dict:
        """The batch of the items at positions `idx` (any order)."""
        idx = np.asarray(idx, dtype=np.int64)
        inputs = encode_sequences(self.sequences(idx), self.tokenizer, self.regions, self.cfg)
        keys = inputs.pop("keys")
        batch = {k: torch.from_numpy(v) for k, v in inputs.items()}
        items = self.items.iloc[idx]
        examples = self.examples.iloc[items["example"].to_numpy()]
        for k, v in self.task.targets(examples, items, self.state).items():
            batch[k] = torch.from_numpy(np.asarray(v))
        batch["item_index"] = torch.from_numpy(idx)
        if self.cache is not None:
            batch["backbone_states"] = torch.from_numpy(
                self.cache.lookup(keys, batch["attention_mask"].numpy(), batch["visual_mask"].numpy()))
        batch["keys"] = keys
        return batch

    def __getitem__(self, k):
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self.build(self.indices(k))
