"""The tokenizer's evaluation while training: reconstructions of a fixed held-out set by the EMA model, scored under
the conventions of `vfmvae eval recon` (tianciB/VFM-VAE@b3a752a tools/reconstruct/reconstruct.py + evaluate.py:
Resize + CenterCrop, a posterior sample, trunc-to-uint8, torch-fidelity rFID/rIS, torchmetrics SSIM on [-1, 1],
LPIPS-VGG), plus a fixed reconstruction grid (RUN/eval/grids/).

Every number comes from the functions `vfmvae eval recon --tokenizer` runs (`reconstruct_images`, `pixel_metrics`,
`reconstruction_summary`, `inception_features`), on the images in memory: a logged value equals the offline one for
the same weights, images and seed. Rank r of W reconstructs images r, r + W, ...; per-image values and Inception
features are gathered in index order, so every rank computes the same metrics. Each image's posterior noise comes
from its own generator, seeded by its index, so the draw depends neither on the batches nor on the ranks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint.atomic import write_npz_atomic
from vfmvae.data import ImageFolderDataset, ImageOptions, TarShardDataset, detect_format
from vfmvae.distributed import gather_rows
from vfmvae.evaluation.features import inception_features
from vfmvae.evaluation.image_metrics import load_lpips
from vfmvae.evaluation.inception import load_inception
from vfmvae.evaluation.reconstruction import (
    PER_IMAGE_METRICS,
    fidelity_order,
    pixel_metrics,
    reconstruction_summary,
)
from vfmvae.evaluation.stats import gaussian_stats
from vfmvae.evaluation.weights import random_init_seed
from vfmvae.tokenizer.reconstruct import output_names, reconstruct_images
from vfmvae.training import eval_networks as networks
from vfmvae.training.eval_config import TOKENIZER_METRICS, EvalConfig
from vfmvae.vis import save_grid

__all__ = ["HeldOut", "ReconstructionTask", "load_held_out"]


class ReconstructionTask:
    """Held-out reconstruction metrics of a tokenizer (the conventions of `vfmvae eval recon`)."""

    kind = "tokenizer"
    metrics = TOKENIZER_METRICS

    def __init__(self, cfg: EvalConfig, eval_dir: Path, device: torch.device) -> None:
        if cfg.data is None:
            raise ValueError("eval.data: a held-out image folder or tar shards is required for tokenizer evaluation")
        if not Path(cfg.data).exists() and "{" not in str(cfg.data):
            raise FileNotFoundError(f"eval.data: held-out images not found: {cfg.data}")
        networks.check_weights(cfg.inception, "inception")
        networks.check_weights(cfg.lpips, "lpips")
        self.cfg, self.eval_dir, self.device = cfg, eval_dir, device
        self.skipped = [
            what
            for what, spec in (
                ("rfid and ris (no eval.inception)", cfg.inception),
                ("lpips (no eval.lpips)", cfg.lpips),
            )
            if spec is None
        ]
        self._held: HeldOut | None = None  # this rank's share of the held-out set, loaded once
        self._reference: dict[str, np.ndarray] | None = None
        self._nets: dict[str, Any] | None = None

    def warning(self) -> str | None:
        return (
            f"online evaluation: {' and '.join(self.skipped)} skipped: give the weight files in the recipe's "
            "eval section"
            if self.skipped
            else None
        )

    # ---- the evaluation -----------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, step: int) -> tuple[dict[str, Any], int]:
        """The metrics of `model` (every rank takes part) and the number of images they cover."""
        held = self._held_out(model.config.image_size)
        images, total = held.images, held.total
        mine = list(range(dist_utils.rank(), total, dist_utils.world_size()))
        nets = self._nets_loaded()
        inception, lpips = nets.get("inception"), nets.get("lpips")
        size = self.cfg.batch_size
        per_image, pool, logits, grid = [], [], [], []
        for start in range(0, len(mine), size):
            indices, real = mine[start : start + size], images[start : start + size]
            fake = reconstruct_images(model, real, indices, sample=self.cfg.latent == "sample", seed=self.cfg.seed)
            grid.append(fake[[j for j, i in enumerate(indices) if i < self.cfg.grid]])
            per_image.append(pixel_metrics(real, fake, lpips, self.device))
            if inception is not None:
                feats = inception_features(
                    inception, fake, batch_size=size, device=self.device, keys=("pool", "logits")
                )
                pool.append(feats["pool"])
                logits.append(feats["logits"])
        per_image_all = gather_rows(networks.cat_rows(per_image, len(PER_IMAGE_METRICS)).double(), total)
        features: dict[str, Any] = {}
        if inception is not None:
            ref = self._reference_stats(inception, images, total)
            features = {
                "pool": gather_rows(networks.cat_rows(pool, networks.FEATURE_WIDTHS["pool"]), total).numpy(),
                "logits": gather_rows(networks.cat_rows(logits, networks.FEATURE_WIDTHS["logits"]), total).numpy(),
                "reference": (ref["mu"], ref["sigma"]),
                "order": self._fidelity_order(held),
            }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small sets: singular covariances (noted in the protocol)
            summary = reconstruction_summary(per_image_all, lpips=lpips is not None, **features)
        result: dict[str, Any] = {name: summary[name] for name in ("psnr", "ssim", "lpips", "rfid", "ris")}
        if self.cfg.grid:
            self._grid(images, torch.cat(grid) if grid else images[:0], min(self.cfg.grid, total), step)
        return result, total

    @staticmethod
    def _fidelity_order(held: HeldOut) -> list[int] | None:
        """rIS reads the reconstructions in the order `eval recon` does: torch-fidelity's listing of the folder that
        `reconstruct` writes (its sorted output names); a tar-shard set keeps its index order."""
        if held.names is None:
            return None
        outputs = output_names(held.names)
        return fidelity_order([outputs[name] for name in held.names])

    # ---- what is loaded once ------------------------------------------------------------------------------------
    def _nets_loaded(self) -> dict[str, Any]:
        if self._nets is None:
            nets, provenance = {}, {}
            if self.cfg.inception is not None:
                nets["inception"], info = load_inception(self.cfg.inception, self.device)  # also random-init:SEED
                provenance.update(info)
            if self.cfg.lpips is not None:
                nets["lpips"], info = load_lpips(self.cfg.lpips, self.device)
                provenance.update(info)
            self._nets = {**nets, "provenance": provenance}
        return self._nets

    def _held_out(self, resolution: int) -> HeldOut:
        """This rank's share of the held-out set (uint8, loaded once and kept) and the set's size."""
        if self._held is None:
            self._held = load_held_out(self.cfg.data, self.cfg.num_images, resolution, self.cfg.crop)
            if self._held.total < 10:
                raise ValueError(
                    f"eval.data {self.cfg.data}: {self._held.total} images; online evaluation needs at least 10"
                )
        return self._held

    def _reference_stats(self, inception: nn.Module, images: torch.Tensor, total: int) -> dict[str, np.ndarray]:
        """Inception statistics of the held-out originals, computed once and cached in RUN/eval/ under a key of
        the pixels, the crop and the Inception weights."""
        if self._reference is not None:
            return self._reference
        digests = gather_rows(networks.pixel_digests(images), total)
        key = networks.cache_key(
            "held-out",
            digests.tolist(),
            self._nets_loaded()["provenance"].get("inception_sha256"),
            self.cfg.crop,
            list(images.shape[1:]),
        )
        path = self.eval_dir / f"reference-{key}.npz"
        if path.is_file():
            with np.load(path) as data:
                self._reference = {k: data[k] for k in ("mu", "sigma")}
            return self._reference
        feats = inception_features(
            inception, images, batch_size=self.cfg.batch_size, device=self.device, keys=("pool",)
        )
        mu, sigma = gaussian_stats(gather_rows(feats["pool"], total).numpy())
        self._reference = {"mu": mu, "sigma": sigma}
        if dist_utils.is_main_process():
            write_npz_atomic(path, mu=mu, sigma=sigma)
        return self._reference

    def _grid(self, images: torch.Tensor, recon: torch.Tensor, n: int, step: int) -> None:
        """The first `n` held-out images beside their reconstructions (those of the metrics, gathered from the ranks
        that made them)."""
        mine = len(range(dist_utils.rank(), n, dist_utils.world_size()))  # indices below n are this rank's first
        real, fake = gather_rows(images[:mine], n), gather_rows(recon[:mine], n)
        if dist_utils.is_main_process():
            pairs = torch.stack([t for pair in zip(real, fake) for t in pair]).float() / 255.0
            save_grid(pairs, self.eval_dir / "grids" / f"step-{step:08d}.png", nrow=min(8, len(pairs)))

    def protocol(self) -> dict[str, Any]:
        nets = self._nets["provenance"] if self._nets else {}
        num_images = self._held.total if self._held else self.cfg.num_images
        return {
            "task": "held-out reconstruction (EMA)",
            "data": str(self.cfg.data),
            "num_images": num_images,
            "crop": self.cfg.crop,
            "latent": f"posterior {self.cfg.latent}"
            + (
                f" (per-image seeds derive_seed({self.cfg.seed}, 'eval-recon', i))"
                if self.cfg.latent == "sample"
                else ""
            ),
            "convention": "vfmvae eval recon: tianciB/VFM-VAE@b3a752a tools/reconstruct (trunc to uint8, "
            "torch-fidelity rFID/rIS, SSIM data range 2 on [-1, 1], LPIPS-VGG)",
            "rfid_comparable": self.cfg.inception is not None
            and random_init_seed(self.cfg.inception) is None
            and num_images >= 2048,
            "skipped": self.skipped,
            **nets,
        }


@dataclass(frozen=True)
class HeldOut:
    """This rank's share of a held-out set."""

    images: torch.Tensor  # uint8 (n, 3, H, W): indices rank, rank + world, ...
    total: int  # the set's size
    names: list[str] | None  # relative file names of the whole set in index order (None for tar shards)


