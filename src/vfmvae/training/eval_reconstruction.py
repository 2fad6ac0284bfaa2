"""The tokenizer's evaluation while training: reconstructions of a fixed held-out set by the EMA model, scored under
the conventions of `vfmvae eval recon` (tianciB/VFM-VAE@b3a752a tools/reconstruct/reconstruct.py + evaluate.py:
Resize + CenterCrop, a posterior sample, trunc-to-uint8, torch-fidelity rFID/rIS, torchmetrics SSIM on [-1, 1],
LPIPS-VGG), plus a fixed reconstruction grid (RUN/eval/grids/).

Rank r of W reconstructs images r, r + W, ...; per-image values and Inception features are gathered in index
order, so every rank computes the same metrics. Each image's posterior noise comes from its own generator, seeded by
its index, so the draw depends neither on the batches nor on the ranks.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint.atomic import write_npz_atomic
from vfmvae.data import ImageFolderDataset, ImageOptions, TarShardDataset, detect_format
from vfmvae.distributed import gather_rows
from vfmvae.evaluation.image_metrics import psnr, ssim_signed
from vfmvae.evaluation.stats import frechet_distance, gaussian_stats, inception_score_torch_fidelity
from vfmvae.seeding import derive_seed
from vfmvae.tokenizer.reconstruct import to_uint8_from_signed
from vfmvae.training import eval_networks as networks
from vfmvae.training.eval_config import TOKENIZER_METRICS, EvalConfig
from vfmvae.vis import save_grid

__all__ = ["ReconstructionTask", "load_held_out"]


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
        self._share: tuple[torch.Tensor, int] | None = None  # (this rank's uint8 images, total)
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
        images, total = self._held_out(model.config.image_size)
        mine = list(range(dist_utils.rank(), total, dist_utils.world_size()))
        nets = self._nets_loaded()
        inception, lpips = nets.get("inception"), nets.get("lpips")
        size = self.cfg.batch_size
        per_image, pool, logits, grid = [], [], [], []
        for start in range(0, len(mine), size):
            indices, real = mine[start : start + size], images[start : start + size]
            fake = self._reconstruct(model, real, indices)
            grid.append(fake[[j for j, i in enumerate(indices) if i < self.cfg.grid]])
            per_image.append(self._per_image_metrics(real, fake, lpips))
            if inception is not None:
                feats = networks.inception_features(inception, fake, size, self.device, ("pool", "logits"))
                pool.append(feats["pool"])
                logits.append(feats["logits"])
        result = _mean_metrics(gather_rows(networks.cat_rows(per_image, 3).double(), total), lpips is not None)
        if inception is not None:
            pool_all = gather_rows(networks.cat_rows(pool, networks.FEATURE_WIDTHS["pool"]), total).numpy()
            logits_all = gather_rows(networks.cat_rows(logits, networks.FEATURE_WIDTHS["logits"]), total).numpy()
            ref = self._reference_stats(inception, images, total)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # small sets: singular covariances (noted in the protocol)
                result["rfid"] = frechet_distance(*gaussian_stats(pool_all), ref["mu"], ref["sigma"])
            result["ris"] = inception_score_torch_fidelity(logits_all)[0]
        if self.cfg.grid:
            self._grid(images, torch.cat(grid) if grid else images[:0], min(self.cfg.grid, total), step)
        return result, total

    def _reconstruct(self, model: nn.Module, images: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """uint8 images -> uint8 reconstructions (decoded from a posterior sample, or the mean; truncated as the
        official decode tool)."""
        x01 = images.to(self.device).float() / 255.0
        return to_uint8_from_signed(model.decode(self._latents(model, x01, indices)).sample).cpu()

    def _latents(self, model: nn.Module, x01: torch.Tensor, indices: list[int]) -> torch.Tensor:
        posterior = model.encode(x01)
        if self.cfg.latent == "mode" or not hasattr(posterior, "std"):
            return posterior.mode()
        # one generator per image, seeded by its index: the draw does not depend on batches or ranks
        eps = torch.stack(
            [
                torch.randn(
                    posterior.mean.shape[1:],
                    generator=torch.Generator().manual_seed(derive_seed(self.cfg.seed, "eval-recon", i)),
                )
                for i in indices
            ]
        )
        return posterior.mean + posterior.std * eps.to(posterior.mean.device, posterior.mean.dtype)

    def _per_image_metrics(self, real: torch.Tensor, fake: torch.Tensor, lpips: nn.Module | None) -> torch.Tensor:
        """(n, 3) float64: PSNR, SSIM and LPIPS (NaN without the LPIPS network) of each image pair."""
        values = [psnr(real, fake), ssim_signed(real, fake)]
        values.append(
            lpips(real.to(self.device), fake.to(self.device)).double().cpu()
            if lpips is not None
            else torch.full((len(real),), math.nan, dtype=torch.float64)
        )
        return torch.stack(values, 1)

    # ---- what is loaded once ------------------------------------------------------------------------------------
    def _nets_loaded(self) -> dict[str, Any]:
        if self._nets is None:
            nets, provenance = {}, {}
            if self.cfg.inception is not None:
                nets["inception"], info = networks.load_inception_network(self.cfg.inception, self.device)
                provenance.update(info)
            if self.cfg.lpips is not None:
                nets["lpips"], info = networks.load_lpips_network(self.cfg.lpips, self.device)
                provenance.update(info)
            self._nets = {**nets, "provenance": provenance}
        return self._nets

    def _held_out(self, resolution: int) -> tuple[torch.Tensor, int]:
        """This rank's share of the held-out set (uint8, loaded once and kept) and the set's size."""
        if self._share is None:
            self._share = load_held_out(self.cfg.data, self.cfg.num_images, resolution, self.cfg.crop)
            if self._share[1] < 10:
                raise ValueError(
                    f"eval.data {self.cfg.data}: {self._share[1]} images; online evaluation needs at least 10"
                )
        return self._share

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
        feats = networks.inception_features(inception, images, self.cfg.batch_size, self.device, ("pool",))
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
        num_images = self._share[1] if self._share else self.cfg.num_images
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
            and networks.random_init_seed(self.cfg.inception) is None
            and num_images >= 2048,
            "skipped": self.skipped,
            **nets,
        }


def _mean_metrics(per_image: torch.Tensor, with_lpips: bool) -> dict[str, Any]:
    """Means over the set of the (N, 3) per-image PSNR, SSIM and LPIPS (a perfect reconstruction's infinite PSNR is
    left out of the mean; only perfect ones: inf)."""
    p = per_image[:, 0]
    return {
        "psnr": float(p[torch.isfinite(p)].mean()) if torch.isfinite(p).any() else float("inf"),
        "ssim": float(per_image[:, 1].mean()),
        "lpips": float(per_image[:, 2].mean()) if with_lpips else None,
        "rfid": None,
        "ris": None,
    }


def load_held_out(
    source: str, num: int, resolution: int, crop: str, *, rank: int | None = None, world: int | None = None
) -> tuple[torch.Tensor, int]:
    """The first `num` images of a folder (sorted) or of tar shards (in shard order), cropped to `resolution`:
    this rank's share (indices rank, rank + world, ...) as uint8 (n, 3, H, W), and the set's size."""
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
        for i in range(rank, total, world):
            item = dataset[i]
            if item.get("bad"):
                raise bad(item)
            images.append(item["image"])
    else:
        total = 0
        for item in TarShardDataset(source, options, loop=False, shuffle_shards=False):
            if total >= num:
                break
            if item.get("bad"):
                raise bad(item)
            if total % world == rank:
                images.append(item["image"])
            total += 1
    empty = torch.zeros((0, 3, resolution, resolution), dtype=torch.uint8)  # more ranks than images
    return (torch.stack(images) if images else empty), total
