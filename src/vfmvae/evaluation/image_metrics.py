"""Per-image reconstruction metrics on uint8 pixels: PSNR, SSIM and LPIPS (VGG).

* PSNR: 20 log10(255 / RMSE) per image over all pixels and channels; report the mean over images (not the
  PSNR of the pooled MSE).
* SSIM (`ssim_signed`, the reported one): Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03 on RGB mapped
  to [-1, 1], data range 2; reflect padding by 5, the SSIM map averaged over all pixels and channels, per image.
  This is torchmetrics 1.9's `StructuralSimilarityIndexMeasure(data_range=2.0)` as the official
  tools/reconstruct/evaluate.py uses it. `ssim` is the same window on [0, 255] with data range 255 (kept as
  the second, `ssim_uint8`, value).
* LPIPS: `lpips.LPIPS(net="vgg")` (linear heads shipped in the lpips wheel) with the VGG16 trunk loaded from
  a local torchvision file; inputs in [-1, 1].
"""

from __future__ import annotations

import warnings
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from vfmvae.checkpoint.digest import file_sha256
from vfmvae.checkpoint.training import load_state_strict
from vfmvae.evaluation.weights import VGG16_FILE, VGG16_URL, load_weights, random_init_seed, resolve_weights
from vfmvae.seeding import derive_seed

__all__ = ["psnr", "ssim", "ssim_signed", "LPIPSMetric", "load_lpips"]


def _check_pixel_scale(a: torch.Tensor, b: torch.Tensor, data_range: float, name: str) -> None:
    """Float images in [0, 1] scored on the uint8 scale give ~74 dB / SSIM 1.0 whatever they hold: refuse them."""
    if data_range != 255.0 or not (a.is_floating_point() or b.is_floating_point()):
        return  # uint8, or a caller that states its own range (the training loss: data_range=2)
    high = max(float(a.max()), float(b.max()))
    low = min(float(a.min()), float(b.min()))
    if high <= 1.0 or low < 0 or high > 255.0:
        raise ValueError(
            f"{name} expects images on the uint8 scale [0, 255] (uint8 tensors, or floats with data_range "
            f"255); got {a.dtype} values in [{low:.3g}, {high:.3g}]. Convert [0, 1] images with "
            "(x * 255).round().to(torch.uint8)" + (", or pass data_range=1.0" if name == "ssim" else "")
        )


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (B,) of uint8 (B, 3, H, W) images; identical images give inf."""
    _check_pixel_scale(a, b, 255.0, "psnr")
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return 20 * torch.log10(255.0 / mse.sqrt())


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image SSIM (B,) of (B, C, H, W) images in [0, data_range] (uint8 or float)."""
    _check_pixel_scale(a, b, data_range, "ssim")
    return _ssim_per_image(a.double(), b.double(), data_range)


def ssim_signed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (B,) of uint8 (B, 3, H, W) images mapped to [-1, 1] by (x / 255 - 0.5) / 0.5, data range 2:
    torchmetrics `StructuralSimilarityIndexMeasure(data_range=2.0)` as tianciB/VFM-VAE@b3a752a
    tools/reconstruct/evaluate.py computes it (the paper's SSIM). SSIM is not shift-invariant, so this differs
    from `ssim` on [0, 255], most near mid-grey: it maps to 0, where the luminance term
    (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1) reacts strongly to small differences of the local means."""
    _check_pixel_scale(a, b, 255.0, "ssim_signed")
    to_signed = lambda t: (t.double() / 255.0 - 0.5) / 0.5  # noqa: E731
    return _ssim_per_image(to_signed(a), to_signed(b), 2.0)


def _ssim_per_image(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    """Gaussian 11 x 11 (sigma 1.5) SSIM map on reflect-padded float64 images, averaged per image."""
    c = x.shape[1]
    g = _gaussian()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, 11, 11).contiguous()

    x, y = F.pad(x, (5, 5, 5, 5), mode="reflect"), F.pad(y, (5, 5, 5, 5), mode="reflect")

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = (blur(x * x) - mu_x**2).clamp_min(0)
    syy = (blur(y * y) - mu_y**2).clamp_min(0)
    sxy = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.flatten(1).mean(1)


# torchvision vgg16.features index -> lpips' slice holding it
_SLICES = [(1, range(0, 4)), (2, range(4, 9)), (3, range(9, 16)), (4, range(16, 23)), (5, range(23, 30))]


class LPIPSMetric(torch.nn.Module):
    def __init__(self, vgg_features: dict[str, torch.Tensor] | None = None, source: str = "state dict") -> None:
        super().__init__()
        import lpips

        # pnet_rand: lpips builds a random VGG16 instead of downloading torchvision's; the trunk is loaded below.
        # (torchvision's notes on lpips' `pretrained=` argument are noise here.)
        with mock.patch("builtins.print"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
            self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        if vgg_features is not None:
            mapped = {}
            for key, value in vgg_features.items():
                if not key.startswith("features."):
                    continue  # the classifier part of torchvision's file is not used
                index, leaf = key[len("features.") :].split(".", 1)
                slot = next(k for k, r in _SLICES if int(index) in r)
                mapped[f"slice{slot}.{index}.{leaf}"] = value
            load_state_strict(self.net.net, mapped, source, advice=f"expected torchvision's {VGG16_FILE}")
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LPIPSMetric:
        return super().train(False)

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS (B,) of uint8 (B, 3, H, W) images."""
        to_signed = lambda t: t.float() / 127.5 - 1.0  # noqa: E731
        return self.net(to_signed(a), to_signed(b)).flatten()


def load_lpips(weights: str | Path, device: str | torch.device = "cpu") -> tuple[LPIPSMetric, dict]:
    """LPIPS-VGG with the VGG16 trunk from a local torchvision file (or URL when online), or `random-init:SEED` (a
    seeded random trunk). Returns the network and its provenance."""
    seed = random_init_seed(weights)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "lpips"))
            net = LPIPSMetric(None)
        return net.to(device), {
            "lpips_weights": f"RANDOM-INIT VGG16 trunk (seed {seed}): values compare with nothing",
            "lpips_sha256": f"random-init-{seed}",
        }
    path = resolve_weights(weights, what="VGG16 (LPIPS trunk)", expected_file=VGG16_FILE, url=VGG16_URL)
    return LPIPSMetric(load_weights(path), source=str(path)).to(device), {
        "lpips_weights": str(path),
        "lpips_sha256": file_sha256(path),
    }
