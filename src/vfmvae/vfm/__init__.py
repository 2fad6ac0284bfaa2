"""Frozen vision foundation models (SigLIP2, SigLIP, DINOv2, DINOv3, CLIP, MAE, EVA) with multi-layer taps.

Used three times: as the tokenizer's encoder, as the alignment target of diffusion training (REPA/REG),
and as a subject of SE-CKNNA analysis.
"""

from vfmvae.vfm.encoder import (
    FrozenVFM,
    VFMConfig,
    VFMFeatures,
    create_vfm,
    list_vfms,
    load_vfm,
    vfm_by_name,
    vfm_from_config,
)
from vfmvae.vfm.families import FAMILIES, VFMLoadError
from vfmvae.vfm.registry import VFM_REGISTRY, VFMEntry

__all__ = ["FAMILIES", "FrozenVFM", "VFMConfig", "VFMEntry", "VFMFeatures", "VFMLoadError", "VFM_REGISTRY",
           "create_vfm", "list_vfms", "load_vfm", "vfm_by_name", "vfm_from_config"]
