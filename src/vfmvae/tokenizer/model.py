"""`VFMVAE`: the VFM-VAE tokenizer
(tianciB/VFM-VAE@b3a752a networks/generator.py `Generator`, networks/utils/ldm_utils.py `LDMAdapter`).

    images [0, 1] -> frozen VFM taps -> per-tap attention projection + pixel unshuffle -> concat ->
    attention projection -> [mean | logvar] -> DiagonalGaussian            (encode)
    z -> attention projection (decompress) -> Z; mapping(avgpool(Z)) -> w;
    synthesis(Z, w): six blocks with latent injection, modulated ConvNeXt layers, self-attention at the
    three coarsest blocks, x2 separable upsampling and a ToRGB of the accumulated skip features   (decode)

Everything is resolution-agnostic: a model built for 256 px encodes and decodes 512 px images.

`encode_moments` and `decode` return output dataclasses (`EncoderOutput`, `DecoderOutput`, as diffusers' autoencoders
do): the training extras (the VFM features, the lower-resolution outputs) are fields, not tuples behind a flag.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from vfmvae.checkpoint.pretrained import PretrainedMixin
from vfmvae.config import require_positive, yaml_flow
from vfmvae.limits import MAX_BLOCKS, MAX_IMAGE_SIDE, require_at_most
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
from vfmvae.vfm import FrozenVFM, VFMFeatures, VFMSpec, build_vfm

__all__ = ["VFMVAEConfig", "VFMVAE", "EncoderOutput", "DecoderOutput", "upgrade_flat_vfm_keys"]


_POSITIVE_SIZES = (
    "image_size",
    "downsample",
    "z_dim",
    "vocab_size",
    "vocab_width",
    "num_codebooks",
    "quant_layers",
    "post_quant_layers",
    "decompress_factor",
    "pooled_resolution",
    "w_dim",
    "attn_heads",
    "num_blocks",
    "channel_base",
    "channel_max",
)


@dataclass(frozen=True)
class VFMVAEConfig:
    """The tokenizer architecture. Defaults are the released f16d32 SigLIP2-L model at 256 px."""

    # frozen VFM (encoder): which VFM, its taps (patch_from_layers) and input scale; tap widths are the VFM's
    vfm: VFMSpec = field(default_factory=VFMSpec)
    proj_dims: tuple[int, ...] = (64, 64, 64)  # width of each tap after projection (patch_out_dimensions)
    # latent
    image_size: int = 256  # training resolution; fixes the grid ratios
    downsample: int = 16  # image / latent size (resolution_compression_factor)
    z_dim: int = 32  # continuous mode: latent channels
    compression: Literal["continuous", "discrete"] = "continuous"
    vocab_size: int = 32768  # discrete mode: codes over all codebooks
    vocab_width: int = 64  # discrete mode: latent channels
    num_codebooks: int = 8
    vq_beta: float = 0.25
    compress: Literal["attnproj", "conv"] = "attnproj"
    decompress: Literal["attnproj", "conv"] = "attnproj"
    quant_layers: int = 1
    post_quant_layers: int = 1
    decompress_factor: int = 16  # Z width = z_dim x decompress_factor
    vf_projection: bool = False  # 1x1 z -> VFM width, for the VF alignment loss
    # decoder
    pooled_resolution: int = 1
    w_dim: int = 512  # z_dim_for_mapping_mlp_output
    inject_blocks: tuple[int, ...] = (0, 1, 2, 3)  # Multi-Scale Latent Fusion targets
    inject_dims: tuple[int, ...] = (512, 256, 128, 128)
    attn_blocks: tuple[int, ...] = (0, 1, 2)
    attn_depths: tuple[int, ...] = (2, 2, 2)
    attn_heads: int = 8
    num_blocks: int = 6
    channel_base: int = 32768
    channel_max: int = 512
    num_res_blocks: int = 2
    extra_convnext: bool = True  # 3 ConvNeXt layers per group in blocks 0-3 (else 2)
    legacy_noise: bool = True  # the released weights need it; new models: False

    @staticmethod
    def retired_keys(data: dict[str, Any], prefix: str) -> dict[str, str]:
        """Format-1 keys of the VFM, refused in recipes with what to write instead (config.json files are upgraded)."""
        advice = {
            old: f"the VFM is described once; write {prefix}vfm.{new}: {yaml_flow(data[old])} instead"
            for old, (new, _) in _FLAT_VFM_KEYS.items()
            if old in data
        }
        if "layer_dims" in data:
            advice["layer_dims"] = "the tap widths are the VFM's own; delete it"
        return advice

    def __post_init__(self) -> None:
        # zero sizes would divide by zero below; the image size and block count are in no weight, so bounded
        require_positive(self, *_POSITIVE_SIZES)
        require_at_most(
            self,
            {
                "image_size": MAX_IMAGE_SIDE,
                "num_blocks": MAX_IMAGE_SIDE.bit_length(),  # 2^(num_blocks-1) must divide image_size
                "attn_depths": MAX_BLOCKS,
                "num_res_blocks": MAX_BLOCKS,
                "quant_layers": MAX_BLOCKS,
                "post_quant_layers": MAX_BLOCKS,
            },
        )
        for name in ("proj_dims", "inject_dims"):
            if any(dim < 1 for dim in getattr(self, name)):
                raise ValueError(f"{name} must be positive widths, got {getattr(self, name)}")
        if any(depth < 0 for depth in self.attn_depths) or self.num_res_blocks < 0:
            raise ValueError(
                f"attn_depths and num_res_blocks must be >= 0, got {self.attn_depths} and {self.num_res_blocks}"
            )
        for name in ("inject_blocks", "attn_blocks"):
            blocks = getattr(self, name)
            if any(not 0 <= block < self.num_blocks for block in blocks) or len(set(blocks)) != len(blocks):
                raise ValueError(
                    f"{name} {blocks} must name distinct blocks in 0..{self.num_blocks - 1} (num_blocks "
                    f"{self.num_blocks})"
                )
        if len(self.proj_dims) != len(self.vfm.layers):
            raise ValueError(
                f"proj_dims {self.proj_dims} must give one width per VFM tap (vfm.layers {self.vfm.layers})"
            )
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


@dataclass
class EncoderOutput:
    """What `VFMVAE.encode_moments` returns."""

    moments: torch.Tensor  # [mean | logvar] (B, 2 z_dim, h, w) before clamping; discrete: (B, vocab_width, h, w)
    vfm_features: VFMFeatures  # the frozen VFM's taps: the alignment target of the VF loss


@dataclass
class DecoderOutput:
    """What `VFMVAE.decode` returns."""

    sample: torch.Tensor  # (B, 3, H, W) in about [-1, 1] (not clamped, as the official)
    multiscale: list[torch.Tensor]  # the lower-resolution RGB outputs (B, 3, H / 2^k, W / 2^k), largest first


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
    def __init__(
        self, index: int, in_ch: int, out_ch: int, prev_ch: int | None, cfg: VFMVAEConfig, resolution: int
    ) -> None:
        super().__init__()
        kernel = 5 if index <= 1 else 7
        blur = 3 if index <= 2 else 5
        self.upsample = SeparableUpsample(in_ch, out_ch, blur, pre_normalize=index > 0)
        per_group = 3 if index <= 3 and cfg.extra_convnext else 2
        noise = 8 * 2**index if cfg.legacy_noise else None  # legacy buffers assume 256 px: 8, 16, ... 256
        self.layers = nn.ModuleList(
            ModulatedConvNeXtLayer(out_ch, cfg.w_dim, kernel, noise) for _ in range(1 + cfg.num_res_blocks * per_group)
        )
        depth = cfg.attn_depths[cfg.attn_blocks.index(index)] if index in cfg.attn_blocks else 0
        self.attns = nn.ModuleList(SelfAttentionBlock(out_ch, cfg.attn_heads) for _ in range(depth))
        self.skip_upsample = SeparableUpsample(prev_ch, out_ch, blur) if prev_ch is not None else None
        self.torgb = ModulatedToRGB(out_ch, cfg.w_dim)
        self.resolution = resolution

    def forward(self, x: torch.Tensor, x_sum: torch.Tensor | None, w: torch.Tensor):
        # x (B, C_in, R/2, R/2): the previous block's features (and the injected latent); w (B, w_dim)
        x = self.upsample(x)  # (B, C, R, R)
        for layer in self.layers:
            x = layer(x, w)  # (B, C, R, R), modulated by the global style w
        for attn in self.attns:
            x = attn(x)  # (B, C, R, R)
        # Progressive reconstruction: features (not RGB) are accumulated across blocks.
        x_sum = x if self.skip_upsample is None else self.skip_upsample(x_sum) + x  # (B, C, R, R)
        return x, x_sum, self.torgb(x_sum, w).float()  # ..., this block's image (B, 3, R, R)


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
        # Runtime switches, not part of the config: gradient checkpointing (diffusers' enable_gradient_checkpointing),
        # and `fp16_blocks`: the last blocks (and their latent injection) run under float16 autocast with float16
        # inputs, as the official `num_fp16_res` (run.precision: official).
        self.gradient_checkpointing = False
        self.fp16_blocks = 0

    def forward(self, z: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # z (B, Z, h, w) the decompressed latent; w (B, w_dim); block k works at R_k = R_0 x 2^k
        x = x_sum = None
        images = []
        first_fp16 = len(self.blocks) - self.fp16_blocks
        for idx, block in enumerate(self.blocks):
            half = idx >= first_fp16
            # (no autocast context at all in the other blocks: enabled=False would switch off a caller's bf16 autocast)
            with torch.autocast(z.device.type, dtype=torch.float16) if half else contextlib.nullcontext():
                if idx in self.inject_blocks:
                    injected = self.latent_convs[str(idx)](z)  # (B, inject_dim, R_k/2, R_k/2): the latent at this scale
                    x = injected if x is None else torch.cat([x, injected], dim=1)  # (B, C_{k-1} + inject_dim, ...)
                # official SynthesisBlock: the block's input in its own dtype (float16 in the float16 blocks)
                x = x.half() if half else x
                if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                    # recompute the block in backward: activation memory of one block instead of all
                    x, x_sum, image = torch.utils.checkpoint.checkpoint(block, x, x_sum, w, use_reentrant=False)
                else:
                    x, x_sum, image = block(x, x_sum, w)  # image (B, 3, R_k, R_k)
            images.append(image)  # float32 (the ToRGB output is cast back, as the official)
        return images[-1], images[-2::-1]  # main image, then the others largest first


class VFMVAE(PretrainedMixin, nn.Module):
    """The tokenizer. `encode` takes images in [0, 1]; `decode` returns images in [-1, 1]."""

    config_class = VFMVAEConfig
    format_version: ClassVar[int] = 2  # 2: the VFM as one `vfm` spec (1: flat vfm_name/vfm_family/vfm_arch/layers/...)
    frozen_prefix: ClassVar[str] = "vfm."  # the frozen VFM's weights: never trained, rebuilt from `config.vfm`

    def __init__(self, config: VFMVAEConfig, *, prebuilt_vfm: FrozenVFM | None = None) -> None:
        """The model `config` describes. Its frozen VFM is built from `config.vfm` (`build_vfm`: pretrained weights
        where the spec has them, random ones for `random_init` and test VFMs). `prebuilt_vfm` is a cache: a VFM
        already built from that spec (it is checked against it), handed in so that its weights are not loaded twice.

        `model.config` is `config`, with `config.vfm` completed from the VFM as built (family, architecture and
        input scale filled in) when the spec leaves them out: a saved folder rebuilds its VFM offline."""
        super().__init__()
        self.vfm = prebuilt_vfm if prebuilt_vfm is not None else build_vfm(config.vfm)
        _check_vfm_matches(self.vfm, config.vfm)
        self.config = cfg = replace(config, vfm=_completed_spec(config.vfm, self.vfm))
        grid = cfg.image_size * self.vfm.scale_factor / self.vfm.patch_size
        z_res = cfg.image_size // cfg.downsample
        if grid != int(grid) or int(grid) % z_res:
            raise ValueError(f"VFM token grid {grid} must be an integer multiple of the latent size {z_res}")
        self.unshuffle = int(grid) // z_res
        # encoder projections
        width = self.vfm.width  # every tap of a ViT has its width (patch_in_dimensions)
        if cfg.compress == "attnproj":
            self.patch_projs = nn.ModuleList(
                AttnProjection(width, o, max(1, width // o), cfg.quant_layers) for o in cfg.proj_dims
            )
        else:
            self.patch_projs = nn.ModuleList(nn.Conv2d(width, o, 1) for o in cfg.proj_dims)
        fused = sum(o * self.unshuffle**2 for o in cfg.proj_dims)
        zc = cfg.latent_channels
        moments = 2 * cfg.z_dim if cfg.compression == "continuous" else cfg.vocab_width
        self.final_proj = (
            AttnProjection(fused, moments, max(1, fused // moments), cfg.quant_layers)
            if cfg.compress == "attnproj"
            else nn.Conv2d(fused, moments, 1)
        )
        big_z = zc * cfg.decompress_factor
        self.post_proj = (
            AttnProjection(zc, big_z, max(1, cfg.decompress_factor), cfg.post_quant_layers, compress=False)
            if cfg.decompress == "attnproj"
            else nn.Conv2d(zc, big_z, 1)
        )
        self.quantizer = (
            MultiCodebookQuantizer(cfg.vocab_size, cfg.vocab_width, cfg.num_codebooks, cfg.vq_beta)
            if cfg.compression == "discrete"
            else None
        )
        self.vf_proj = None
        if cfg.vf_projection:  # 1x1 z -> VFM width for the VF alignment loss, initialised as the official
            self.vf_proj = nn.Conv2d(zc, width, 1, bias=False)
            nn.init.xavier_normal_(self.vf_proj.weight, gain=0.5)
        # decoder
        self.mapping = _Mapping(big_z * cfg.pooled_resolution**2, cfg.w_dim)
        self.synthesis = _Synthesis(cfg)

    @classmethod
    def build_for_loading(cls, config: VFMVAEConfig) -> VFMVAE:
        """The model a folder's weights are loaded into (`from_pretrained`): the folder holds the VFM's weights too,
        so the VFM's architecture is built with random weights, without reading its own weights source."""
        return cls(config, prebuilt_vfm=build_vfm(replace(config.vfm, random_init=True)))

    # ---- encoder ----------------------------------------------------------------------------------------
    def encode_moments(self, images: torch.Tensor, extra_scale: float = 1.0) -> EncoderOutput:
        """images float (B, 3, H, W) in [0, 1] -> [mean | logvar] before clamping, with the VFM features."""
        feats = self.vfm(images, extra_scale=extra_scale)
        return EncoderOutput(moments=self._encode_tokens(feats), vfm_features=feats)

    def _encode_tokens(self, feats) -> torch.Tensor:
        gh, gw = feats.grid
        if gh % self.unshuffle or gw % self.unshuffle:
            raise ValueError(
                f"VFM grid {feats.grid} is not divisible by the unshuffle factor {self.unshuffle}; "
                f"use an image size that is a multiple of {self.config.downsample}"
            )
        parts = []
        dtype = next(self.final_proj.parameters()).dtype  # the VFM returns float32; a half tokenizer takes its own
        for tokens, proj in zip((t.to(dtype) for t in feats.tokens), self.patch_projs):  # tokens (B, gh*gw, D_vfm)
            if isinstance(proj, nn.Conv2d):
                maps = proj(tokens.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw))  # (B, proj_dim, gh, gw)
                tokens = maps.flatten(2).transpose(1, 2)
            else:
                tokens = proj(tokens)  # (B, gh*gw, proj_dim)
            # (B, h*w, proj_dim * unshuffle^2): neighbouring tokens folded into channels, h = gh / unshuffle
            parts.append(tokens_unshuffle(tokens, (gh, gw), self.unshuffle))
        h, w = gh // self.unshuffle, gw // self.unshuffle
        x = torch.cat(parts, dim=-1)  # (B, h*w, fused)
        if isinstance(self.final_proj, nn.Conv2d):
            return self.final_proj(x.transpose(1, 2).reshape(x.shape[0], -1, h, w))
        x = self.final_proj(x)  # (B, h*w, 2 z_dim)
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def encode(self, images: torch.Tensor) -> DiagonalGaussian | QuantizedLatent:
        """images: float (B, 3, H, W) in [0, 1], H and W multiples of `downsample`.

        Continuous mode: the diagonal Gaussian posterior. Discrete mode: the quantised latent (same API).
        """
        moments = self.encode_moments(images).moments
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

    def decode(self, z: torch.Tensor) -> DecoderOutput:
        """z (B, z_dim, h, w) -> the image (B, 3, 16h, 16w) in about [-1, 1] (no clamp, as the official) and the
        lower-resolution outputs of the synthesis blocks."""
        step = self.synthesis.latent_multiple
        if z.shape[-2] % step or z.shape[-1] % step:
            raise ValueError(
                f"latent size {tuple(z.shape[-2:])} must be a multiple of {step} for this decoder "
                f"(its coarsest block unshuffles the latent by {step})"
            )
        big = self.decompress(z)  # (B, z_dim x decompress_factor, h, w)
        pooled = F.adaptive_avg_pool2d(big, self.config.pooled_resolution).flatten(1)  # (B, Z x pooled^2)
        w = self.mapping(pooled)  # (B, w_dim): the global style
        image, multiscale = self.synthesis(big, w)  # (B, 3, 16h, 16w), [(B, 3, 8h, 8w), (B, 3, 4h, 4w), ...]
        return DecoderOutput(sample=image, multiscale=multiscale)

    def forward(
        self, images: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reconstruct: encode, take the posterior mode (or a sample), decode. Output in [-1, 1]."""
        posterior = self.encode(images)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z).sample

    # ---- helpers -----------------------------------------------------------------------------------------
    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def trainable_parameters(self):
        """Everything but the frozen VFM."""
        return (p for n, p in self.named_parameters() if not n.startswith(self.frozen_prefix))

    def state_dict_without_vfm(self) -> dict[str, torch.Tensor]:
        """The weights but the frozen VFM's: what training checkpoints and stage hand-offs store (the VFM is rebuilt
        from `config.vfm`; checkpoints need not repeat ~300M frozen parameters)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(self.frozen_prefix)}

    @classmethod
    def upgrade_config(cls, config: dict[str, Any], version: int) -> dict[str, Any]:
        """A `config.json` of an older format version, in today's shape (the folder itself is not rewritten)."""
        return upgrade_flat_vfm_keys(config) if version < 2 else config


