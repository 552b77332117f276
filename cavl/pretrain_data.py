"""Pretraining data: captions (COCO captions, VG region descriptions) joined with region features.

    examples = load_examples("resources/tasks/pretrain/train.parquet", cfg, seed)
    store = open_region_store("resources/features", ["coco", "vg"])     # or InMemoryRegionStore
    batches = PretrainBatches(examples, store, tokenizer, cfg, batch_size=32, seed=0)
    loader = make_loader(batches, epoch=0, start=0, num_workers=2)

Every batch is a pure function of (seed, epoch, rank, batch index): the epoch's shuffle, the ITM
negatives and the MLM masks all come from `np.random.default_rng([seed, epoch, rank, index])`.
That makes the data position of a run just (epoch, batch index), lets DataLoader workers build
batches in any process, and makes a resumed run see exactly the batches an uninterrupted one
would.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

log = logging.getLogger(__name__)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers + forked workers


@dataclass
class PretrainDataConfig:
    """What the pretraining batches are made of."""

    sources: list = field(default_factory=lambda: ["coco", "vg"])  # caption sources of the pretrain table
    max_captions_per_image: dict = field(default_factory=lambda: {"coco": 0, "vg": 0})  # cap per image and source, 0 = all (seeded choice)
    max_text_len: int = 40  # wordpiece tokens per caption, [CLS] and [SEP] included
    max_regions: int = 36  # region tokens per image (the detector's first, highest-scoring boxes)
    mlm_probability: float = 0.15  # fraction of text tokens chosen for MLM (then 80/10/10 mask/random/keep)
    itm_negative_fraction: float = 0.5  # fraction of pairs whose caption is swapped for another image's


# ---------------------------------------------------------------------------------------------
# Region features
# ---------------------------------------------------------------------------------------------


@dataclass
class Regions:
    features: np.ndarray  # (N, D) float32
    boxes: np.ndarray  # (N, 5) float32: x1/W, y1/H, x2/W, y2/H, area fraction


def normalise_boxes(boxes, width, height) -> np.ndarray:
    """Pixel boxes (N, 4) x1 y1 x2 y2 → (N, 5): coordinates / image size and the area fraction."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scale = np.array([width, height, width, height], dtype=np.float32)
    b = np.clip(b / scale, 0.0, 1.0)  # (N, 4)
    area = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)  # (N,)
    return np.concatenate([b, area[:, None]], axis=1).astype(np.float32)  # (N, 5)


class RegionStore(Protocol):
    """What the batches need from a feature store."""

    feature_dim: int

    def image_ids(self, dataset: str) -> set: ...

    def get(self, dataset: str, image_id: str) -> Regions: ...


class InMemoryRegionStore:
    """Regions held in a dict: {(dataset, image_id): (features (N, D), boxes (N, 4) pixels, W, H)}."""

    def __init__(self, items: dict):
        self.items = items
        self.feature_dim = int(next(iter(items.values()))[0].shape[1])

    def image_ids(self, dataset):
        return {i for d, i in self.items if d == dataset}

    def get(self, dataset, image_id):
        feats, boxes, w, h = self.items[(dataset, image_id)]
        return Regions(np.asarray(feats, dtype=np.float32), normalise_boxes(boxes, w, h))


class FeatureShardStore:
    """The extract stage's features through `cavl.features.FeatureReader` (one per dataset, over
    `{root}/{dataset}/index.parquet`), plus each image's width and height from the shards'
    `width`/`height` columns, to normalise the boxes.

    The readers memory-map shards lazily; forked DataLoader workers share those pages.
    """

    def __init__(self, root, datasets):
        from cavl.features import FeatureReader

        self.readers, self.sizes = {}, {}
        for d in datasets:
            reader = FeatureReader(Path(root) / d / "index.parquet")
            sizes = {}
            for name in reader.metadata["shards"].values():
                t = pq.read_table(Path(root) / d / name, columns=["image_id", "width", "height"])
                sizes.update(zip(t.column("image_id").to_pylist(),
                                 zip(t.column("width").to_pylist(), t.column("height").to_pylist())))
            self.readers[d], self.sizes[d] = reader, sizes
        dims = {r.feature_dim for r in self.readers.values()}
        if len(dims) != 1:
            raise ValueError(f"datasets {list(datasets)} have different feature widths {sorted(dims)}")
        self.feature_dim = dims.pop()

    def image_ids(self, dataset):
        return set(self.readers[dataset].image_ids)

    def get(self, dataset, image_id):
        feats, boxes, _ = self.readers[dataset].get(image_id)
        w, h = self.sizes[dataset][image_id]
        return Regions(np.asarray(feats, dtype=np.float32), normalise_boxes(boxes, w, h))


