"""Absolute position tables resampled to another patch grid as timm does, the one implementation for every DINOv2 that
must match timm: REG's alignment targets (`vfmvae.latents.targets`) and the SE-CKNNA DINOv2 reference
(`vfmvae.alignment.extract`).

timm's `resample_abs_pos_embed` (timm 1.0; `timm.layers.pos_embed`) resizes the square patch part of the table
bicubic *with* antialias in float32 and keeps the prefix (class) tokens. A transformers DINOv2 instead interpolates
its table on every forward bicubic *without* antialias (`Dinov2Embeddings.interpolate_pos_encoding`), which differs
wherever the table shrinks: the official 37 x 37 table to the 16 x 16 grid of a 224-px input, and most on the small
grids of the SE-CKNNA equivariance transform (12, 8 and 4 patches at scales 0.75, 0.5 and 0.25).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vfmvae.vfm.encoder import FrozenVFM

__all__ = ["TIMM_POSITION_FAMILIES", "resample_position_table", "resample_positions_per_forward"]

TIMM_POSITION_FAMILIES = ("dinov2", "dinov2-reg")  # transformers models with a learned table over a square grid


def resample_position_table(table: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """(1, prefix + h*w, C) -> (1, prefix + grid, C): the square patch part resized bicubic with antialias in
    float32, the prefix (class) tokens kept (timm `resample_abs_pos_embed` defaults; the table itself when the grid
    is its own)."""
    prefix, patches = table[:, :num_prefix], table[:, num_prefix:]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"position table of {patches.shape[1]} patch positions is not square")
    if (side, side) == tuple(grid):
        return table
    c = patches.shape[-1]
    maps = patches.float().reshape(1, side, side, c).permute(0, 3, 1, 2)
    maps = F.interpolate(maps, size=tuple(grid), mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([prefix, maps.permute(0, 2, 3, 1).reshape(1, -1, c).to(table.dtype)], dim=1)


def resample_positions_per_forward(vfm: FrozenVFM) -> FrozenVFM:
    """Make a DINOv2 `vfm` resample its table to each input's grid with `resample_position_table`, as timm's ViT
    built with `dynamic_img_size=True` does on every forward (the official DINOv2 feature extractor,
    tianciB/VFM-VAE@b3a752a tools/evaluate_alignment/vfms/extract_features_by_dinov2.py). Non-square grids too."""
    if vfm.family not in TIMM_POSITION_FAMILIES:
        raise ValueError(f"{vfm.name or vfm.family}: timm's position resampling applies to DINOv2 models only")
    embeddings = vfm.model.embeddings
    patch = vfm.patch_size

    def interpolate_pos_encoding(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return resample_position_table(embeddings.position_embeddings, (height // patch, width // patch))

    embeddings.interpolate_pos_encoding = interpolate_pos_encoding  # what transformers' forward calls
    return vfm
