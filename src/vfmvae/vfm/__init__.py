"""Frozen vision foundation models (SigLIP2, SigLIP, DINOv2, DINOv3, CLIP, MAE, EVA) with multi-layer taps.

Used three times: as the tokenizer's encoder, as the alignment target of diffusion training (REPA/REG),
and as a subject of SE-CKNNA analysis. A `VFMSpec` describes one; `build_vfm(spec)` is the one way to build it.
"""

from vfmvae.vfm.encoder import FrozenVFM, VFMFeatures, build_vfm, list_vfms
from vfmvae.vfm.families import VFM_ADAPTERS, VFMLoadError
from vfmvae.vfm.registry import VFM_REGISTRY, VFMEntry
from vfmvae.vfm.spec import VFMSpec

__all__ = [
    "VFM_ADAPTERS",
    "FrozenVFM",
    "VFMEntry",
    "VFMFeatures",
    "VFMLoadError",
    "VFMSpec",
    "VFM_REGISTRY",
    "build_vfm",
    "list_vfms",
]
