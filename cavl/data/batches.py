"""The one sampler of pretraining and finetuning: which items batch k of an epoch holds on a rank.

    class MyBatches(EpochBatches):
        def batch(self, k, idx): ...                  # the batch of items idx (its k-th)
    batches = MyBatches(num_items, batch_size=32, seed=0, rank=env.rank, world_size=env.world_size)
    loader = make_loader(batches, epoch=3, start=17, num_workers=2)     # batches 17, 18, … of epoch 3

Training (`shuffle=True`): global batch k takes items perm[k·B·W : (k+1)·B·W] of the epoch's
permutation, `np.random.default_rng([seed, epoch])`; rank r gets the r-th slice of B. The last
incomplete global batch is dropped, so every rank has the same number of equal-sized batches (the
contrastive gather needs it). Evaluation (`shuffle=False`): every item once, in order, the last
batch possibly short (one process).

A batch is thus a pure function of (seed, epoch, rank, batch index): the data position of a run
is just (epoch, batch index), DataLoader workers can build batches in any process, and a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch


class EpochBatches(torch.utils.data.Dataset):
    """Map-style dataset whose item k is the k-th batch of this rank in the current epoch;
    subclasses build a batch from its item positions (`batch`)."""

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        self.num_items = int(num_items)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle = shuffle
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        self.epoch = epoch
        n = self.num_items
        self.order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def __len__(self):
        if self.shuffle:
            return self.num_items // (self.batch_size * self.world_size)
        return -(-self.num_items // self.batch_size)

    def indices(self, k) -> np.ndarray:
        """Item positions of this rank's batch k."""
        start = (k * self.world_size + self.rank) * self.batch_size if self.shuffle else k * self.batch_size
        return self.order[start : start + self.batch_size]

    def batch(self, k: int, idx: np.ndarray) -> dict:
        raise NotImplementedError

    def __getitem__(self, k):
        if not 0 <= k < len(self):
            raise IndexError(k)
        return self.batch(k, self.indices(k))


def make_loader(batches: EpochBatches, epoch: int, start: int = 0, num_workers: int = 0, pin_memory: bool = False):
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
