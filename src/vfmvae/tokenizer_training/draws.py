"""Every random draw of one discriminator or generator pass over a micro-batch, in one place.

A pass (tianciB/VFM-VAE@b3a752a training/loss.py `accumulate_gradients`, phase D or G) draws an equivariance
transform, the posterior noise of z = mean + std * eps, and, per call of the projected discriminator, DiffAugment's
per-sample numbers and the batch's random crop. `PassDraws` holds them; a field left None is drawn from the
trainer's per-(seed, rank, step) generator when the pass needs it, in the order equivariance, posterior noise,
augmentation of the generated images, augmentation of the real ones. A test gives every field, e.g. the draws
recorded in an official step, and replays that step exactly.

The augmentation draws are uniforms in [0, 1) (`AugmentDraw`), mapped onto the sizes of the image they augment
when it is augmented: a generated image is smaller than the input after a latent downscale, so its shift and
cutout ranges are only known then. Everything here runs on the host (the generator is a CPU generator); the
mapped numbers go to the device without a read-back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vfmvae.tokenizer_training.equivariance import EquivarianceDraw

__all__ = ["AugmentDraw", "PassDraws", "Augmentation"]


@dataclass(frozen=True)
class Augmentation:
    """An `AugmentDraw` mapped onto one image size: what DiffAugment and the crop apply (host tensors)."""

    brightness: torch.Tensor  # (B,) added, in [-0.5, 0.5)
    saturation: torch.Tensor  # (B,) factor in [0, 2)
    contrast: torch.Tensor  # (B,) factor in [0.5, 1.5)
    shift: torch.Tensor  # (B, 2) int64: output pixel (i, j) shows input pixel (i + shift_rows, j + shift_cols)
    cutout_start: torch.Tensor  # (B, 2) int64: first zeroed row and column (may be negative)
    cutout_size: tuple[int, int]
    crop: tuple[int, int] | None  # top, left of the square crop, or None


@dataclass(frozen=True)
class AugmentDraw:
    """The random numbers of one projected-discriminator call: DiffAugment's colour, translation and cutout
    per sample, and the batch's random crop (official `networks/discriminator.py` `stylegan_t_forward` with
    `training/diffaug.py` 'color,translation,cutout')."""

    brightness: torch.Tensor  # (B,)
    saturation: torch.Tensor  # (B,)
    contrast: torch.Tensor  # (B,)
    translation: torch.Tensor  # (B, 2): rows, columns
    cutout: torch.Tensor  # (B, 2): rows, columns
    crop: torch.Tensor  # (3,): crop if [0] < the crop probability; top [1] and left [2] of the crop

    @classmethod
    def draw(cls, generator: torch.Generator, batch_size: int) -> AugmentDraw:
        per_sample = torch.rand(batch_size, 7, generator=generator)
        crop = torch.rand(3, generator=generator)
        return cls(per_sample[:, 0], per_sample[:, 1], per_sample[:, 2], per_sample[:, 3:5], per_sample[:, 5:7], crop)

    @classmethod
    def from_integers(
        cls,
        brightness: torch.Tensor,
        saturation: torch.Tensor,
        contrast: torch.Tensor,
        shift: torch.Tensor,
        cutout_offset: torch.Tensor,
        size: tuple[int, int],
        crop: tuple[int, int] | None = None,
        crop_size: int | None = None,
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.2,
    ) -> AugmentDraw:
        """The draw whose mapping onto `size` gives these integers: official `rand_translation`'s shifts in
        [-s, s] and `rand_cutout`'s offsets in [0, size + 1 - cutout % 2) (centre of the cut square), and a crop
        at (top, left) of side `crop_size`. Uniforms are placed in the middle of each integer's interval."""
        height, width = size
        spans = torch.tensor([_shift_range(height, translation_ratio), _shift_range(width, translation_ratio)])
        translation = (shift.double() + spans + 0.5) / (2 * spans + 1)
        cut = torch.tensor(_cutout_size(size, cutout_ratio))
        cutout = (cutout_offset.double() + 0.5) / (torch.tensor([height, width]) + 1 - cut % 2)
        if crop is None:
            crop_uniforms = torch.tensor([1.0, 0.0, 0.0])  # 1.0 is never below a probability: no crop
        else:
            if crop_size is None:
                raise ValueError("a crop needs its crop_size")
            top, left = crop
            crop_uniforms = torch.tensor(
                [0.0, (top + 0.5) / (height - crop_size + 1), (left + 0.5) / (width - crop_size + 1)]
            )
        return cls(
            brightness.float(),
            saturation.float(),
            contrast.float(),
            translation.float(),
            cutout.float(),
            crop_uniforms.float(),
        )

    def mapped(
        self,
        size: tuple[int, int],
        crop_size: int,
        crop_probability: float,
        translation_ratio: float = 0.125,
        cutout_ratio: float = 0.2,
    ) -> Augmentation:
        """The augmentation for images of `size` (height, width); crops of side `crop_size` apply only to larger
        images, as the official discriminator."""
        height, width = size
        spans = torch.tensor([_shift_range(height, translation_ratio), _shift_range(width, translation_ratio)])
        shift = (self.translation.double() * (2 * spans + 1)).floor().long() - spans
        cut = _cutout_size(size, cutout_ratio)
        cut_t = torch.tensor(cut)
        offset = (self.cutout.double() * (torch.tensor([height, width]) + 1 - cut_t % 2)).floor().long()
        crop = None
        if width > crop_size and float(self.crop[0]) < crop_probability:
            top = math.floor(float(self.crop[1]) * (height - crop_size + 1))
            left = math.floor(float(self.crop[2]) * (width - crop_size + 1))
            crop = (top, left)
        return Augmentation(
            brightness=self.brightness - 0.5,
            saturation=self.saturation * 2,
            contrast=self.contrast + 0.5,
            shift=shift,
            cutout_start=offset - cut_t // 2,
            cutout_size=cut,
            crop=crop,
        )


def _shift_range(side: int, ratio: float) -> int:
    return int(side * ratio + 0.5)


def _cutout_size(size: tuple[int, int], ratio: float) -> tuple[int, int]:
    return int(size[0] * ratio + 0.5), int(size[1] * ratio + 0.5)


@dataclass(frozen=True)
class PassDraws:
    """The draws of one D or G pass over one micro-batch; None: drawn from the trainer's generator when needed."""

    equivariance: EquivarianceDraw | None = None
    posterior_noise: torch.Tensor | None = None  # eps of z = mean + std * eps, the posterior's shape
    fake_augment: AugmentDraw | None = None  # the projected discriminator's call on generated images
    real_augment: AugmentDraw | None = None  # its call on real images (the D pass)
