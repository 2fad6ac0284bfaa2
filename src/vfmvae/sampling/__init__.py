"""Sampling from trained diffusion transformers (package time convention: t = 1 noise -> t = 0 data)."""

from vfmvae.sampling.generate import class_labels, generate_samples
from vfmvae.sampling.ode import Guidance, guided_velocity, sample_ode, sample_sde, sde_grid, time_grid
from vfmvae.sampling.pipeline import LatentStats, SamplerConfig, VFMVAEPipeline
from vfmvae.sampling.presets import PRESETS, resolve_sampler_config

__all__ = [
    "LatentStats",
    "PRESETS",
    "SamplerConfig",
    "VFMVAEPipeline",
    "class_labels",
    "generate_samples",
    "resolve_sampler_config",
    "Guidance",
    "guided_velocity",
    "sample_ode",
    "sample_sde",
    "sde_grid",
    "time_grid",
]
