"""Index order for training: an endless, seeded, resumable stream split across ranks.

Global position g = 0, 1, 2, ... maps to epoch g // N and item perm_epoch[g % N], where perm_epoch is
a permutation seeded by `derive_seed(seed, "shuffle", epoch)`. Rank r of W takes positions r, r + W, r + 2W, ... .
Hence one optimizer step of W ranks x B items consumes exactly the global positions [s*W*B, (s+1)*W*B), the same
items one process with batch W*B would take, and resuming needs only the global count consumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from vfmvae.seeding import derive_seed

__all__ = ["ResumableSampler", "rank_shard"]


def rank_shard(num_items: int, rank: int, world: int) -> range:
    """The items of a one-pass job (caching, evaluation) that rank `rank` handles: rank, rank+W, ..."""
    return range(rank, num_items, world)


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields `(epoch, index)` forever (or for `num_samples` items of this rank when given)."""

    def __init__(
        self,
        num_items: int,
        *,
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
        num_samples: int | None = None,
    ) -> None:
        if num_items <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of size {world}")
        self.num_items = num_items
        self.rank, self.world = rank, world
        self.seed, self.shuffle = seed, shuffle
        self.start = start  # global position to resume from
        self.num_samples = num_samples
        self._perm_epoch = -1
        self._perm: torch.Tensor | None = None

    def _item(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.num_items)
        if not self.shuffle:
            return epoch, offset
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", epoch))
            self._perm = torch.randperm(self.num_items, generator=g)
            self._perm_epoch = epoch
        assert self._perm is not None
        return epoch, int(self._perm[offset])

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start + self.rank
        n = 0
        while self.num_samples is None or n < self.num_samples:
            yield self._item(position)
            position += self.world
            n += 1

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("an endless ResumableSampler has no length")
        return self.num_samples
