"""Named sampler presets: the official sampling settings behind the paper's generation numbers, in one flag.

Each preset is written in the official code's own parameters and converted to ours (package time: t = 1 noise,
t = 0 data) by the functions below; tests/test_sampling_presets.py checks the resulting time grid, scales,
interval and guided channels against those parameters.

* `reg-sde`: tianciB/VFM-VAE@b3a752a tools/preprocess_for_reg/sample.sh (REG's `sample.py`): `--mode sde`
  (Euler-Maruyama), `--num-steps 250`, `--cfg-scale 4.0`, `--cls-cfg-scale 4.0`, `--guidance-high 0.8`
  (`--guidance-low` default 0). REG's time is ours, so guidance acts on t in [0, 0.8] as written.
* `lightningdit`: tianciB/VFM-VAE@b3a752a tools/preprocess_for_lightningdit/train_lightningdit_xl_1_stage_*.yaml
  `sample:` (LightningDiT's `Sampler.sample_ode`): Euler, `num_sampling_steps: 250` (grid points, so 249 steps),
  `timestep_shift: 0.3` (our shift 1 / 0.3), `cfg_scale: 4.0` (the 560-epoch model; the yaml notes 6.0 for the
  64-epoch one), `cfg_interval_start: 0.125` (no guidance while its t < 0.125, i.e. our t > 0.875), and guidance
  on the first three latent channels only (LightningDiT's `forward_with_cfg`, a DiT leftover).

The label draw is not part of a preset: the official `sample.py` files draw uniformly random labels
(`torch.randint`), which is `vfmvae sample`'s default (`--classes random`).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from vfmvae.sampling.ode import SamplerConfig

__all__ = ["PRESETS", "PRESET_SOURCES", "from_lightningdit", "from_reg", "resolve_sampler_config"]


def from_reg(
    *,
    mode: str = "sde",
    num_steps: int = 250,
    cfg_scale: float = 1.0,
    cls_cfg_scale: float | None = None,
    guidance_low: float = 0.0,
    guidance_high: float = 1.0,
) -> SamplerConfig:
    """REG `sample.py` arguments -> ours. Same time axis; `num_steps` counts steps."""
    if mode not in ("sde", "ode"):
        raise ValueError(f"REG mode {mode!r}: expected sde or ode")
    return SamplerConfig(
        sampler="sde" if mode == "sde" else "euler",
        steps=num_steps,
        cfg_scale=cfg_scale,
        cls_cfg_scale=cls_cfg_scale,
        interval=(guidance_low, guidance_high),
    )


def from_lightningdit(
    *,
    sampling_method: str = "euler",
    num_sampling_steps: int = 250,
    timestep_shift: float = 0.0,
    cfg_scale: float = 1.0,
    cfg_interval_start: float = 0.0,
) -> SamplerConfig:
    """LightningDiT `sample:` settings -> ours. Its time runs 0 (noise) -> 1 (data) and `num_sampling_steps` counts
    grid points; its guidance is off while t < cfg_interval_start and acts on the first 3 channels only."""
    if sampling_method not in ("euler", "heun"):
        raise ValueError(f"LightningDiT sampling_method {sampling_method!r}: euler or heun are supported")
    return SamplerConfig(
        sampler=sampling_method,
        steps=num_sampling_steps - 1,
        shift=1.0 / timestep_shift if timestep_shift > 0 else 1.0,
        cfg_scale=cfg_scale,
        interval=(0.0, 1.0 - cfg_interval_start),
        guide_channels=3,
    )


PRESET_SOURCES: dict[str, dict[str, Any]] = {
    "reg-sde": {
        "code": "tianciB/VFM-VAE@b3a752a tools/preprocess_for_reg/sample.sh (REG sample.py)",
        "official": {
            "mode": "sde",
            "num_steps": 250,
            "cfg_scale": 4.0,
            "cls_cfg_scale": 4.0,
            "guidance_low": 0.0,
            "guidance_high": 0.8,
        },
    },
    "lightningdit": {
        "code": "tianciB/VFM-VAE@b3a752a tools/preprocess_for_lightningdit/"
        "train_lightningdit_xl_1_stage_1.yaml (LightningDiT Sampler.sample_ode)",
        "official": {
            "sampling_method": "euler",
            "num_sampling_steps": 250,
            "timestep_shift": 0.3,
            "cfg_scale": 4.0,
            "cfg_interval_start": 0.125,
        },
    },
}

PRESETS: dict[str, SamplerConfig] = {
    "reg-sde": from_reg(**PRESET_SOURCES["reg-sde"]["official"]),
    "lightningdit": from_lightningdit(**PRESET_SOURCES["lightningdit"]["official"]),
}


def resolve_sampler_config(preset: str | None, **overrides: Any) -> SamplerConfig:
    """The preset's settings (or the package defaults for None / "none"), with every non-None override applied.

    Override names are SamplerConfig fields (sampler, steps, cfg_scale, interval, guide_channels, cls_cfg_scale,
    shift); an explicit value always wins over the preset.
    """
    if preset in (None, "none"):
        base = SamplerConfig()
    elif preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"unknown sampler preset {preset!r}; choose one of none, {', '.join(PRESETS)}")
    fields = set(asdict(base))
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown sampler settings {unknown} (valid: {sorted(fields)})")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
