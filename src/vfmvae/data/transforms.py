"""Image preprocessing shared by training, caching and evaluation.

`center_crop_adm` is the centre crop of ADM (guided-diffusion `image_datasets.center_crop_arr`, also
used by DiT, REPA and the official VFM-VAE prefetch): halve with a BOX filter while the short side is
at least twice the target, resize the short side to the target with BICUBIC, then crop the centre.
Using the same crop as the ADM reference batches keeps FID comparable.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image

__all__ = ["center_crop_adm", "to_uint8_tensor", "flip_decision", "to_float01"]


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
