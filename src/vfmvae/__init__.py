"""vfmvae: VFM-VAE tokenizers and latent diffusion, installable and tested.

The pipeline, one subpackage per stage (see docs/architecture.md):
data -> frozen VFM -> tokenizer -> latent cache -> diffusion -> sampling -> evaluation and analysis.
"""

from vfmvae.version import __version__

# Names of the public API and the module that defines each. They are imported on first use (PEP 562), so that
# `import vfmvae.cli` (the `vfmvae` command) starts without loading torch: a Ctrl-C during start-up is then caught
# by the command itself. `from vfmvae import VFMVAE` and `vfmvae.VFMVAE` work as before.
_PUBLIC = {
    "cknna": "vfmvae.alignment",
    "CheckpointManager": "vfmvae.checkpoint",
    "PretrainedMixin": "vfmvae.checkpoint",
    "load_pretrained": "vfmvae.checkpoint",
    "ConfigError": "vfmvae.config",
    "load_config": "vfmvae.config",
    "DataConfig": "vfmvae.data",
    "DataStream": "vfmvae.data",
    "ImageFolderDataset": "vfmvae.data",
    "SyntheticConfig": "vfmvae.data",
    "TarShardDataset": "vfmvae.data",
    "DiffusionTransformer": "vfmvae.diffusion",
    "DiTConfig": "vfmvae.diffusion",
    "TransportConfig": "vfmvae.diffusion",
    "create_diffusion_model": "vfmvae.diffusion",
    "DiffusionTrainConfig": "vfmvae.diffusion_training",
    "train_diffusion": "vfmvae.diffusion_training",
    "LatentDataset": "vfmvae.latents",
    "cache_latents": "vfmvae.latents",
    "Registry": "vfmvae.registry",
    "SamplerConfig": "vfmvae.sampling",
    "VFMVAEPipeline": "vfmvae.sampling",
    "VFMVAE": "vfmvae.tokenizer",
    "DiagonalGaussian": "vfmvae.tokenizer",
    "VFMVAEConfig": "vfmvae.tokenizer",
    "TokenizerTrainConfig": "vfmvae.tokenizer_training.config",
    "train_tokenizer": "vfmvae.tokenizer_training.trainer",
    "EMA": "vfmvae.training",
    "optimizer_step": "vfmvae.training",
    "FrozenVFM": "vfmvae.vfm",
    "VFMFeatures": "vfmvae.vfm",
    "VFMSpec": "vfmvae.vfm",
    "build_vfm": "vfmvae.vfm",
}


def __getattr__(name: str):
    import importlib

    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    try:  # a subpackage used as an attribute (`vfmvae.tokenizer`) after `import vfmvae`
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


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
