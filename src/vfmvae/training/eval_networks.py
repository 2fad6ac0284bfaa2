"""The metric networks of evaluation while training and what both evaluation tasks do with them.

The Inception and LPIPS networks come from the recipe's weight files (`vfmvae.evaluation`), or for the demo and
tests from "random-init:SEED" (seeded random weights: the pipeline runs, the values compare with nothing). Features
are computed per rank and gathered in image-index order (`vfmvae.distributed.gather_rows`); reference statistics
are cached under a key of the data and the network weights (`cache_key`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vfmvae.evaluation.image_metrics import LPIPSMetric, load_lpips
from vfmvae.evaluation.inception import InceptionV3, load_inception
from vfmvae.seeding import derive_seed
from vfmvae.training.eval_config import RANDOM_INIT

__all__ = [
    "FEATURE_WIDTHS",
    "cache_key",
    "cat_rows",
    "check_weights",
    "inception_features",
    "load_inception_network",
    "load_lpips_network",
    "pixel_digests",
    "random_init_seed",
]

FEATURE_WIDTHS = {"pool": 2048, "spatial": 2023, "logits": 1008}  # the FID Inception's outputs


def random_init_seed(spec: str) -> int | None:
    """SEED of "random-init:SEED", None for a weights file."""
    if not spec.startswith(RANDOM_INIT):
        return None
    try:
        return int(spec[len(RANDOM_INIT) :])
    except ValueError:
        raise ValueError(f"{spec!r}: write {RANDOM_INIT}SEED with an integer seed") from None


def check_weights(spec: str | None, key: str) -> None:
    """A named weights file that is not there stops the run at once (a typo must not silently switch metrics off)."""
    if spec is None or random_init_seed(spec) is not None or spec.startswith(("http://", "https://")):
        return
    if not Path(spec).is_file():
        raise FileNotFoundError(f"eval.{key}: weights file not found: {spec}")


def load_inception_network(spec: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The FID Inception of `spec` and its provenance (weights file and sha256) for the evaluation records."""
    seed = random_init_seed(spec)
    if seed is None:
        return load_inception(spec, device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "inception"))
        net = InceptionV3(None)
        # He-normal weights keep the activations' scale through the ~20 layers (PyTorch's default init shrinks
        # them to ~1e-8 there, so every image would get the same features)
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.to(device), {
        "inception_weights": f"RANDOM-INIT (seed {seed}): not the FID Inception, values compare with nothing",
        "inception_sha256": f"random-init-{seed}",
    }


def load_lpips_network(spec: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """LPIPS-VGG of `spec` and its provenance."""
    seed = random_init_seed(spec)
    with warnings.catch_warnings():  # torchvision's notes on lpips' `pretrained=` argument, once per run: noise here
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        if seed is None:
            return load_lpips(spec, device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "lpips"))
            net = LPIPSMetric(None).to(device)
    return net, {
        "lpips_weights": f"RANDOM-INIT VGG16 trunk (seed {seed}): values compare with nothing",
        "lpips_sha256": f"random-init-{seed}",
    }


def inception_features(
    net: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device, keys: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Inception features of uint8 (N, 3, H, W) images, float32 on the CPU."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for start in range(0, len(images), batch_size):
        feats = net(images[start : start + batch_size].to(device))
        for k in keys:
            out[k].append(feats[k].float().cpu())
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


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
