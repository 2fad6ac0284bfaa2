"""Sampling from trained diffusion transformers (package time convention: t = 1 noise -> t = 0 data)."""

from vfmvae.sampling.generate import class_labels, generate_samples
from vfmvae.sampling.ode import Guidance, euler_ode, guided_velocity, sample_ode, sample_sde, sde_grid, time_grid

from vfmvae.sampling.pipeline import LatentStats, SamplerConfig, VFMVAEPipeline

__all__ = [
    "LatentStats",
    "SamplerConfig",
    "VFMVAEPipeline",
    "class_labels",
    "generate_samples",
    "Guidance", "euler_ode", "guided_velocity", "sample_ode", "sample_sde", "sde_grid", "time_grid"]
