"""Run the Inception over images (a tensor, or an image set with a progress bar and images/s) and collect the
pool/spatial/logits features. Every image's features depend on that image only (eval-mode network, no padding)."""

from __future__ import annotations

import time

import numpy as np
import torch

from vfmvae.evaluation.images import ImageSet
from vfmvae.evaluation.inception import InceptionV3

__all__ = ["FEATURE_KEYS", "extract_features", "inception_features"]

FEATURE_KEYS = ("pool", "spatial", "logits")


def inception_features(
    net: InceptionV3,
    images: torch.Tensor,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    keys: tuple[str, ...] = FEATURE_KEYS,
) -> dict[str, torch.Tensor]:
    """Features of uint8 (N, 3, H, W) images, `batch_size` at a time: float32 (N, width) tensors on the CPU."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for start in range(0, len(images), batch_size):
        feats = net(images[start : start + batch_size].to(device))
        for k in keys:
            out[k].append(feats[k].float().cpu())
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def extract_features(
    net: InceptionV3,
    images: ImageSet,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    limit: int | None = None,
    desc: str = "inception features",
    progress: bool = True,
) -> dict[str, np.ndarray]:
    from tqdm.auto import tqdm

    n = len(images) if limit is None else min(limit, len(images))
    out: dict[str, list[np.ndarray]] = {k: [] for k in FEATURE_KEYS}
    start = time.perf_counter()
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for batch in images.batches(batch_size, n):
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
            for key, value in inception_features(net, x, batch_size=len(x), device=device).items():
                out[key].append(value.numpy())
            bar.update(len(batch))
    result = {k: np.concatenate(v) for k, v in out.items()}
    result["seconds"] = np.array(time.perf_counter() - start)
    return result
