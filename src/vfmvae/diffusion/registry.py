"""Diffusion transformers by name: `lightningdit-xl/1`, `sit-b/2`, `reg-sit-xl/1`, ..., and `*-tiny` test models.

`tiny` is the smallest size of the ladder (2 blocks, 64 wide, patch 1, 8x8x8 latents, 10 classes): random-init,
CPU-sized models of every family, used by the tests (`vfmvae diffusion list --all`). VFM test models are named
`*-test` instead, because they stand in for a named pretrained checkpoint rather than a size.

Sizes follow DiT: S (12 blocks, 384 wide, 6 heads), B (12, 768, 12), L (24, 1024, 16), XL (28, 1152, 16).
Families:
* `sit`: DiT/SiT blocks (LayerNorm, GELU MLP), package time convention.
* `lightningdit`: RMSNorm, SwiGLU, RMS q/k norm, 2D RoPE; LightningDiT's time convention (data at t = 1),
  as in VFM-VAE's `train_lightningdit_xl_1` config.
* `repa-sit`: SiT with one REPA projector on block 8 to 768-d (DINOv2-B) features.
* `reg-sit`: REG: `repa-sit` plus the entangled 768-d class token and LayerNorm q/k norm (VFM-VAE's `--qk-norm`).
Every factory takes `DiTConfig` overrides, e.g. `in_channels=8, input_size=8` for another tokenizer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from vfmvae.diffusion.model import DiffusionTransformer, DiTConfig
from vfmvae.registry import Registry

__all__ = ["DIFFUSION_MODELS", "diffusion_config", "create_diffusion_model"]

DIFFUSION_MODELS: Registry[DiTConfig] = Registry("diffusion model")

SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16), "tiny": (2, 64, 4)}

# The DiTConfig fields that make each family (block flavour, time convention, alignment heads); sizes come from SIZES.
# (Named apart from `vfmvae.vfm`'s family table, which maps VFM families to loaders.)
FAMILY_CONFIG_FIELDS: dict[str, dict[str, Any]] = {
    "sit": {},
    "lightningdit": dict(norm="rmsnorm", mlp="swiglu", qk_norm="rmsnorm", rope=True, time_convention="data_at_1"),
    "repa-sit": dict(align_depth=8, align_dims=(768,), projector_dim=2048),
    "reg-sit": dict(align_depth=8, align_dims=(768,), projector_dim=2048, class_token_dim=768, qk_norm="layernorm"),
}

# tiny variants keep every feature of their family at CPU size
_TINY_ALIGN = dict(align_depth=1, align_dims=(64,), projector_dim=128)


def _register(name: str, base: dict[str, Any]) -> None:
    @DIFFUSION_MODELS.register(name, **{k: v for k, v in base.items() if k in ("depth", "hidden_size", "patch_size")})
    def factory(**overrides: Any) -> DiTConfig:
        return replace(DiTConfig(**base), **overrides)


for _family, _flags in FAMILY_CONFIG_FIELDS.items():
    for _size, (_depth, _hidden, _heads) in SIZES.items():
        for _patch in (1, 2) if _size != "tiny" else (1,):
            base = dict(_flags, depth=_depth, hidden_size=_hidden, num_heads=_heads, patch_size=_patch)
            if _size == "tiny":
                base.update(in_channels=8, input_size=8, num_classes=10)
                if "align_dims" in base:
                    base.update(_TINY_ALIGN, class_token_dim=64 if "class_token_dim" in base else 0)
                _register(f"{_family}-tiny", base)
            else:
                _register(f"{_family}-{_size}/{_patch}", base)


def diffusion_config(name: str, **overrides: Any) -> DiTConfig:
    return DIFFUSION_MODELS.create(name.lower(), **overrides)


def create_diffusion_model(name: str, **overrides: Any) -> DiffusionTransformer:
    """A new, randomly initialised model of a registered architecture."""
    return DiffusionTransformer(diffusion_config(name, **overrides))