def load_held_out(
    source: str, num: int, resolution: int, crop: str, *, rank: int | None = None, world: int | None = None
) -> HeldOut:
    """The first `num` images of a folder (sorted) or of tar shards (in shard order), cropped to `resolution`:
    this rank's share, the set's size and its file names."""
    rank = dist_utils.rank() if rank is None else rank
    world = dist_utils.world_size() if world is None else world
    images: list[torch.Tensor] = []

    def bad(item: dict[str, Any]) -> ValueError:
        return ValueError(
            f"eval.data: held-out image {item['name']} cannot be read ({item['reason']}); the "
            "evaluation set must be readable as a whole"
        )

    options = ImageOptions(resolution, crop=crop)
    if detect_format(source) == "folder":
        dataset = ImageFolderDataset(source, options)
        total = min(num, len(dataset))
        names = [str(f.relative_to(dataset.root)) for f in dataset.files[:total]]
        for i in range(rank, total, world):
            item = dataset[i]
            if item.get("bad"):
                raise bad(item)
            images.append(item["image"])
    else:
        total, names = 0, None
        for item in TarShardDataset(source, options, loop=False, shuffle_shards=False):
            if total >= num:
                break
            if item.get("bad"):
                raise bad(item)
            if total % world == rank:
                images.append(item["image"])
            total += 1
    empty = torch.zeros((0, 3, resolution, resolution), dtype=torch.uint8)  # more ranks than images
    return HeldOut(torch.stack(images) if images else empty, total, names)
