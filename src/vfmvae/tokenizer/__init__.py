"""The VFM-VAE tokenizer: model, posterior, official-checkpoint conversion, reconstruction."""

from vfmvae.tokenizer.model import VFMVAE, VFMVAEConfig
from vfmvae.tokenizer.posterior import DiagonalGaussian
from vfmvae.tokenizer.quantizer import MultiCodebookQuantizer, QuantizedLatent

__all__ = ["VFMVAE", "VFMVAEConfig", "DiagonalGaussian", "MultiCodebookQuantizer", "QuantizedLatent"]
