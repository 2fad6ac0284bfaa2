"""vfmvae: VFM-VAE tokenizers and latent diffusion, installable and tested.

The pipeline, one subpackage per stage (see docs/architecture.md):
data -> frozen VFM -> tokenizer -> latent cache -> diffusion -> sampling -> evaluation and analysis.
"""

from vfmvae.alignment import cknna
from vfmvae.checkpoint import CheckpointManager, PretrainedMixin, load_pretrained
from vfmvae.config import ConfigError, load_config
from vfmvae.data import DataConfig, DataStream, ImageFolderDataset, SyntheticConfig, TarShardDataset
from vfmvae.diffusion import DiffusionTransformer, DiTConfig, TransportConfig, create_diffusion_model
from vfmvae.diffusion_training import DiffusionTrainConfig, train_diffusion
from vfmvae.latents import LatentDataset, cache_latents
from vfmvae.registry import Registry
from vfmvae.sampling import SamplerConfig, VFMVAEPipeline
from vfmvae.tokenizer import VFMVAE, DiagonalGaussian, VFMVAEConfig
from vfmvae.tokenizer_training.config import TokenizerTrainConfig
from vfmvae.tokenizer_training.trainer import train_tokenizer
from vfmvae.training import EMA, optimizer_step
from vfmvae.version import __version__
from vfmvae.vfm import FrozenVFM, VFMFeatures, VFMSpec, build_vfm

__all__ = [
    "__version__",
    "cknna",
    "CheckpointManager",
    "ConfigError",
    "DataConfig",
    "DataStream",
    "DiagonalGaussian",
    "DiffusionTrainConfig",
    "DiffusionTransformer",
    "DiTConfig",
    "EMA",
    "FrozenVFM",
    "ImageFolderDataset",
    "LatentDataset",
    "PretrainedMixin",
    "Registry",
    "SamplerConfig",
    "SyntheticConfig",
    "TarShardDataset",
    "TokenizerTrainConfig",
    "TransportConfig",
    "VFMVAE",
    "VFMVAEConfig",
    "VFMVAEPipeline",
    "VFMFeatures",
    "VFMSpec",
    "build_vfm",
    "cache_latents",
    "create_diffusion_model",
    "load_config",
    "load_pretrained",
    "optimizer_step",
    "train_diffusion",
    "train_tokenizer",
]
