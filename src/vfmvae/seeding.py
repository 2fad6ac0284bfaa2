"""Seeds of named random streams: `derive_seed(seed, *parts)`, a pure function of its arguments."""

from __future__ import annotations

import zlib

__all__ = ["derive_seed"]


def derive_seed(seed: int, *parts: int | str) -> int:
    """Fold `parts` into `seed` (s = s * 1_000_003 + part; a string part counts as the CRC-32 of its UTF-8 bytes),
    result in [0, 2**63). With one int part this is `seed * 1_000_003 + part`, the per-sample seed of sampling."""
    s = int(seed)
    for part in parts:
        s = s * 1_000_003 + (zlib.crc32(part.encode("utf-8")) if isinstance(part, str) else int(part))
    return s % 2**63
