"""The latent cache between the tokenizer and diffusion training (sharded safetensors with stored statistics)."""

from vfmvae.latents.cache import CacheError, LatentDataset, cache_latents, draw_posterior
from vfmvae.latents.stats import LatentStats

__all__ = ["CacheError", "LatentDataset", "LatentStats", "cache_latents", "draw_posterior"]
