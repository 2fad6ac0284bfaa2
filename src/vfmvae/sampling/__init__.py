"""Sampling from trained diffusion transformers (package time convention: t = 1 noise -> t = 0 data)."""

from vfmvae.sampling.ode import Guidance, euler_ode, guided_velocity, sample_ode, sample_sde, sde_grid, time_grid

__all__ = ["Guidance", "euler_ode", "guided_velocity", "sample_ode", "sample_sde", "sde_grid", "time_grid"]
