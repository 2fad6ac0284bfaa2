"""Building blocks of the VFM-VAE tokenizer
(tianciB/VFM-VAE@b3a752a networks/utils/convnext_utils.py, gigagan_utils.py, ldm_utils.py).

Plain PyTorch with SDPA attention; no custom CUDA ops. Parameter names follow the official modules where
that keeps the checkpoint converter simple (`convert.py` holds the complete key map).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AttnProjection",
    "tokens_unshuffle",
    "EqualizedLinear",
    "StyleSplit",
    "ModulatedConvNeXtLayer",
    "ModulatedToRGB",
    "SeparableUpsample",
    "SelfAttentionBlock",
    "LatentInjection",
    "normalize_2nd_moment",
]


# ---------------------------------------------------------------------------------------------------------
# Encoder side: attention projections (UniTok-style) that compress VFM tokens
# ---------------------------------------------------------------------------------------------------------


class _ProjAttention(nn.Module):
    """Attention whose output width differs from its input width.

    Down-projecting (in > out): heads of width in/H are averaged into one (B, N, in/H) map (pooled to
    `out` if needed). Up-projecting (in <= out): the usual multi-head attention at width `out`.
    q and v have learned biases, k has none (the official zero k-bias buffer).
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int) -> None:
        super().__init__()
        self.down = in_dim > out_dim
        inner = in_dim if self.down else out_dim
        self.in_dim, self.out_dim, self.num_heads = in_dim, out_dim, num_heads
        self.head_dim = inner // num_heads
        self.qkv = nn.Linear(in_dim, 3 * inner, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(inner))
        self.v_bias = nn.Parameter(torch.zeros(inner))
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, hd) each
        out = F.scaled_dot_product_attention(q, k, v)
        if self.down:
            out = out.mean(dim=1)  # (B, N, hd): heads averaged
            if self.head_dim != self.out_dim:
                out = F.adaptive_avg_pool1d(out, self.out_dim)
        else:
            out = out.transpose(1, 2).reshape(b, n, -1)  # (B, N, out)
        return self.proj(out)


class _GeGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.w0 = nn.Linear(dim, hidden)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.w2(F.gelu(self.w0(x), approximate="tanh") * self.w1(x))


class _AttnProjectionBlock(nn.Module):
    """y = Linear(LN(x)) + Attn(LN(x)); y = y + GeGLU(LN(y))  (the GeGLU applies its own LN again)."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = _ProjAttention(in_dim, out_dim, num_heads)
        self.norm3 = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm2 = nn.LayerNorm(out_dim)
        self.mlp = _GeGLU(out_dim, int(out_dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.norm3(x)) + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AttnProjection(nn.Module):
    """`num_layers` projection blocks; compressing stacks change width in the last block, expanding in the first."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int, num_layers: int = 1, compress: bool = True) -> None:
        super().__init__()
        if in_dim % out_dim and out_dim % in_dim:
            raise ValueError(f"attention projection {in_dim} -> {out_dim}: one width must divide the other")
        dims = [in_dim] * num_layers + [out_dim] if compress else [in_dim] + [out_dim] * num_layers
        self.blocks = nn.ModuleList(_AttnProjectionBlock(dims[i], dims[i + 1], num_heads) for i in range(num_layers))
        _init_projection(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _init_projection(module: nn.Module) -> None:
    """Official init for the projections: trunc-normal(0.02) linears, zero biases, unit norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.xavier_normal_(m.weight, gain=0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def tokens_unshuffle(tokens: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """(B, H*W, C) row-major tokens -> PixelUnshuffle(factor) -> (B, H*W/f^2, C*f^2) tokens."""
    if factor == 1:
        return tokens
    b, n, c = tokens.shape
    h, w = grid
    x = tokens.transpose(1, 2).reshape(b, c, h, w)
    x = F.pixel_unshuffle(x, factor)
    return x.flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------
# Decoder side
# ---------------------------------------------------------------------------------------------------------


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualizedLinear(nn.Module):
    """StyleGAN's equalised-learning-rate linear layer: raw N(0, 1/lr^2) weights, scaled at run time.

    Kept (instead of folding the scales) because the scaling sets the effective learning rate under Adam
    (the mapping network trains at 1/100 of the base rate).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
        activation: str = "linear",
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight.to(x.dtype) * self.weight_gain, self.bias.to(x.dtype) * self.bias_gain)
        return F.leaky_relu(x, 0.2) if self.activation == "lrelu" else x  # no sqrt(2) gain, as the official


