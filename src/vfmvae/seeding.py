"""One seed helper: every seed of the package is derived from the run's seed and named parts."""

from __future__ import annotations

import zlib

__all__ = ["derive_seed"]


def derive_seed(seed: int, *parts: int | str) -> int:
    """A seed for one random stream: fold each part in as s = s * 1_000_003 + p (strings by CRC-32), mod 2**63.

    With one int part this is `seed * 1_000_003 + part`, the per-sample seed used since the first release.
    String parts name a stream ("labels", "loader", ...), so streams of one run never share a seed.
    """
    s = int(seed)
    for part in parts:
        p = zlib.crc32(part.encode()) if isinstance(part, str) else int(part)
        s = s * 1_000_003 + p
    return s % 2**63
