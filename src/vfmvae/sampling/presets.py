"""Named sampler presets: the official sampling settings behind the paper's generation numbers, in one flag.

Each preset belongs to one released checkpoint (`PRESET_SOURCES[name]["checkpoint"]`, with the figure it gives in the
paper) and is written in the official code's own parameters, converted to ours (package time: t = 1 noise, t = 0
data) by the functions below; tests/test_sampling_presets.py checks the resulting time grid, scales, interval and
guided channels against those parameters.

* `reg-sde` (REG-SiT-XL/1, 640 and 480 epochs): tianciB/VFM-VAE@b3a752a tools/preprocess_for_reg/sample.sh (REG's
  `sample.py`): `--mode sde` (Euler-Maruyama), `--num-steps 250`, `--cfg-scale 4.0`, `--cls-cfg-scale 4.0`,
  `--guidance-high 0.8` (`--guidance-low` default 0). REG's time is ours, so guidance acts on t in [0, 0.8] as
  written. The script's comment: "for 640 epochs, FID=1.31 with cfg scale=4.0" (and 1.34 for 480 epochs).
* `reg-sde-64ep` (REG-SiT-XL/1, 64 epochs): the same sample.sh with `--cfg-scale 2.0`, as its comment says: "for
  64 epochs, FID=2.03 with cfg scale=2.0". The comment names only `--cfg-scale`, so `--cls-cfg-scale` stays the
  script's 4.0 (the class token's own guidance scale in REG's sampler).
* `reg-sde-80ep` (REG-SiT-XL/1, 80 epochs): the same sample.sh without guidance (`--cfg-scale 1.0`, which REG's
  sampler reads as "no guidance", the class token included): the 80-epoch model is published without CFG only
  (tianciB/VFM-VAE@b3a752a README.md "Generation (w/o CFG)": gFID 2.22, sFID 5.03, IS 218.8; the paper's table has
  no with-CFG figure for it), and sample.sh's comment lists no guidance scale for 80 epochs.
* `lightningdit` (LightningDiT-XL/1, 560 epochs): tianciB/VFM-VAE@b3a752a
  tools/preprocess_for_lightningdit/train_lightningdit_xl_1_stage_*.yaml `sample:` (LightningDiT's
  `Sampler.sample_ode`): Euler, `num_sampling_steps: 250` (grid points, so 249 steps), `timestep_shift: 0.3` (our
  shift 1 / 0.3), `cfg_scale: 4.0`, `cfg_interval_start: 0.125` (no guidance while its t < 0.125, i.e. our
  t > 0.875), and guidance on the first three latent channels only (LightningDiT's `forward_with_cfg`, a DiT
  leftover). The yaml's comment: "for 560 epoch performance with FID=1.57 cfg_scale=4.0".
* `lightningdit-64ep` (LightningDiT-XL/1, 64 epochs): the same `sample:` with `cfg_scale: 6.0`, as that comment
  says: "for 64 epoch performance with FID=2.16 cfg_scale=6.0".

Without guidance (the paper's "w/o CFG" columns) is any preset with `--cfg 1`. The label draw is not part of a
preset: the official `sample.py` files draw uniformly random labels (`torch.randint`), which is `vfmvae sample`'s
default (`--classes random`).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

from vfmvae.sampling.ode import SamplerConfig

__all__ = ["PRESETS", "PRESET_SOURCES", "preset_checkpoint", "from_lightningdit", "from_reg", "resolve_sampler_config"]


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


_REG_SAMPLE_SH = "tianciB/VFM-VAE@b3a752a tools/preprocess_for_reg/sample.sh (REG sample.py)"
_LIGHTNINGDIT_YAML = (
    "tianciB/VFM-VAE@b3a752a tools/preprocess_for_lightningdit/train_lightningdit_xl_1_stage_1.yaml `sample:` "
    "(LightningDiT Sampler.sample_ode)"
)
_REG_OFFICIAL = {"mode": "sde", "num_steps": 250, "guidance_low": 0.0, "guidance_high": 0.8}
_LIGHTNINGDIT_OFFICIAL = {
    "sampling_method": "euler",
    "num_sampling_steps": 250,
    "timestep_shift": 0.3,
    "cfg_interval_start": 0.125,
}

_FROM_OFFICIAL = {"reg": from_reg, "lightningdit": from_lightningdit}

# Per preset: the official code family, the official source, the checkpoint it belongs to (with the figure it gives
# in the paper) and the official parameters (converted by from_reg / from_lightningdit).
PRESET_SOURCES: dict[str, dict[str, Any]] = {
    "reg-sde": {
        "family": "reg",
        "code": _REG_SAMPLE_SH,
        "checkpoint": "VFM-VAE REG-SiT-XL/1, 640 epochs (gFID 1.31 with CFG; 480 epochs: 1.34)",
        "official": {**_REG_OFFICIAL, "cfg_scale": 4.0, "cls_cfg_scale": 4.0},
    },
    "reg-sde-64ep": {
        "family": "reg",
        "code": _REG_SAMPLE_SH + " with --cfg-scale 2.0, as its comment gives for 64 epochs",
        "checkpoint": "VFM-VAE REG-SiT-XL/1, 64 epochs (gFID 2.03 with CFG 2)",
        "official": {**_REG_OFFICIAL, "cfg_scale": 2.0, "cls_cfg_scale": 4.0},
    },
    "reg-sde-80ep": {
        "family": "reg",
        "code": _REG_SAMPLE_SH + " with --cfg-scale 1.0; README.md 'Generation (w/o CFG)'",
        "checkpoint": "VFM-VAE REG-SiT-XL/1, 80 epochs (gFID 2.22 without CFG; published without CFG only)",
        "official": {**_REG_OFFICIAL, "cfg_scale": 1.0},
    },
    "lightningdit": {
        "family": "lightningdit",
        "code": _LIGHTNINGDIT_YAML,
        "checkpoint": "VFM-VAE LightningDiT-XL/1, 560 epochs (stage 1; gFID 1.57 with CFG 4)",
        "official": {**_LIGHTNINGDIT_OFFICIAL, "cfg_scale": 4.0},
    },
    "lightningdit-64ep": {
        "family": "lightningdit",
        "code": _LIGHTNINGDIT_YAML + " with cfg_scale 6.0, as its comment gives for 64 epochs",
        "checkpoint": "VFM-VAE LightningDiT-XL/1, 64 epochs (gFID 2.16 with CFG 6)",
        "official": {**_LIGHTNINGDIT_OFFICIAL, "cfg_scale": 6.0},
    },
}

PRESETS: dict[str, SamplerConfig] = {
    name: _FROM_OFFICIAL[source["family"]](**source["official"]) for name, source in PRESET_SOURCES.items()
}


def preset_checkpoint(preset: str | None) -> str:
    """The checkpoint a preset belongs to (and the paper's figure it gives), for messages and settings.json."""
    if preset in (None, "none"):
        return "none: the package defaults (Euler, 50 steps, no guidance), not an official setting"
    return PRESET_SOURCES[preset]["checkpoint"]


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
