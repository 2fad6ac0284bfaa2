"""REPA/REG alignment targets from DINOv2, preprocessed as REG does (Martinser/REG@021ea2e).

REG's `utils.load_encoders` resamples the DINOv2 position table once to the target grid with timm's
`resample_abs_pos_embed` (bicubic, antialias), and `train.py` (`preprocess_raw_image`) resizes the 256 px
images to 224 bicubic *without* antialias. A transformers DINOv2 instead interpolates its 37x37 table to the
grid on every forward (bicubic, no antialias), and `FrozenVFM.preprocess` antialiases when it shrinks.
`reg_dinov2_targets` switches a DINOv2 `FrozenVFM` to REG's convention; the table then has the grid's size,
so transformers uses it as it is. `build_target_vfm` is the one builder of a cache's target VFM: `cache-latents`
computes the cached targets with it, and the SE-CKNNA features of a REG model take an image's class token from it.
"""

from __future__ import annotations

import torch

from vfmvae.vfm import FrozenVFM
from vfmvae.vfm.positions import resample_position_table

__all__ = ["REG_TARGET_FAMILIES", "build_target_vfm", "resample_position_table", "reg_dinov2_targets"]

REG_TARGET_FAMILIES = ("dinov2", "dinov2-reg")


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


def build_target_vfm(name: str, resolution: int, vfm_resolution: int | None = None) -> FrozenVFM:
    """The VFM of `cache-latents --vfm-features NAME [--vfm-resolution R]` for `resolution`-px images, prepared as
    the cache prepares it: fed R px (default: the registry's scale for the name), DINOv2 with REG's conventions."""
    from vfmvae.vfm import VFMSpec, build_vfm

    scale = {"scale_factor": vfm_resolution / resolution} if vfm_resolution else {}
    return reg_dinov2_targets(build_vfm(VFMSpec.from_name(name, layers=(-1,), **scale)), resolution)
