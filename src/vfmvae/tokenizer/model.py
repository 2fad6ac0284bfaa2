"""`VFMVAE`: the VFM-VAE tokenizer
(tianciB/VFM-VAE@b3a752a networks/generator.py `Generator`, networks/utils/ldm_utils.py `LDMAdapter`).

    images [0, 1] -> frozen VFM taps -> per-tap attention projection + pixel unshuffle -> concat ->
    attention projection -> [mean | logvar] -> DiagonalGaussian            (encode)
    z -> attention projection (decompress) -> Z; mapping(avgpool(Z)) -> w;
    synthesis(Z, w): six blocks with latent injection, modulated ConvNeXt layers, self-attention at the
    three coarsest blocks, x2 separable upsampling and a ToRGB of the accumulated skip features   (decode)

Everything is resolution-agnostic: a model built for 256 px encodes and decodes 512 px images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vfmvae.checkpoint.pretrained import PretrainedMixin
from vfmvae.tokenizer.layers import (
    AttnProjection,
    EqualizedLinear,
    LatentInjection,
    ModulatedConvNeXtLayer,
    ModulatedToRGB,
    SelfAttentionBlock,
    SeparableUpsample,
    normalize_2nd_moment,
    tokens_unshuffle,
)
from vfmvae.tokenizer.posterior import DiagonalGaussian
from vfmvae.tokenizer.quantizer import MultiCodebookQuantizer, QuantizedLatent
from vfmvae.vfm import FAMILIES, VFM_REGISTRY, FrozenVFM

__all__ = ["VFMVAEConfig", "VFMVAE"]


@dataclass(frozen=True)
class VFMVAEConfig:
    """The tokenizer architecture. Defaults are the released f16d32 SigLIP2-L model at 256 px."""

    # frozen VFM (encoder)
    vfm_name: str = "siglip2-large-patch16-512"     # registry name, or "custom" with vfm_family/vfm_arch
    vfm_family: str = "siglip"
    vfm_arch: dict[str, Any] = field(default_factory=dict)  # architecture config; empty = the registry's
    scale_factor: float = 2.0                        # VFM input = image x scale_factor (bilinear for SigLIP)
    layers: tuple[int, ...] = (0, 12, -1)            # VFM taps (patch_from_layers)
    layer_dims: tuple[int, ...] = (1024, 1024, 1024)  # their widths (patch_in_dimensions)
    proj_dims: tuple[int, ...] = (64, 64, 64)        # width of each tap after projection (patch_out_dimensions)
    # latent
    image_size: int = 256                            # training resolution; fixes the grid ratios
    downsample: int = 16                             # image / latent size (resolution_compression_factor)
    z_dim: int = 32                                  # continuous mode: latent channels
    compression: Literal["continuous", "discrete"] = "continuous"
    vocab_size: int = 32768                          # discrete mode: codes over all codebooks
    vocab_width: int = 64                            # discrete mode: latent channels
    num_codebooks: int = 8
    vq_beta: float = 0.25
    compress: Literal["attnproj", "conv"] = "attnproj"
    decompress: Literal["attnproj", "conv"] = "attnproj"
    quant_layers: int = 1
    post_quant_layers: int = 1
    decompress_factor: int = 16                      # Z width = z_dim x decompress_factor
    vf_projection: bool = False                      # 1x1 z -> VFM width, for the VF alignment loss
    # decoder
    pooled_resolution: int = 1
    w_dim: int = 512                                 # z_dim_for_mapping_mlp_output
    inject_blocks: tuple[int, ...] = (0, 1, 2, 3)    # Multi-Scale Latent Fusion targets
    inject_dims: tuple[int, ...] = (512, 256, 128, 128)
    attn_blocks: tuple[int, ...] = (0, 1, 2)
    attn_depths: tuple[int, ...] = (2, 2, 2)
    attn_heads: int = 8
    num_blocks: int = 6
    channel_base: int = 32768
    channel_max: int = 512
    num_res_blocks: int = 2
    extra_convnext: bool = True                      # 3 ConvNeXt layers per group in blocks 0-3 (else 2)
    legacy_noise: bool = True                        # the released weights need it; new models: False

    def __post_init__(self) -> None:
        n = len(self.layers)
        if not (len(self.layer_dims) == len(self.proj_dims) == n):
            raise ValueError("layers, layer_dims and proj_dims must have the same length")
        if 0 not in self.inject_blocks:
            raise ValueError("inject_blocks must contain 0: block 0 takes the injected latent as its only input")
        if len(self.inject_dims) != len(self.inject_blocks) or len(self.attn_depths) != len(self.attn_blocks):
            raise ValueError("inject_dims/attn_depths must match inject_blocks/attn_blocks")
        if self.image_size % (2 ** (self.num_blocks - 1)) or self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^(num_blocks-1) and by downsample")

    # derived sizes -----------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.z_dim if self.compression == "continuous" else self.vocab_width

    def block_resolutions(self) -> list[int]:
        start = self.image_size // 2 ** (self.num_blocks - 1)
        return [start * 2**i for i in range(self.num_blocks)]

    def block_channels(self) -> list[int]:
        scale = self.image_size / 256  # channel widths depend on the block index only
        return [min(self.channel_base // int(r / scale), self.channel_max) for r in self.block_resolutions()]


class _Mapping(nn.Module):
    """Global style: normalize_2nd_moment(avgpool(Z)) -> FC + lrelu -> FC, at 1/100 learning rate."""

    def __init__(self, in_dim: int, w_dim: int) -> None:
        super().__init__()
        self.fc0 = EqualizedLinear(in_dim, in_dim, lr_multiplier=0.01, activation="lrelu")
        self.fc1 = EqualizedLinear(in_dim, w_dim, lr_multiplier=0.01)
        self.register_buffer("w_avg", torch.zeros(w_dim))  # tracked in training (beta 0.995), as the official

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        w = self.fc1(self.fc0(normalize_2nd_moment(pooled)))
        if self.training:
            with torch.no_grad():
                mean = w.detach().float().mean(0)
                # a non-finite batch must not poison the statistic; decided on the device (no host sync per forward)
                self.w_avg.copy_(torch.where(torch.isfinite(mean).all(), mean.lerp(self.w_avg, 0.995), self.w_avg))
        return w


class _SynthesisBlock(nn.Module):
    def __init__(self, index: int, in_ch: int, out_ch: int, prev_ch: int | None, cfg: VFMVAEConfig,
                 resolution: int) -> None:
        super().__init__()
        kernel = 5 if index <= 1 else 7
        blur = 3 if index <= 2 else 5
        self.upsample = SeparableUpsample(in_ch, out_ch, blur, pre_normalize=index > 0)
        per_group = 3 if index <= 3 and cfg.extra_convnext else 2
        noise = 8 * 2**index if cfg.legacy_noise else None  # legacy buffers assume 256 px: 8, 16, ... 256
        self.layers = nn.ModuleList(ModulatedConvNeXtLayer(out_ch, cfg.w_dim, kernel, noise)
                                    for _ in range(1 + cfg.num_res_blocks * per_group))
        depth = cfg.attn_depths[cfg.attn_blocks.index(index)] if index in cfg.attn_blocks else 0
        self.attns = nn.ModuleList(SelfAttentionBlock(out_ch, cfg.attn_heads) for _ in range(depth))
        self.skip_upsample = SeparableUpsample(prev_ch, out_ch, blur) if prev_ch is not None else None
        self.torgb = ModulatedToRGB(out_ch, cfg.w_dim)
        self.resolution = resolution

    def forward(self, x: torch.Tensor, x_sum: torch.Tensor | None, w: torch.Tensor):
        x = self.upsample(x)
        for layer in self.layers:
            x = layer(x, w)
        for attn in self.attns:
            x = attn(x)
        # Progressive reconstruction: features (not RGB) are accumulated across blocks.
        x_sum = x if self.skip_upsample is None else self.skip_upsample(x_sum) + x
        return x, x_sum, self.torgb(x_sum, w).float()


class _Synthesis(nn.Module):
    def __init__(self, cfg: VFMVAEConfig) -> None:
        super().__init__()
        resolutions, channels = cfg.block_resolutions(), cfg.block_channels()
        z_res = cfg.image_size // cfg.downsample
        big_z = cfg.latent_channels * cfg.decompress_factor
        self.inject_blocks = tuple(cfg.inject_blocks)
        self.latent_convs = nn.ModuleDict()
        for idx, dim in zip(cfg.inject_blocks, cfg.inject_dims):
            target = resolutions[idx] // 2  # a block consumes its input at half its output resolution
            unshuffle = z_res // target if target < z_res else 1
            shuffle = target // z_res if target > z_res else 1
            self.latent_convs[str(idx)] = LatentInjection(big_z, dim, unshuffle=unshuffle, shuffle=shuffle)
        self.latent_multiple = max(conv.unshuffle for conv in self.latent_convs.values())
        injected = dict(zip(cfg.inject_blocks, cfg.inject_dims))
        self.blocks = nn.ModuleList()
        for idx in range(cfg.num_blocks):
            prev = channels[idx - 1] if idx > 0 else None
            in_ch = (prev or 0) + injected.get(idx, 0)
            self.blocks.append(_SynthesisBlock(idx, in_ch, channels[idx], prev, cfg, resolutions[idx]))

    def forward(self, z: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = x_sum = None
        images = []
        for idx, block in enumerate(self.blocks):
            if idx in self.inject_blocks:
                injected = self.latent_convs[str(idx)](z)
                x = injected if x is None else torch.cat([x, injected], dim=1)
            x, x_sum, image = block(x, x_sum, w)
            images.append(image)
        return images[-1], images[-2::-1]  # main image, then the others largest first


class VFMVAE(PretrainedMixin, nn.Module):
    """The tokenizer. `encode` takes images in [0, 1]; `decode` returns images in [-1, 1]."""

    config_class = VFMVAEConfig

    def __init__(self, config: VFMVAEConfig, vfm: FrozenVFM | None = None) -> None:
        super().__init__()
        self.config = cfg = config
        self.vfm = vfm if vfm is not None else build_vfm(cfg)
        # The tokenizer's config governs how its VFM is fed, whatever the VFM was loaded with.
        self.vfm.layers = self.vfm.check_layers(cfg.layers)
        self.vfm.scale_factor = float(cfg.scale_factor)
        if any(d != self.vfm.width for d in cfg.layer_dims):
            raise ValueError(f"layer_dims {cfg.layer_dims} do not match the VFM width {self.vfm.width}")
        grid = cfg.image_size * cfg.scale_factor / self.vfm.patch_size
        z_res = cfg.image_size // cfg.downsample
        if grid != int(grid) or int(grid) % z_res:
            raise ValueError(f"VFM token grid {grid} must be an integer multiple of the latent size {z_res}")
        self.unshuffle = int(grid) // z_res
        # encoder projections
        if cfg.compress == "attnproj":
            self.patch_projs = nn.ModuleList(
                AttnProjection(i, o, max(1, i // o), cfg.quant_layers) for i, o in zip(cfg.layer_dims, cfg.proj_dims))
        else:
            self.patch_projs = nn.ModuleList(nn.Conv2d(i, o, 1) for i, o in zip(cfg.layer_dims, cfg.proj_dims))
        fused = sum(o * self.unshuffle**2 for o in cfg.proj_dims)
        zc = cfg.latent_channels
        moments = 2 * cfg.z_dim if cfg.compression == "continuous" else cfg.vocab_width
        self.final_proj = (AttnProjection(fused, moments, max(1, fused // moments), cfg.quant_layers)
                           if cfg.compress == "attnproj" else nn.Conv2d(fused, moments, 1))
        big_z = zc * cfg.decompress_factor
        self.post_proj = (AttnProjection(zc, big_z, max(1, cfg.decompress_factor), cfg.post_quant_layers,
                                         compress=False)
                          if cfg.decompress == "attnproj" else nn.Conv2d(zc, big_z, 1))
        self.quantizer = (MultiCodebookQuantizer(cfg.vocab_size, cfg.vocab_width, cfg.num_codebooks, cfg.vq_beta)
                          if cfg.compression == "discrete" else None)
        self.vf_proj = nn.Conv2d(zc, self.vfm.width, 1, bias=False) if cfg.vf_projection else None
        # decoder
        self.mapping = _Mapping(big_z * cfg.pooled_resolution**2, cfg.w_dim)
        self.synthesis = _Synthesis(cfg)

    # ---- encoder ----------------------------------------------------------------------------------------
    def encode_moments(self, images: torch.Tensor, extra_scale: float = 1.0, return_vfm: bool = False):
        """[mean | logvar] (B, 2 z_dim, h, w) before clamping; images float in [0, 1].

        With `return_vfm`, also returns the VFM features (the alignment target of training).
        """
        feats = self.vfm(images, extra_scale=extra_scale)
        if return_vfm:
            return self._encode_tokens(feats), feats
        return self._encode_tokens(feats)

    def _encode_tokens(self, feats) -> torch.Tensor:
        gh, gw = feats.grid
        if gh % self.unshuffle or gw % self.unshuffle:
            raise ValueError(f"VFM grid {feats.grid} is not divisible by the unshuffle factor {self.unshuffle}; "
                             f"use an image size that is a multiple of {self.config.downsample}")
        parts = []
        for tokens, proj in zip(feats.tokens, self.patch_projs):
            if isinstance(proj, nn.Conv2d):
                maps = proj(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw))
                tokens = maps.flatten(2).transpose(1, 2)
            else:
                tokens = proj(tokens)
            parts.append(tokens_unshuffle(tokens, (gh, gw), self.unshuffle))
        h, w = gh // self.unshuffle, gw // self.unshuffle
        x = torch.cat(parts, dim=-1)                                          # (B, h*w, fused)
        if isinstance(self.final_proj, nn.Conv2d):
            return self.final_proj(x.transpose(1, 2).reshape(x.shape[0], -1, h, w))
        x = self.final_proj(x)                                                # (B, h*w, 2 z_dim)
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def encode(self, images: torch.Tensor) -> DiagonalGaussian | QuantizedLatent:
        """images: float (B, 3, H, W) in [0, 1], H and W multiples of `downsample`.

        Continuous mode: the diagonal Gaussian posterior. Discrete mode: the quantised latent (same API).
        """
        moments = self.encode_moments(images)
        if self.quantizer is None:
            return DiagonalGaussian(moments)
        b, c, h, w = moments.shape
        tokens, indices, vq_loss = self.quantizer(moments.flatten(2).transpose(1, 2))
        z = tokens.transpose(1, 2).reshape(b, c, h, w)
        return QuantizedLatent(z, indices.view(b, -1, h, w), vq_loss)

    # ---- decoder ----------------------------------------------------------------------------------------
    def decompress(self, z: torch.Tensor) -> torch.Tensor:
        if isinstance(self.post_proj, nn.Conv2d):
            return self.post_proj(z)
        b, _, h, w = z.shape
        tokens = self.post_proj(z.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(b, -1, h, w)

    def decode(self, z: torch.Tensor, return_multiscale: bool = False):
        """z (B, z_dim, h, w) -> image (B, 3, 16h, 16w) in about [-1, 1] (no clamp, as the official).

        With `return_multiscale`, returns `(image, [lower-resolution RGB outputs, largest first])`.
        """
        step = self.synthesis.latent_multiple
        if z.shape[-2] % step or z.shape[-1] % step:
            raise ValueError(f"latent size {tuple(z.shape[-2:])} must be a multiple of {step} for this decoder "
                             f"(its coarsest block unshuffles the latent by {step})")
        big = self.decompress(z)
        pooled = F.adaptive_avg_pool2d(big, self.config.pooled_resolution).flatten(1)
        w = self.mapping(pooled)
        image, multiscale = self.synthesis(big, w)
        return (image, multiscale) if return_multiscale else image

    def forward(self, images: torch.Tensor, sample_posterior: bool = False,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstruct: encode, take the posterior mode (or a sample), decode. Output in [-1, 1]."""
        posterior = self.encode(images)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z)

    # ---- helpers -----------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def trainable_parameters(self):
        """Everything but the frozen VFM."""
        return (p for n, p in self.named_parameters() if not n.startswith("vfm."))


