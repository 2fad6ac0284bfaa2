"""Upper bounds on sizes and counts that no weight file and no data can check.

A model folder's sizes are checked against its weight file's header (`checkpoint.pretrained
.check_config_against_header`); what no weight records (the latent grid of a diffusion model, a tokenizer's image
size, a sampler's step count, a number of samples) is bounded here, far above any published setting and far below
what would exhaust memory or hang, so that a typo or a hostile file is one line instead of a MemoryError.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "MAX_IMAGE_SIDE",
    "MAX_LATENT_SIDE",
    "MAX_BLOCKS",
    "MAX_SAMPLES",
    "MAX_SAMPLER_STEPS",
    "require_at_most",
]

MAX_IMAGE_SIDE = 4096  # pixels: images, crops and tokenizer resolutions (the paper's largest is 512)
MAX_LATENT_SIDE = 256  # a diffusion model's latent grid side (4096 px at f16; ImageNet 256 at f16 is 16)
MAX_BLOCKS = 1024  # transformer depths, attention depths, VFM layers (the largest published ViT has 48)
MAX_SAMPLES = 1_000_000  # samples of one `vfmvae sample` run (ADM evaluation uses 50,000)
MAX_SAMPLER_STEPS = 10_000  # sampler steps (the official presets use 250)


def require_at_most(config: Any, limits: dict[str, int]) -> None:
    """Raise ValueError naming the first field of `config` above its limit (`{field: limit}`); None is skipped."""
    for name, limit in limits.items():
        value = getattr(config, name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if item is not None and item > limit:
                raise ValueError(f"{name} must be <= {limit:,}, got {value}")
