"""Named VFMs: hub id, family and architecture (so a random-init copy can be built offline).

`*-test` entries are tiny random architectures of the real model classes, used by the tests.
`scale_factor` is the default input rescaling for 256-px images, as the official VFM-VAE configs set it
(SigLIP2 at 512 px: x2; patch-14 models: x1.75 so that 448 px gives a 32 x 32 grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["VFMEntry", "VFM_REGISTRY", "register_vfm"]


@dataclass(frozen=True)
class VFMEntry:
    name: str
    family: str
    hub_id: str | None
    arch: dict[str, Any] = field(default_factory=dict)
    scale_factor: float = 1.0
    note: str = ""

    @property
    def patch_size(self) -> int:
        if "patch_size" in self.arch:
            return int(self.arch["patch_size"])
        return 14 if "patch14" in self.arch.get("timm_name", "") else 16

    @property
    def width(self) -> int:
        return int(self.arch.get("hidden_size", self.arch.get("embed_dim", 0)))

    @property
    def num_layers(self) -> int:
        return int(self.arch.get("num_hidden_layers", self.arch.get("depth", 0)))


VFM_REGISTRY: dict[str, VFMEntry] = {}


def register_vfm(entry: VFMEntry) -> VFMEntry:
    if entry.name in VFM_REGISTRY:
        raise KeyError(f"VFM {entry.name!r} registered twice")
    VFM_REGISTRY[entry.name] = entry
    return entry


def _vit(hidden: int, layers: int, heads: int, inter: int, patch: int, image: int, **extra: Any) -> dict[str, Any]:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=inter,
        patch_size=patch,
        image_size=image,
        **extra,
    )


def _dino2(hidden: int, layers: int, heads: int, **extra: Any) -> dict[str, Any]:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        patch_size=14,
        image_size=518,
        layerscale_value=1.0,
        **extra,
    )


# SigLIP2 (fixed-resolution checkpoints, SiglipVisionModel) and SigLIP v1
for _name, _arch, _scale in [
    ("siglip2-base-patch16-256", _vit(768, 12, 12, 3072, 16, 256), 1.0),
    ("siglip2-base-patch16-512", _vit(768, 12, 12, 3072, 16, 512), 2.0),
    ("siglip2-large-patch16-256", _vit(1024, 24, 16, 4096, 16, 256), 1.0),
    ("siglip2-large-patch16-512", _vit(1024, 24, 16, 4096, 16, 512), 2.0),
    ("siglip2-so400m-patch16-512", _vit(1152, 27, 16, 4304, 16, 512), 2.0),
    ("siglip-so400m-patch14-384", _vit(1152, 27, 16, 4304, 14, 384), 1.75),
    ("siglip-base-patch16-256", _vit(768, 12, 12, 3072, 16, 256), 1.0),
]:
    register_vfm(VFMEntry(_name, "siglip", f"google/{_name}", _arch, _scale))
VFM_REGISTRY["siglip2-large-patch16-512"] = VFMEntry(
    "siglip2-large-patch16-512",
    "siglip",
    "google/siglip2-large-patch16-512",
    _vit(1024, 24, 16, 4096, 16, 512),
    2.0,
    note="VFM-VAE default",
)

# DINOv2, with and without registers
for _size, _arch in [
    ("small", _dino2(384, 12, 6)),
    ("base", _dino2(768, 12, 12)),
    ("large", _dino2(1024, 24, 16)),
    ("giant", _dino2(1536, 40, 24, use_swiglu_ffn=True)),
]:
    register_vfm(VFMEntry(f"dinov2-{_size}", "dinov2", f"facebook/dinov2-{_size}", _arch, 1.75))
    register_vfm(
        VFMEntry(
            f"dinov2-{_size}-reg",
            "dinov2-reg",
            f"facebook/dinov2-with-registers-{_size}",
            {**_arch, "num_register_tokens": 4},
            1.75,
        )
    )

# DINOv3 (LVD-1689M ViTs; gated on the hub)
for _short, _arch in [
    ("vits16", _vit(384, 12, 6, 1536, 16, 224)),
    ("vitb16", _vit(768, 12, 12, 3072, 16, 224)),
    ("vitl16", _vit(1024, 24, 16, 4096, 16, 224)),
]:
    register_vfm(
        VFMEntry(
            f"dinov3-{_short}",
            "dinov3",
            f"facebook/dinov3-{_short}-pretrain-lvd1689m",
            {**_arch, "num_register_tokens": 4, "layerscale_value": 1.0, "key_bias": False},
            1.0,
        )
    )

# CLIP ViT
for _name, _arch, _scale in [
    ("clip-vit-base-patch16", _vit(768, 12, 12, 3072, 16, 224, hidden_act="quick_gelu"), 1.0),
    ("clip-vit-large-patch14", _vit(1024, 24, 16, 4096, 14, 224, hidden_act="quick_gelu"), 1.75),
    ("clip-vit-large-patch14-336", _vit(1024, 24, 16, 4096, 14, 336, hidden_act="quick_gelu"), 1.75),
]:
    register_vfm(VFMEntry(_name, "clip", f"openai/{_name}", _arch, _scale))

# MAE ViT
for _name, _hub, _arch, _scale in [
    ("mae-base", "facebook/vit-mae-base", _vit(768, 12, 12, 3072, 16, 224), 1.0),
    ("mae-large", "facebook/vit-mae-large", _vit(1024, 24, 16, 4096, 16, 224), 1.0),
    ("mae-huge", "facebook/vit-mae-huge", _vit(1280, 32, 16, 5120, 14, 224), 1.75),
]:
    register_vfm(VFMEntry(_name, "mae", _hub, _arch, _scale))

# EVA through timm
register_vfm(
    VFMEntry(
        "eva02-large-patch14-clip-336",
        "eva",
        "timm/eva02_large_patch14_clip_336.merged2b",
        {"timm_name": "eva02_large_patch14_clip_336", "embed_dim": 1024, "depth": 24},
        1.75,
    )
)
register_vfm(
    VFMEntry(
        "eva-giant-patch14-336",
        "eva",
        "timm/eva_giant_patch14_336.clip_ft_in1k",
        {"timm_name": "eva_giant_patch14_336", "embed_dim": 1408, "depth": 40},
        1.75,
    )
)

# Tiny random variants of the real classes, for tests.
_TINY = _vit(64, 4, 4, 128, 8, 32)
register_vfm(VFMEntry("siglip2-test", "siglip", None, _TINY, 1.0, note="tiny random, tests only"))
register_vfm(
    VFMEntry("dinov2-test", "dinov2", None, {**_TINY, "layerscale_value": 1.0}, 1.0, note="tiny random, tests only")
)
register_vfm(
    VFMEntry(
        "dinov2-reg-test", "dinov2-reg", None, {**_TINY, "num_register_tokens": 4}, 1.0, note="tiny random, tests only"
    )
)
register_vfm(
    VFMEntry("dinov3-test", "dinov3", None, {**_TINY, "num_register_tokens": 4}, 1.0, note="tiny random, tests only")
)
register_vfm(VFMEntry("clip-test", "clip", None, _TINY, 1.0, note="tiny random, tests only"))
register_vfm(VFMEntry("mae-test", "mae", None, _TINY, 1.0, note="tiny random, tests only"))
register_vfm(
    VFMEntry(
        "eva-test",
        "eva",
        None,
        {
            "timm_name": "eva02_base_patch16_clip_224",
            "img_size": 32,
            "patch_size": 8,
            "embed_dim": 64,
            "depth": 4,
            "num_heads": 4,
            "ref_feat_shape": (4, 4),
        },
        1.0,
        note="tiny random, tests only",
    )
)
