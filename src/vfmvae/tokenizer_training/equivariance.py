"""Equivariance regularisation: latent scale/rotation or a downscaled VFM input
(tianciB/VFM-VAE@b3a752a networks/utils/ldm_utils.py `EquivarianceTransform`).

Per generator forward, with probability `p_latent` the *latent* is resized by s in {0.25, 0.5, 0.75, 1} and
rotated by k x 90 degrees before decoding; otherwise, with probability `p_prior_scale`, the *input image* is
downscaled by s in {0.25, 0.5, 0.75} before the VFM. The target is transformed to match. (The official code
names these branches the other way round: its `p_prior` selects the latent-space branch.) Draws come from a
`torch.Generator`, so a
resumed run repeats them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["EquivarianceDraw", "draw_equivariance", "transform_latent", "transform_target"]


@dataclass(frozen=True)
class EquivarianceDraw:
    scale: float = 1.0
    rotation: int = 0  # multiples of 90 degrees
    on_latent: bool = False  # True: transform z; False: downscale the VFM input by `scale`

    @property
    def input_scale(self) -> float:
        return 1.0 if self.on_latent else self.scale


def draw_equivariance(
    generator: torch.Generator, p_latent: float = 0.5, p_prior_scale: float = 0.25
) -> EquivarianceDraw:
    def uniform() -> float:
        return float(torch.rand((), generator=generator))

    def choice(options):
        return options[int(torch.randint(len(options), (), generator=generator))]

    if uniform() < p_latent:
        return EquivarianceDraw(choice((0.25, 0.5, 0.75, 1.0)), choice((0, 1, 2, 3)), on_latent=True)
    scale = choice((0.25, 0.5, 0.75)) if uniform() < p_prior_scale else 1.0
    return EquivarianceDraw(scale, 0, on_latent=False)


def transform_latent(z: torch.Tensor, draw: EquivarianceDraw) -> torch.Tensor:
    if not draw.on_latent:
        return z
    if draw.scale != 1.0:
        z = F.interpolate(z, scale_factor=draw.scale, mode="bilinear", align_corners=False)
    return torch.rot90(z, k=draw.rotation, dims=(-1, -2)) if draw.rotation else z


def transform_target(images: torch.Tensor, draw: EquivarianceDraw, mode: str = "bilinear") -> torch.Tensor:
    """[0, 1] target -> the same transform as the generator saw, in [0, 1] (resize in the VFM's mode)."""
    if draw.scale != 1.0:
        images = F.interpolate(
            images, scale_factor=draw.scale, mode=mode, align_corners=False, antialias=draw.scale < 1
        )
    return torch.rot90(images, k=draw.rotation, dims=(-1, -2)) if draw.rotation else images