class StyleSplit(nn.Module):
    """w -> (m1, m2, m3) -> m1 * m2 + m3: a per-channel style (bias init 1 makes it start near 2)."""

    def __init__(self, w_dim: int, channels: int) -> None:
        super().__init__()
        self.proj = EqualizedLinear(w_dim, 3 * channels, bias_init=1.0)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        m1, m2, m3 = self.proj(w).chunk(3, dim=1)
        return m1 * m2 + m3


class _GroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` without `F.group_norm`'s batch-size check.

    The check refuses a batch of one image when a group holds a single value (the tiny official-format
    tokenizer's coarsest latent injection: a 1 x 1 map in 32 groups of one channel), although the statistics are
    per image: that value normalises to 0 and the output is the bias, which is what every image of a larger batch
    gets too (the official `nn.GroupNorm` crashes there at batch 1 and gives the bias from batch 2 on).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, torch.backends.cudnn.enabled)


class _GroupNorm32(_GroupNorm):
    """GroupNorm computed in at least float32 (the official `GroupNorm32`), whatever the activation dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return super().forward(x)
        # weights too in float32: a model cast to fp16/bf16 as a whole (diffusers' torch_dtype) holds half weights
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        normed = torch.group_norm(x.float(), self.num_groups, weight, bias, self.eps, torch.backends.cudnn.enabled)
        return normed.to(x.dtype)


class ModulatedConvNeXtLayer(nn.Module):
    """x + gamma * PW2(GELU(ModPW1(GN(DW(x) [+ legacy noise]), style(w))))  (official `ConvNeXtSynthesisLayer`).

    The modulated 1x1 conv uses scale-conv-demodulate (no grouped conv with B groups).
    """

    def __init__(self, channels: int, w_dim: int, kernel_size: int, legacy_noise_size: int | None = None) -> None:
        super().__init__()
        self.affine_pw1 = StyleSplit(w_dim, channels)
        self.dwconv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        nn.init.trunc_normal_(self.dwconv.weight, std=0.02)
        nn.init.zeros_(self.dwconv.bias)
        if legacy_noise_size is not None:
            # A fixed random map times a learned strength: kept only to load the released weights.
            self.register_buffer("noise_const", torch.randn(legacy_noise_size, legacy_noise_size))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.norm = _GroupNorm32(min(32, channels // 4), channels)
        self.pw1_weight = nn.Parameter(torch.empty(4 * channels, channels, 1, 1))
        nn.init.trunc_normal_(self.pw1_weight, std=0.02)
        self.pw1_bias = nn.Parameter(torch.zeros(1, 4 * channels, 1, 1))
        self.pwconv2 = nn.Conv2d(4 * channels, channels, 1)
        nn.init.trunc_normal_(self.pwconv2.weight, std=0.02)
        nn.init.zeros_(self.pwconv2.bias)
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), 1e-5))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.affine_pw1(w)  # (B, C)
        h = self.dwconv(x)
        if hasattr(self, "noise_const"):
            noise = (self.noise_const * self.noise_strength)[None, None]
            h = h + F.interpolate(noise, size=h.shape[-2:], mode="bilinear", align_corners=False)
        h = self.norm(h)
        weight = self.pw1_weight.squeeze(-1).squeeze(-1)  # (4C, C)
        demod = (style.square() @ weight.square().t() + 1e-8).rsqrt()  # (B, 4C): sum_i (W_oi s_bi)^2
        h = F.conv2d(h * style[:, :, None, None].to(h.dtype), self.pw1_weight)
        h = h * demod[:, :, None, None].to(h.dtype) + self.pw1_bias
        h = self.pwconv2(F.gelu(h))
        return x + self.gamma * h


class ModulatedToRGB(nn.Module):
    """1x1 conv modulated per sample by style(w) / sqrt(C), no demodulation, plus a bias
    (official `ConvNeXtToRGBLayer`)."""

    def __init__(self, channels: int, w_dim: int, out_channels: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, channels, 1, 1) * 0.1)
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.affine = StyleSplit(w_dim, channels)
        self.weight_gain = 1.0 / math.sqrt(channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.affine(w) * self.weight_gain
        return F.conv2d(x * style[:, :, None, None].to(x.dtype), self.weight) + self.bias


_BINOMIAL = {3: (1.0, 2.0, 1.0), 5: (1.0, 4.0, 6.0, 4.0, 1.0)}


class SeparableUpsample(nn.Module):
    """x2 upsampling: [GN] -> depthwise 3x3 -> 1x1 to 4*Cout -> PixelShuffle(2) -> [GN] -> fixed binomial blur.

    `pre_normalize` puts the GroupNorm first (every upsampler but block 0's main path). The blur is a
    normalised separable binomial kernel (3 or 5 taps) with replicate padding
    (official `SeparableUpsampleWithFixedBlur`).
    """

    def __init__(self, in_channels: int, out_channels: int, blur_size: int, pre_normalize: bool = True) -> None:
        super().__init__()
        self.pre_normalize = pre_normalize
        norm_channels = in_channels if pre_normalize else out_channels
        self.norm = _GroupNorm(min(32, norm_channels // 4), norm_channels)
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, 4 * out_channels, 1, bias=False)
        taps = torch.tensor(_BINOMIAL[blur_size])
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer(
            "blur", (kernel / kernel.sum()).expand(out_channels, 1, blur_size, blur_size).clone(), persistent=False
        )
        self.pad = blur_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_normalize:
            x = self.norm(x)
        x = F.pixel_shuffle(self.pointwise(self.depthwise(x)), 2)
        if not self.pre_normalize:
            x = self.norm(x)
        x = F.pad(x, (self.pad,) * 4, mode="replicate")
        return F.conv2d(x, self.blur.to(x.dtype), groups=x.shape[1])


class _ChannelRMSNorm(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = channels**0.5
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class _SelfAttention(nn.Module):
    """GigaGAN-style attention on feature maps with one learned null key/value per head."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads, head_dim = heads, channels // heads
        self.norm = _ChannelRMSNorm(channels)
        self.to_q = nn.Conv2d(channels, channels, 1, bias=False)
        self.to_k = nn.Conv2d(channels, channels, 1, bias=False)
        self.to_v = nn.Conv2d(channels, channels, 1, bias=False)
        self.null_kv = nn.Parameter(torch.randn(2, heads, head_dim) * 0.02)
        self.to_out = nn.Conv2d(channels, channels, 1, bias=False)
        nn.init.zeros_(self.to_out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = self.norm(x)

        def heads(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, heads, HW, d)
            return t.reshape(b, self.heads, c // self.heads, h * w).transpose(2, 3)

        q, k, v = heads(self.to_q(x)), heads(self.to_k(x)), heads(self.to_v(x))
        null_k, null_v = (t[None, :, None, :].expand(b, -1, -1, -1).to(x.dtype) for t in self.null_kv)
        out = F.scaled_dot_product_attention(q, torch.cat([null_k, k], 2), torch.cat([null_v, v], 2))
        return self.to_out(out.transpose(2, 3).reshape(b, c, h, w))


class _FeedForward(nn.Module):
    def __init__(self, channels: int, mult: int) -> None:
        super().__init__()
        self.norm = _ChannelRMSNorm(channels)
        self.fc1 = nn.Conv2d(channels, channels * mult, 1)
        self.fc2 = nn.Conv2d(channels * mult, channels, 1)
        nn.init.zeros_(self.fc2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class SelfAttentionBlock(nn.Module):
    def __init__(self, channels: int, heads: int = 8, ff_mult: int = 4) -> None:
        super().__init__()
        self.attn = _SelfAttention(channels, heads)
        self.ff = _FeedForward(channels, ff_mult)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ff(x)


class LatentInjection(nn.Module):
    """Multi-Scale Latent Fusion (paper Sec. 3; official `z_convs` in networks/generator.py): the decompressed
    latent brought to a block's input grid.

    `factor` > 1 pixel-unshuffles first (coarser grid), < 1 pixel-shuffles after the first conv (finer
    grid), 1 keeps the grid. Then dw3x3 -> 1x1 -> GN -> LeakyReLU(0.2) and 1x1 -> GN.
    """

    def __init__(self, in_channels: int, out_channels: int, unshuffle: int = 1, shuffle: int = 1) -> None:
        super().__init__()
        self.unshuffle, self.shuffle = unshuffle, shuffle
        cin = in_channels * unshuffle**2
        mid = out_channels * shuffle**2
        self.dw = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.norm = _GroupNorm32(min(32, mid), mid)
        self.out_pw = nn.Conv2d(out_channels, out_channels, 1, bias=False)
        self.out_norm = _GroupNorm32(min(32, out_channels), out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            z = F.pixel_unshuffle(z, self.unshuffle)
        z = F.leaky_relu(self.norm(self.pw(self.dw(z))), 0.2)
        if self.shuffle > 1:
            z = F.pixel_shuffle(z, self.shuffle)
        return self.out_norm(self.out_pw(z))
