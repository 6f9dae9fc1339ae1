"""``sampler=balanced``: training examples drawn so that every class comes up equally often.

Each epoch draws, with replacement, as many examples as the split has (rounded up to a multiple
of the number of processes), example i with probability proportional to ``1 / count[label_i]``:
every class present in the split gets the same share of the draws, whatever its size (a rare
class's examples repeat, a common class's are subsampled). The draw is seeded by ``seed +
epoch``, the same on every rank, and rank r takes draws r, r + W, r + 2W, ...: the ranks' shares
are disjoint parts of one draw, equally long, and the same again when the epoch is rerun (a
resumed run). The sampler is a DistributedSampler, so Lightning keeps it under DDP (it replaces
only samplers that are not) and calls its ``set_epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch.utils.data import DistributedSampler


class BalancedSampler(DistributedSampler):
    """Indices of a class-balanced draw with replacement (see the module); labels below 0 (no
    label) are never drawn."""

    def __init__(self, labels: Sequence[int], num_replicas: int = 1, rank: int = 0, seed: int = 0):
        labels = np.asarray(labels, dtype=np.int64)
        super().__init__(labels, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        counts = np.bincount(labels[labels >= 0], minlength=1)
        if not counts.any():
            raise ValueError(
                "sampler='balanced': no training example has a label to balance; use "
                "sampler='random'"
            )
        weights = np.where(labels >= 0, 1.0 / counts[labels.clip(min=0)].clip(min=1), 0.0)
        self.probabilities = weights / weights.sum()
        self.num_samples = math.ceil(len(labels) / num_replicas)  # per rank
        self.total_size = self.num_samples * num_replicas

    def __iter__(self):
        generator = np.random.default_rng(self.seed + self.epoch)
        draws = generator.choice(len(self.probabilities), self.total_size, p=self.probabilities)
        return iter(draws[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
