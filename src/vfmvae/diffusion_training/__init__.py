"""Training diffusion transformers on cached latents (`vfmvae train diffusion`)."""

from vfmvae.diffusion_training.config import DiffusionTrainConfig
from vfmvae.diffusion_training.trainer import train_diffusion

__all__ = ["DiffusionTrainConfig", "train_diffusion"]
