"""Run the Inception over an image set (progress bar, images/s) and collect pool/spatial/logits features."""

from __future__ import annotations

import time

import numpy as np
import torch

from vfmvae.evaluation.images import ImageSet
from vfmvae.evaluation.inception import InceptionV3

__all__ = ["extract_features"]


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
    out: dict[str, list[np.ndarray]] = {"pool": [], "spatial": [], "logits": []}
    start = time.perf_counter()
    with tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:
        for batch in images.batches(batch_size, n):
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(device)
            feats = net(x)
            for key in out:
                out[key].append(feats[key].cpu().numpy())
            bar.update(len(batch))
    result = {k: np.concatenate(v) for k, v in out.items()}
    result["seconds"] = np.array(time.perf_counter() - start)
    return result
