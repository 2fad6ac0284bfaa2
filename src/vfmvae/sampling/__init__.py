"""Sampling from trained diffusion transformers (package time convention: t = 1 noise -> t = 0 data)."""

from vfmvae.sampling.ode import euler_ode, guided_velocity, time_grid

__all__ = ["euler_ode", "guided_velocity", "time_grid"]
