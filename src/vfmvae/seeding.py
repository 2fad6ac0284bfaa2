"""One seed helper: `derive_seed(seed, *parts)`, the seed of one random stream of a run.

Every random draw that must be reproducible on its own (sample i of a sampling run, the posterior noise of
image i, the shuffle of epoch e, the data loader of rank r, the draws of training step s) gets a
`torch.Generator` seeded with `derive_seed(run_seed, ...)` for its own coordinates. A draw then depends only on
the run seed and those coordinates, never on the batch it fell in, the number of processes or the draws made
before it, and two streams named differently never share a seed.
"""

from __future__ import annotations

import operator
import zlib

__all__ = ["derive_seed"]

_MULTIPLIER = 1_000_003  # a prime: with one int part the seed is `seed * 1_000_003 + part`, as samples were seeded
_RANGE = 2**63  # torch.Generator.manual_seed takes any integer below 2**64; 2**63 keeps it a non-negative int64


def derive_seed(seed: int, *parts: int | str) -> int:
    """The seed of the stream `parts` of a run seeded with `seed`, in [0, 2**63).

    Each part is folded in as `s = s * 1_000_003 + p`; a string part (a stream name such as "labels" or
    "loader") counts as the CRC-32 of its UTF-8 bytes. Name a stream with a string whenever its integer
    coordinates could coincide with another stream's: `derive_seed(seed, "loader", rank)` never equals
    `derive_seed(seed, epoch)`. With a single integer part the result is `seed * 1_000_003 + part` (for
    non-negative values below the range), the per-sample seed of `vfmvae sample`, so sample i of a run keeps its
    seed.
    """
    state = int(seed)
    for part in parts:
        if isinstance(part, str):
            value = zlib.crc32(part.encode("utf-8"))
        elif isinstance(part, bool):
            raise TypeError(f"derive_seed parts are ints or strings, got the bool {part!r}")
        else:
            try:
                value = operator.index(part)  # int, numpy or torch integer
            except TypeError:
                raise TypeError(f"derive_seed parts are ints or strings, got {type(part).__name__} {part!r}") from None
        state = state * _MULTIPLIER + value
    return state % _RANGE
