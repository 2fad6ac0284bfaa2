"""Image preprocessing shared by training, caching and evaluation.

`center_crop_adm` is the centre crop of ADM (guided-diffusion `image_datasets.center_crop_arr`, also
used by DiT, REPA and the official VFM-VAE prefetch): halve with a BOX filter while the short side is
at least twice the target, resize the short side to the target with BICUBIC, then crop the centre.
Using the same crop as the ADM reference batches keeps FID comparable.

`random_square_crop` is the official VFM-VAE training augmentation (`training/data_wds.py`): a square of side
U(0.5, 1) x the short side at a uniformly random position, LANCZOS-resized to the target. Its draws, like the
flip's, depend only on (seed, epoch, index), so a resumed or re-sharded run sees the same crops.

`ImageOptions` is the whole preparation of one sample (decode limits, crop, seeded flip), the one object that the
folder and the shard datasets share.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vfmvae.data.images import DEFAULT_MAX_PIXELS, decode_image

__all__ = [
    "CROPS",
    "ImageOptions",
    "center_crop_adm",
    "resize_center_crop",
    "draw_square_crop",
    "random_square_crop",
    "crop_image",
    "to_uint8_tensor",
    "flip_decision",
    "to_float01",
]

CROPS = ("adm_center", "random_square", "resize_center")


def center_crop_adm(img: Image.Image, size: int) -> Image.Image:
    """ADM centre crop to `size` x `size` (see module docstring)."""
    while min(img.size) >= 2 * size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = size / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr = np.asarray(img)
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return Image.fromarray(arr[top : top + size, left : left + size])


def _sample_rng(seed: int, epoch: int, index: int, purpose: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{purpose}/{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def draw_square_crop(
    width: int, height: int, rng: np.random.Generator, min_fraction: float = 0.5
) -> tuple[int, int, int]:
    """(left, top, side): side = floor(U(min_fraction, 1) x short side), the corner uniform over valid positions."""
    side = max(1, int(min(width, height) * rng.uniform(min_fraction, 1.0)))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return left, top, side


def random_square_crop(img: Image.Image, size: int, rng: np.random.Generator, min_fraction: float = 0.5) -> Image.Image:
    """A square drawn by `draw_square_crop`, LANCZOS-resized to `size` x `size`."""
    left, top, side = draw_square_crop(*img.size, rng, min_fraction)
    return img.crop((left, top, left + side, top + side)).resize((size, size), resample=Image.LANCZOS)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision `Resize(size)` (shorter side, bilinear with antialias on PIL) then `CenterCrop(size)`: the input
    of tianciB/VFM-VAE@b3a752a tools/reconstruct/reconstruct.py. torchvision itself does it, so it is that transform."""
    from torchvision.transforms import functional as TF

    return TF.center_crop(TF.resize(img, size), size)


def crop_image(
    img: Image.Image,
    size: int,
    crop: str = "adm_center",
    *,
    seed: int = 0,
    epoch: int = 0,
    index: int = 0,
    min_fraction: float = 0.5,
) -> Image.Image:
    """`adm_center` (evaluation, caching), `random_square` (tokenizer training) or `resize_center` (the official
    reconstruction input) to `size` x `size`."""
    if crop == "adm_center":
        return center_crop_adm(img, size)
    if crop == "random_square":
        return random_square_crop(img, size, _sample_rng(seed, epoch, index, "crop"), min_fraction)
    if crop == "resize_center":
        return resize_center_crop(img, size)
    raise ValueError(f"unknown crop {crop!r}; choose one of {', '.join(CROPS)}")


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 tensor (3, H, W). uint8 keeps data-loader traffic 4x smaller than float."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def to_float01(images: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 in [0, 1], the input range every vfmvae model takes."""
    return images.to(torch.float32) / 255.0


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """A horizontal flip that depends only on (seed, epoch, index), not on worker or process RNG.

    This makes augmentation identical after a resume and independent of the number of workers.
    """
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=1).digest()
    return bool(digest[0] & 1)


@dataclass(frozen=True)
class ImageOptions:
    """How an encoded image becomes a training or evaluation sample, for folders and tar shards alike."""

    resolution: int  # output side in pixels
    crop: str = "adm_center"  # one of CROPS (see `crop_image`)
    crop_min_fraction: float = 0.5  # random_square: the smallest square side, as a fraction of the short side
    hflip: bool = False  # a horizontal flip seeded by (seed, epoch, index) (`flip_decision`)
    seed: int = 0
    min_size: int = 16  # a shorter side below this is a bad image (skipped and counted)
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped as decompression bombs

    def prepare(self, source: str | Path | bytes, *, epoch: int, index: int) -> torch.Tensor:
        """Decode (raises `BadImage`), crop and maybe flip: uint8 (3, resolution, resolution)."""
        img = decode_image(source, min_size=self.min_size, max_pixels=self.max_pixels)
        cropped = crop_image(
            img,
            self.resolution,
            self.crop,
            seed=self.seed,
            epoch=epoch,
            index=index,
            min_fraction=self.crop_min_fraction,
        )
        image = to_uint8_tensor(cropped)
        return image.flip(-1) if self.hflip and flip_decision(self.seed, epoch, index) else image
