"""Deterministic, resumable batching: epoch e's order is a function of (seed, e) alone, so a
run resumed at step s reads exactly the batches an uninterrupted run reads."""
from __future__ import annotations

from typing import Iterator, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def _fetch(dataset: Dataset, idx: torch.Tensor):
    if isinstance(dataset, TensorDataset):
        return tuple(t[idx] for t in dataset.tensors)
    items = [dataset[int(i)] for i in idx]
    return tuple(torch.stack([torch.as_tensor(it[j]) for it in items]) for j in range(len(items[0])))


class EpochBatches:
    """Shuffled training batches (drop-last), sharded across ``world`` ranks like
    DistributedSampler: every rank shuffles identically and takes every world-th example."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world = rank, world
        self.per_rank = len(dataset) // world
        self.steps_per_epoch = self.per_rank // batch_size
        if self.steps_per_epoch == 0:
            from ..errors import ConfigError
            raise ConfigError(f"data.batch_size {batch_size} is larger than the training set "
                              f"({self.per_rank} examples per process); lower it")

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.dataset), generator=g)
        return perm[self.rank: self.per_rank * self.world: self.world]

    def from_step(self, step: int) -> Iterator[Tuple[torch.Tensor, ...]]:
        """Endless batches starting at global step ``step``."""
        epoch, offset = divmod(step, self.steps_per_epoch)
        while True:
            perm = self.order(epoch)
            for b in range(offset, self.steps_per_epoch):
                yield _fetch(self.dataset, perm[b * self.batch_size:(b + 1) * self.batch_size])
            epoch, offset = epoch + 1, 0


def eval_batches(dataset: Dataset, batch_size: int, workers: int = 0):
    """Sequential evaluation batches."""
    if isinstance(dataset, TensorDataset):
        n = len(dataset)
        return [tuple(t[i:i + batch_size] for t in dataset.tensors) for i in range(0, n, batch_size)]
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
