"""Pretraining data: captions (COCO captions, VG region descriptions) with their images' regions,
as MLM + ITM batches.

    sources = open_sources("resources/features", ["coco", "vg"])        # cavl.data.regions
    examples = load_examples("resources/tasks/pretrain/train.parquet", cfg, seed, sources)
    batches = PretrainBatches(examples, sources, tokenizer, cfg, batch_size=32, seed=0)
    loader = make_loader(batches, epoch=0, start=0, num_workers=2)     # cavl.data.batches

Every batch is a pure function of (seed, epoch, rank, batch index): its examples come from the
shared sampler (cavl.data.batches.EpochBatches), its ITM negatives and MLM masks from
`np.random.default_rng([seed, epoch, rank, index])`, so a resumed run sees the same batches.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cavl.data.batches import EpochBatches
from cavl.data.regions import pad_regions
from cavl.settings import schema_defaults

log = logging.getLogger(__name__)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers + forked workers


@dataclass
@schema_defaults("pretrain", sources="data.sources", max_captions_per_image="data.max_captions_per_image",
                 max_text_len="data.max_text_len", max_regions="data.max_regions", mlm_probability="mlm.probability",
                 itm_negative_fraction="itm.negative_fraction")
class PretrainDataConfig:
    """What the pretraining batches are made of, from the `pretrain` keys named above, whose schema
    defaults are its defaults."""

    sources: list | None  # caption sources of the pretrain table (None = every source it holds)
    max_captions_per_image: dict  # cap per image and source, 0 = all (seeded choice)
    max_text_len: int  # wordpiece tokens per caption, [CLS] and [SEP] included
    max_regions: int  # region tokens per image (the detector's first, highest-scoring boxes)
    mlm_probability: float  # fraction of text tokens chosen for MLM (then 80/10/10 mask/random/keep)
    itm_negative_fraction: float  # fraction of pairs whose caption is swapped for another image's


def load_examples(path, cfg: PretrainDataConfig, seed: int, sources: dict | None = None) -> pd.DataFrame:
    """The pretrain task table filtered to the configured sources, captions per image capped
    (a seeded choice), and — given the region sources ({dataset: RegionSource}) — to images that
    have features."""
    df = pd.read_parquet(path, columns=["example_id", "dataset", "image_id", "caption"])
    if cfg.sources is not None:
        df = df[df["dataset"].isin(list(cfg.sources))]
    df = df.reset_index(drop=True)
    df["image_id"] = df["image_id"].astype(str)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(df))
    rank = df.iloc[order].groupby(["dataset", "image_id"], sort=False).cumcount()  # random rank within image
    rank = rank.reindex(df.index)
    cap = df["dataset"].map(lambda d: int(cfg.max_captions_per_image.get(d, 0) or 0))
    df = df[(cap == 0) | (rank < cap)]
    if sources is not None:
        keep = np.zeros(len(df), dtype=bool)
        for d in df["dataset"].unique():
            ids = set(sources[d].image_ids)
            sel = (df["dataset"] == d).to_numpy()
            keep[sel] = df.loc[sel, "image_id"].isin(ids).to_numpy()
        dropped = int((~keep).sum())
        if dropped:
            log.warning("%d of %d examples have no region features (failed extraction?); skipped",
                        dropped, len(df))
        df = df[keep]
    return df.reset_index(drop=True)


def mask_tokens(ids, special, rng, vocab_size, mask_id, probability=0.15):
    """BERT masking of ids (B, L) outside `special` (B, L) bool: each token is chosen with
    `probability`, then 80% [MASK], 10% random, 10% kept. → (masked ids, labels, -100 unchosen)."""
    chosen = (rng.random(ids.shape) < probability) & ~special  # (B, L)
    labels = np.where(chosen, ids, -100)
    r = rng.random(ids.shape)
    to_mask = chosen & (r < 0.8)
    to_random = chosen & (r >= 0.8) & (r < 0.9)
    out = ids.copy()
    out[to_mask] = mask_id
    out[to_random] = rng.integers(0, vocab_size, size=int(to_random.sum()))
    return out, labels


class PretrainBatches(EpochBatches):
    """Map-style dataset whose item k is the k-th batch this rank sees in the current epoch (the
    shared sampler, cavl.data.batches: seeded shuffle, a slice per rank, the incomplete last
    global batch dropped); `sources`: {dataset: RegionSource}."""

    def __init__(self, examples: pd.DataFrame, sources: dict, tokenizer, cfg: PretrainDataConfig,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.captions = examples["caption"].astype(str).to_numpy()
        self.datasets = examples["dataset"].to_numpy()
        self.image_ids = examples["image_id"].astype(str).to_numpy()
        self.image_codes = pd.factorize(examples["dataset"] + "\x00" + examples["image_id"])[0]
        self.sources, self.tokenizer, self.cfg = sources, tokenizer, cfg
        self.feature_dim = next(iter(sources.values())).feature_dim
        self.vocab_size = len(tokenizer)
        super().__init__(len(self.captions), batch_size, seed, rank, world_size, shuffle)

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

    def padded_regions(self, idx):
        """Padded regions of the examples at positions `idx`: features (B, R, D), boxes (B, R, 5),
        mask (B, R) (cavl.data.regions.pad_regions)."""
        R = self.cfg.max_regions
        regions = [self.sources[d].get(i, R) for d, i in zip(self.datasets[idx], self.image_ids[idx])]
        return pad_regions(regions, R, self.feature_dim)

    def batch(self, k, idx):
        B = len(idx)
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, k])

        feats, boxes, vmask = self.padded_regions(idx)

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
