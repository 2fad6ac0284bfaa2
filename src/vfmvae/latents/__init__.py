"""The latent cache between the tokenizer and diffusion training (sharded safetensors with stored statistics)."""

from vfmvae.latents.cache import CacheError, LatentDataset, cache_latents, draw_posterior

__all__ = ["CacheError", "LatentDataset", "cache_latents", "draw_posterior"]