def _completed_spec(spec: VFMSpec, vfm: FrozenVFM) -> VFMSpec:
    """`spec` as recorded in a tokenizer's config: as it is when it names family, architecture and scale (a saved
    folder's), else filled in from the VFM built from it (a recipe's registry name or weights folder)."""
    if spec.family is not None and spec.arch and spec.scale_factor is not None:
        return spec
    return replace(vfm.spec, random_init=spec.random_init)


def _check_vfm_matches(vfm: FrozenVFM, spec: VFMSpec) -> None:
    """A VFM handed to the constructor must be the one the config describes (one description, no silent override)."""
    expected = {"family": spec.family, "layers": tuple(spec.layers), "scale_factor": spec.scale_factor}
    found = {"family": vfm.family, "layers": tuple(vfm.layers), "scale_factor": vfm.scale_factor}
    wrong = [f"{k} {found[k]!r} (config: {v!r})" for k, v in expected.items() if v is not None and found[k] != v]
    if wrong:
        raise ValueError(
            f"the VFM given to VFMVAE does not match config.vfm: {', '.join(wrong)}; build it with "
            "build_vfm(config.vfm)"
        )


# format version 1 (flat keys; their defaults then) -> the `vfm` spec
_FLAT_VFM_KEYS = {
    "vfm_name": ("name", "siglip2-large-patch16-512"),
    "vfm_family": ("family", "siglip"),
    "vfm_arch": ("arch", {}),
    "layers": ("layers", [0, 12, -1]),
    "scale_factor": ("scale_factor", 2.0),
}


def upgrade_flat_vfm_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer config of format version 1 (the VFM as flat `vfm_name`, `vfm_family`, `vfm_arch`, `layers`,
    `scale_factor` and `layer_dims` keys) as today's `VFMVAEConfig` dict; other configs are returned unchanged.

    `layer_dims` is dropped: the tap widths are the VFM's (the weights' shapes still check them on load).
    """
    if "vfm" in config or not any(k in config for k in (*_FLAT_VFM_KEYS, "layer_dims")):
        return config
    new = {k: v for k, v in config.items() if k not in _FLAT_VFM_KEYS and k != "layer_dims"}
    new["vfm"] = {ours: config.get(old, default) for old, (ours, default) in _FLAT_VFM_KEYS.items()}
    return new
