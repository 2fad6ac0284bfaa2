"""REPA/REG alignment targets from DINOv2, preprocessed as REG does (Martinser/REG@021ea2e).

REG's `utils.load_encoders` resamples the DINOv2 position table once to the target grid with timm's
`resample_abs_pos_embed` (bicubic, antialias), and `train.py` (`preprocess_raw_image`) resizes the 256 px
images to 224 bicubic *without* antialias. A transformers DINOv2 instead interpolates its 37x37 table to the
grid on every forward (bicubic, no antialias), and `FrozenVFM.preprocess` antialiases when it shrinks.
`reg_dinov2_targets` switches a DINOv2 `FrozenVFM` to REG's convention; the table then has the grid's size,
so transformers uses it as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vfmvae.vfm import FrozenVFM

__all__ = ["REG_TARGET_FAMILIES", "resample_position_table", "reg_dinov2_targets"]

REG_TARGET_FAMILIES = ("dinov2", "dinov2-reg")


def resample_position_table(table: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """(1, prefix + h*w, C) -> (1, prefix + grid, C): the square patch part resized bicubic with antialias in
    float32, the prefix (class) tokens kept (timm `resample_abs_pos_embed` defaults)."""
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


@torch.no_grad()
def reg_dinov2_targets(vfm: FrozenVFM, image_size: int) -> FrozenVFM:
    """Switch `vfm` (a DINOv2 fed `image_size` px images, resized by its scale factor) to REG's preprocessing;
    other families are returned unchanged."""
    if vfm.family not in REG_TARGET_FAMILIES:
        return vfm
    side = round(image_size * vfm.scale_factor)
    if side % vfm.patch_size:
        raise ValueError(
            f"{vfm.name}: {image_size} px x scale {vfm.scale_factor} = {side} px is not a multiple of "
            f"the patch size {vfm.patch_size}"
        )
    grid = (side // vfm.patch_size, side // vfm.patch_size)
    embeddings = vfm.model.embeddings
    # the register tokens of dinov2-reg sit after the position embeddings' class slot: only the class token is prefix
    embeddings.position_embeddings.data = resample_position_table(embeddings.position_embeddings.data, grid)
    vfm.resize_antialias = False
    return vfm