def vfm_arch_of(vfm: FrozenVFM) -> dict[str, Any]:
    """The architecture config to store in `VFMVAEConfig.vfm_arch` for a loaded VFM."""
    cfg = getattr(vfm.model, "config", None)
    if cfg is not None and hasattr(cfg, "to_diff_dict"):
        # Only what differs from the family's defaults: compact, and it survives the JSON round trip.
        arch = cfg.to_diff_dict()
        for key in ("transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype", "model_type"):
            arch.pop(key, None)
        return json.loads(json.dumps(arch))
    if vfm.name in VFM_REGISTRY:
        return dict(VFM_REGISTRY[vfm.name].arch)
    raise ValueError("cannot record the architecture of this VFM; use a registered name")


def build_vfm(cfg: VFMVAEConfig, seed: int = 0) -> FrozenVFM:
    """The VFM architecture of `cfg` with random weights (they are replaced by the checkpoint's)."""
    arch = dict(cfg.vfm_arch)
    if not arch:
        if cfg.vfm_name not in VFM_REGISTRY:
            raise ValueError(f"vfm_arch is empty and {cfg.vfm_name!r} is not a registered VFM")
        arch = dict(VFM_REGISTRY[cfg.vfm_name].arch)
    for key in ("model_type",):
        arch.pop(key, None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FAMILIES[cfg.vfm_family].build(arch)
    return FrozenVFM(model, cfg.vfm_family, name=cfg.vfm_name, layers=cfg.layers, scale_factor=cfg.scale_factor)


