"""`VFMVAEAutoencoder`: the VFM-VAE tokenizer as a diffusers model (the `AutoencoderKL` interface).

Differences from our `VFMVAE` are the diffusers conventions only: images in [-1, 1] (ours encode [0, 1]),
`encode(x).latent_dist` is a diffusers `DiagonalGaussianDistribution` (the same [-30, 20] logvar clamp and the same
`mean + std * randn` draw as ours), `decode(z).sample`, `return_dict=False` tuples, and the latent statistics
of the diffusion model in the config as `latents_mean`/`latents_std` (the `AutoencoderKLWan`/`AutoencoderKLQwenImage`
convention: `z_normalised = (z - latents_mean) / latents_std`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin

from vfmvae.config import config_from_dict, config_to_dict
from vfmvae.diffusers.loading import HeaderCheckedLoading
from vfmvae.diffusers.placement import placed_like
from vfmvae.tokenizer.model import VFMVAE, VFMVAEConfig, upgrade_flat_vfm_keys

__all__ = [
    "VFMVAEAutoencoder",
    "ModelMixin",
    "TILING_UNSUPPORTED",
]  # ModelMixin: diffusers' loader looks it up in this module


class VFMVAEAutoencoder(HeaderCheckedLoading, ModelMixin, AutoencoderMixin, ConfigMixin):
    """A continuous VFM-VAE tokenizer (frozen VFM encoder included) behind diffusers' autoencoder interface.

    `tokenizer_config` is our `VFMVAEConfig` as a dict; the weights are our `VFMVAE`'s under the `tokenizer.` prefix.

    `enable_slicing()` encodes and decodes one image at a time (the same images: every normalisation is per image).
    `enable_tiling()` is refused (see `TILING_UNSUPPORTED`). `enable_gradient_checkpointing()` recomputes each
    decoder block in the backward pass (the frozen VFM encoder keeps no activations for backward anyway).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        tokenizer_config: dict[str, Any] | None = None,
        latents_mean: Sequence[float] | None = None,
        latents_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        # folders written before the VFM became one spec hold the flat keys: read them in today's shape
        cfg = config_from_dict(
            VFMVAEConfig, upgrade_flat_vfm_keys(dict(tokenizer_config or {})), source="VFMVAEAutoencoder config.json"
        )
        if cfg.compression != "continuous":
            raise ValueError("VFMVAEAutoencoder wraps continuous tokenizers; this config is a discrete (VQ) one")
        for name, values in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if values is not None and len(values) != cfg.z_dim:
                raise ValueError(f"{name} has {len(values)} values; the tokenizer has {cfg.z_dim} latent channels")
        self.tokenizer = VFMVAE.build_for_loading(cfg)  # the weights come from a folder or from our VFMVAE
        self.use_slicing = False  # diffusers' AutoencoderMixin switch: one image per encoder/decoder pass

    # ---- conversion ------------------------------------------------------------------------------------------
    @classmethod
    def from_vfmvae(cls, tokenizer: VFMVAE | str | Path, latent_stats: Any = None) -> VFMVAEAutoencoder:
        """From our `VFMVAE` (or its folder). `latent_stats`: a `LatentStats` or a file `LatentStats.load` reads; with
        a tokenizer folder, the statistics must belong to it (`LatentStats.check_tokenizer`)."""
        from vfmvae.checkpoint.pretrained import resolve_model_dir
        from vfmvae.latents.stats import LatentStats

        if latent_stats is not None and not isinstance(latent_stats, LatentStats):
            latent_stats = LatentStats.load(latent_stats)
        if not isinstance(tokenizer, VFMVAE):
            folder = resolve_model_dir(tokenizer, what="tokenizer")
            if latent_stats is not None:
                latent_stats.check_tokenizer(folder)
            tokenizer = VFMVAE.from_pretrained(folder)
        stats = (
            {}
            if latent_stats is None
            else {"latents_mean": latent_stats.mean.tolist(), "latents_std": latent_stats.std.tolist()}
        )
        model = cls(tokenizer_config=config_to_dict(tokenizer.config), **stats)
        model.tokenizer.load_state_dict(tokenizer.state_dict(), strict=True)
        param = next(tokenizer.parameters())
        return placed_like(model, param)

    def to_vfmvae(self) -> VFMVAE:
        """Our `VFMVAE` (the wrapped module itself, sharing its weights); `.save_pretrained` writes our folder."""
        return self.tokenizer

    @property
    def latent_stats(self):
        """The config's statistics as our `LatentStats`, or None when the config has none."""
        from vfmvae.latents.stats import LatentStats

        if self.config.latents_mean is None or self.config.latents_std is None:
            return None
        return LatentStats(
            torch.tensor(self.config.latents_mean, dtype=torch.float32),
            torch.tensor(self.config.latents_std, dtype=torch.float32),
        )

    # ---- the diffusers interface -----------------------------------------------------------------------------
    def enable_tiling(self, *args, **kwargs) -> None:
        raise NotImplementedError(TILING_UNSUPPORTED)

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x: (B, 3, H, W) in [-1, 1], H and W multiples of the tokenizer's `downsample`."""
        images01 = (x + 1) / 2
        if self.use_slicing and len(x) > 1:
            moments = torch.cat([self.tokenizer.encode_moments(one).moments for one in images01.split(1)])
        else:
            moments = self.tokenizer.encode_moments(images01).moments
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None):
        """z: (B, z_dim, h, w) raw (not normalised) latents -> images in about [-1, 1] (not clamped, as ours)."""
        if self.use_slicing and len(z) > 1:
            image = torch.cat([self._decode(one) for one in z.split(1)])
        else:
            image = self._decode(z)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        # GroupNorm refuses a group of one value (a 1x1 map of a single sample in small decoders); its statistics are
        # per sample, so decoding the sample twice and keeping one copy changes nothing (as our VFMVAEPipeline does)
        return self.tokenizer.decode(z.repeat(2, 1, 1, 1) if len(z) == 1 else z).sample[: len(z)]

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ):
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)


TILING_UNSUPPORTED = (
    "VFMVAEAutoencoder cannot tile: its encoder is a vision transformer (the VFM) whose attention spans every patch "
    "of the image, and its decoder derives one style vector from the whole latent and has global self-attention "
    "blocks, so tiles would not give the untiled image. Use enable_slicing() to bound memory by encoding and "
    "decoding one image at a time (same outputs)"
)
