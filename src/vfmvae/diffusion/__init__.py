"""Diffusion transformers on tokenizer latents: models, flow-matching transport and alignment losses."""

from vfmvae.diffusion.model import DiffusionTransformer, DiTConfig, DiTOutput
from vfmvae.diffusion.registry import DIFFUSION_MODELS, create_diffusion_model, diffusion_config
from vfmvae.diffusion.transport import TransportConfig, interpolate, shift_time, training_loss

__all__ = [
    "DIFFUSION_MODELS",
    "DiTConfig",
    "DiTOutput",
    "DiffusionTransformer",
    "TransportConfig",
    "create_diffusion_model",
    "diffusion_config",
    "interpolate",
    "shift_time",
    "training_loss",
]