def open_region_store(root, datasets) -> RegionStore:
    """The feature store for `datasets` under `root` (the extract stage's shards and indexes)."""
    return FeatureShardStore(root, datasets)


# ---------------------------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------------------------


def load_examples(path, cfg: PretrainDataConfig, seed: int, store: RegionStore | None = None) -> pd.DataFrame:
    """The pretrain task table filtered to the configured sources, captions per image capped
    (a seeded choice), and — given a store — to images that have features."""
    df = pd.read_parquet(path, columns=["example_id", "dataset", "image_id", "caption"])
    df = df[df["dataset"].isin(list(cfg.sources))].reset_index(drop=True)
    df["image_id"] = df["image_id"].astype(str)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    rank = df.iloc[order].groupby(["dataset", "image_id"], sort=False).cumcount()  # random rank within image
    rank = rank.reindex(df.index)
    cap = df["dataset"].map(lambda d: int(cfg.max_captions_per_image.get(d, 0) or 0))
    df = df[(cap == 0) | (rank < cap)]
    if store is not None:
        keep = np.zeros(len(df), dtype=bool)
        for d in df["dataset"].unique():
            ids = store.image_ids(d)
            sel = (df["dataset"] == d).to_numpy()
            keep[sel] = df.loc[sel, "image_id"].isin(ids).to_numpy()
        dropped = int((~keep).sum())
        if dropped:
            log.warning("%d of %d examples have no region features (failed extraction?); skipped",
                        dropped, len(df))
        df = df[keep]
    return df.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


def pad_regions(regions: list, max_regions: int, feature_dim: int):
    """Regions of B images → features (B, R, D), boxes (B, R, 5), mask (B, R); R is the longest
    image's count capped at max_regions (at least 1; a region-less image has an all-zero mask)."""
    counts = [min(len(r.features), max_regions) for r in regions]
    B, R = len(regions), max(1, max(counts, default=0))
    feats = np.zeros((B, R, feature_dim), np.float32)
    boxes = np.zeros((B, R, 5), np.float32)
    mask = np.zeros((B, R), np.int64)
    for b, (reg, n) in enumerate(zip(regions, counts)):
        feats[b, :n], boxes[b, :n], mask[b, :n] = reg.features[:n], reg.boxes[:n], 1
    return feats, boxes, mask


def feature_statistics(store: RegionStore, examples: pd.DataFrame, max_regions: int, max_images: int = 20000):
    """Per-dimension mean and std (each (D,), float64) of the region features the model sees: the
    first `max_regions` regions of each distinct image of `examples` (an evenly spaced subset of
    at most `max_images` images). Deterministic, so every DDP rank and a resumed run agree."""
    images = examples[["dataset", "image_id"]].drop_duplicates().sort_values(["dataset", "image_id"])
    if len(images) > max_images:
        images = images.iloc[np.linspace(0, len(images) - 1, max_images).round().astype(int)]
    D = store.feature_dim
    total, total_sq, n = np.zeros(D), np.zeros(D), 0
    for dataset, image_id in images.itertuples(index=False):
        f = store.get(dataset, image_id).features[:max_regions].astype(np.float64)  # (N, D)
        total += f.sum(0)
        total_sq += (f * f).sum(0)
        n += len(f)
    if n == 0:
        raise ValueError("no region features to standardise with: every image has 0 regions")
    mean = total / n
    return mean, np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))


def mask_tokens(ids, special, rng, vocab_size, mask_id, probability=0.15):
    """BERT masking. ids (B, L), special (B, L) bool (never chosen: [CLS], [SEP], [PAD]).

    Chooses each non-special token with `probability`; of those 80% become [MASK], 10% a
    random token, 10% stay. Returns (masked ids, labels with -100 where not chosen).
    """
    chosen = (rng.random(ids.shape) < probability) & ~special  # (B, L)
    labels = np.where(chosen, ids, -100)
    r = rng.random(ids.shape)
    to_mask = chosen & (r < 0.8)
    to_random = chosen & (r >= 0.8) & (r < 0.9)
    out = ids.copy()
    out[to_mask] = mask_id
    out[to_random] = rng.integers(0, vocab_size, size=int(to_random.sum()))
    return out, labels


class PretrainBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item k is the k-th batch this rank sees in the current epoch.

    Global batch k of an epoch takes examples perm[k·B·W : (k+1)·B·W] of the epoch's seeded
    permutation; rank r gets the r-th slice of B. The last incomplete global batch is dropped
    so every rank has the same number of equal-sized batches (the contrastive gather needs it).
    """

    def __init__(self, examples: pd.DataFrame, store: RegionStore, tokenizer, cfg: PretrainDataConfig,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.captions = examples["caption"].astype(str).to_numpy()
        self.datasets = examples["dataset"].to_numpy()
        self.image_ids = examples["image_id"].astype(str).to_numpy()
        self.image_codes = pd.factorize(examples["dataset"] + "\x00" + examples["image_id"])[0]
        self.store, self.tokenizer, self.cfg = store, tokenizer, cfg
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle = shuffle
        self.vocab_size = len(tokenizer)
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        self.epoch = epoch
        n = len(self.captions)
        self.order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def __len__(self):
        return len(self.captions) // (self.batch_size * self.world_size)

    def indices(self, k):
        start = (k * self.world_size + self.rank) * self.batch_size
        return self.order[start : start + self.batch_size]

    def _negative(self, i, rng):
        """Index of a caption of another image (rejection sampling over the whole table)."""
        n = len(self.captions)
        for _ in range(32):
            j = int(rng.integers(n))
            if self.image_codes[j] != self.image_codes[i]:
                return j
        others = np.flatnonzero(self.image_codes != self.image_codes[i])
        if not len(others):
            raise ValueError("ITM needs captions of at least two images")
        return int(others[rng.integers(len(others))])

    def tokenize(self, texts):
        """Captions → ids, attention mask (B, L) int64 and special-token mask (B, L) bool."""
        enc = self.tokenizer(list(texts), max_length=self.cfg.max_text_len, truncation=True, padding="longest",
                             return_special_tokens_mask=True, return_tensors="np")
        ids = enc["input_ids"].astype(np.int64)
        mask = enc["attention_mask"].astype(np.int64)
        special = enc["special_tokens_mask"].astype(bool) | (mask == 0)
        return ids, mask, special

    def __getitem__(self, k):
        if not 0 <= k < len(self):
            raise IndexError(k)
        idx = self.indices(k)
        B = len(idx)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, k])

        regions = [self.store.get(d, i) for d, i in zip(self.datasets[idx], self.image_ids[idx])]
        feats, boxes, vmask = pad_regions(regions, self.cfg.max_regions, self.store.feature_dim)

        # clean captions (contrastive loss) and the MLM/ITM inputs: half the captions swapped
        text_ids, text_mask, _ = self.tokenize(self.captions[idx])
        n_neg = int(round(B * self.cfg.itm_negative_fraction))
        neg_rows = rng.choice(B, size=n_neg, replace=False) if n_neg else np.zeros(0, np.int64)
        itm_labels = np.ones(B, np.int64)
        itm_labels[neg_rows] = 0
        source = idx.copy()  # example whose caption each MLM/ITM row shows
        for b in neg_rows:
            source[b] = self._negative(int(idx[b]), rng)
        ids, mlm_mask, special = self.tokenize(self.captions[source])
        mlm_ids, mlm_labels = mask_tokens(ids, special, rng, self.vocab_size, self.tokenizer.mask_token_id,
                                          self.cfg.mlm_probability)
        mlm_labels[neg_rows] = -100  # a swapped caption is no evidence for its words

        t = torch.from_numpy
        return {
            "text_ids": t(text_ids), "text_mask": t(text_mask),
            "mlm_ids": t(mlm_ids), "mlm_mask": t(mlm_mask), "mlm_labels": t(mlm_labels),
            "itm_labels": t(itm_labels),
            "visual_feats": t(feats), "visual_boxes": t(boxes), "visual_mask": t(vmask),
            "example_index": t(idx.astype(np.int64)), "itm_caption_index": t(source.astype(np.int64)),
        }


def make_loader(batches: PretrainBatches, epoch: int, start: int = 0, num_workers: int = 0,
                pin_memory: bool = False):
    """Batches `start`, `start+1`, … of `epoch`, built in `num_workers` processes, in order.

    The loader gets its own torch.Generator, so creating it never draws from the global torch
    RNG (dropout's): a resumed run's RNG stream is the uninterrupted run's.
    """
    batches.set_epoch(epoch)
    return torch.utils.data.DataLoader(
        batches, batch_size=None, sampler=range(start, len(batches)), num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(0),
        persistent_workers=False, prefetch_factor=2 if num_workers else None,
    )
