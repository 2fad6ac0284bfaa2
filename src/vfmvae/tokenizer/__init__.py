"""The VFM-VAE tokenizer: model, posterior, official-checkpoint conversion, reconstruction."""

from vfmvae.tokenizer.model import VFMVAE, DecoderOutput, EncoderOutput, VFMVAEConfig
from vfmvae.tokenizer.posterior import DiagonalGaussian
from vfmvae.tokenizer.quantizer import MultiCodebookQuantizer, QuantizedLatent

__all__ = [
    "VFMVAE",
    "VFMVAEConfig",
    "EncoderOutput",
    "DecoderOutput",
    "DiagonalGaussian",
    "MultiCodebookQuantizer",
    "QuantizedLatent",
]
