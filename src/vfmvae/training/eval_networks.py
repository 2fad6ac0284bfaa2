"""What both evaluation tasks of a training run share around the metric networks.

The networks themselves, their weights (the recipe's files, or "random-init:SEED" for the demo and tests) and their
features come from the metric library (`vfmvae.evaluation`: `load_inception`, `load_lpips`, `inception_features`),
the functions the offline commands use. Here: the check that a named weights file exists before training starts,
the per-rank feature blocks gathered in image-index order (`vfmvae.distributed.gather_rows`), and the key that names
a cached reference by the data and the network weights (`cache_key`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from vfmvae.evaluation.weights import random_init_seed

__all__ = ["FEATURE_WIDTHS", "cache_key", "cat_rows", "check_weights", "pixel_digests"]

FEATURE_WIDTHS = {"pool": 2048, "spatial": 2023, "logits": 1008}  # the FID Inception's outputs


def check_weights(spec: str | None, key: str) -> None:
    """A named weights file that is not there stops the run at once (a typo must not silently switch metrics off)."""
    if spec is None or random_init_seed(spec) is not None or spec.startswith(("http://", "https://")):
        return
    if not Path(spec).is_file():
        raise FileNotFoundError(f"eval.{key}: weights file not found: {spec}")


def cat_rows(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """The rows of `parts`, or an empty (0, width) block on a rank without images."""
    return torch.cat(parts) if parts else torch.zeros(0, width)


def pixel_digests(images: torch.Tensor) -> torch.Tensor:
    """A 63-bit digest of every uint8 image's pixels (to key the reference cache by the data itself)."""
    return torch.tensor(
        [
            int.from_bytes(hashlib.sha256(x.contiguous().numpy().tobytes()).digest()[:8], "little") >> 1
            for x in images.cpu()
        ],
        dtype=torch.int64,
    )


def cache_key(*parts: Any) -> str:
    """16 hex digits naming a cached reference by everything it depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
