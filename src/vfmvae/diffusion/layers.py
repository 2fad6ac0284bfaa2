"""Building blocks of the diffusion transformers (DiT / SiT / LightningDiT / REG).

Module and parameter names follow the published checkpoints (`x_embedder.proj`, `t_embedder.mlp.0`,
`blocks.{i}.adaLN_modulation.1`, ...) so that importing official weights is a checked rename, not a
re-layout. Every choice that changes numbers (normalisation eps, frequency layout, chunk order) is
stated where it is made; the parity tests in tests/test_diffusion_parity.py hold them to the originals.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "sincos_pos_embed_2d",
    "modulate",
    "RMSNorm",
    "make_norm",
    "TimestepEmbedder",
    "LabelEmbedder",
    "PatchEmbed",
    "RotaryEmbedding2D",
    "Attention",
    "SDPAProcessor",
    "MathProcessor",
    "GeluMlp",
    "SwiGLU",
]


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1, 1).double() * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """(grid*grid, dim) fixed 2D sin-cos embedding of the MAE/DiT recipe, computed in float64.

    Tokens are row-major; the first half of the channels encodes the column (x) coordinate and the second
    half the row (y) coordinate, which is what the DiT code produces from `meshgrid(w, h)`.
    """
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs a width divisible by 4, got {dim}")
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1).float()


def modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    x = x * (1 + scale.unsqueeze(1))
    return x if shift is None else x + shift.unsqueeze(1)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, the statistic taken in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def make_norm(kind: str, dim: int, *, affine: bool, eps: float = 1e-6) -> nn.Module:
    """`layernorm` (DiT/SiT: eps 1e-6, affine off in blocks) or `rmsnorm` (LightningDiT, always with a weight)."""
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=affine, eps=eps)
    raise ValueError(f"unknown norm {kind!r} (layernorm, rmsnorm)")


class TimestepEmbedder(nn.Module):
    """Scalar t -> 256 sinusoidal frequencies (cos first, max period 10^4) -> MLP with SiLU."""

    def __init__(self, hidden: int, frequency_dim: int = 256, max_period: float = 10000.0) -> None:
        super().__init__()
        self.frequency_dim, self.max_period = frequency_dim, max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def frequencies(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if self.frequency_dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.frequencies(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> vectors; label `num_classes` is the null class used for classifier-free guidance.

    Label dropout for classifier-free guidance is decided by the caller (the training step draws it with its
    other random draws) and passed as a boolean mask `drop`: a dropped label becomes the null class.
    """

    def __init__(self, num_classes: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + int(dropout > 0), hidden)

    def forward(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        if drop is not None:
            if self.dropout <= 0:
                raise ValueError("label dropout needs a model with a null class (class_dropout > 0)")
            labels = torch.where(drop.to(labels.device), torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, D) with a strided convolution (timm's PatchEmbed layout)."""

    def __init__(self, in_channels: int, hidden: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class RotaryEmbedding2D(nn.Module):
    """2D rotary position embedding of LightningDiT (EVA-02's `VisionRotaryEmbeddingFast`).

    Half of each head's channels rotate with the row index and half with the column index; within each
    half, frequencies theta^(-2i/d) are repeated for adjacent channel pairs, and pairs (2i, 2i+1) are
    rotated together. Positions run over the token grid the model was built for.
    """

    def __init__(self, head_dim: int, grid: int, theta: float = 10000.0) -> None:
        super().__init__()
        half = head_dim // 2
        freqs = 1.0 / theta ** (torch.arange(0, half, 2)[: half // 2].float() / half)
        # (i / L) * L in float32, as the original computes it (not exactly i for some grid sizes)
        pos = torch.arange(grid, dtype=torch.float32) / grid * grid
        angles = torch.einsum("i,f->if", pos, freqs).repeat_interleave(2, dim=-1)  # (grid, half)
        rows = angles[:, None, :].expand(grid, grid, half)
        cols = angles[None, :, :].expand(grid, grid, half)
        table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
        self.register_buffer("cos", table.cos(), persistent=False)
        self.register_buffer("sin", table.sin(), persistent=False)

    @staticmethod
    def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
        pairs = x.unflatten(-1, (-1, 2))
        return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, heads, N, head_dim) with N = grid^2."""
        # the tables in x's precision: a float32 table would promote q and k (but not v) of a half model
        return x * self.cos.to(x.dtype) + self._rotate_pairs(x) * self.sin.to(x.dtype)


class SDPAProcessor:
    """The default attention computation: PyTorch's fused `scaled_dot_product_attention` (flash kernels on CUDA).

    Processors follow diffusers' convention, `processor(attn, hidden_states) -> hidden_states`, so that
    `VFMVAETransformer2DModel.set_attn_processor` can swap them; they read q, k and v from `attn.heads_qkv`
    (our fused `qkv` projection, q/k norm and RoPE applied) and write through `attn.proj`."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        b, n, c = hidden_states.shape
        q, k, v = attn.heads_qkv(hidden_states)  # (B, heads, N, head_dim) each
        x = F.scaled_dot_product_attention(q, k, v)
        return attn.proj(x.transpose(1, 2).reshape(b, n, c))


class MathProcessor:
    """softmax(q k^T / sqrt(head_dim)) v written out, the scores in float32: a reference for the fused kernel."""

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        b, n, c = hidden_states.shape
        q, k, v = attn.heads_qkv(hidden_states)
        scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(attn.head_dim)  # (B, heads, N, N)
        x = (scores.softmax(dim=-1) @ v.float()).to(v.dtype)
        return attn.proj(x.transpose(1, 2).reshape(b, n, c))


# diffusers' plain attention processors (by class name: the core package does not import diffusers) -> ours
_DIFFUSERS_EQUIVALENTS = {"AttnProcessor": MathProcessor, "AttnProcessor2_0": SDPAProcessor}


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head q/k normalisation and 2D RoPE; the product itself is
    computed by a swappable processor (`SDPAProcessor` by default, diffusers' `set_processor` interface)."""

    def __init__(self, dim: int, heads: int, *, qk_norm: str = "none", rope: RotaryEmbedding2D | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        if qk_norm == "none":
            self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        else:  # per head over head_dim, shared by all heads; RMSNorm eps 1e-6, LayerNorm torch's default 1e-5
            eps = 1e-6 if qk_norm == "rmsnorm" else 1e-5
            self.q_norm = make_norm(qk_norm, self.head_dim, affine=True, eps=eps)
            self.k_norm = make_norm(qk_norm, self.head_dim, affine=True, eps=eps)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope
        self.processor = self._compute = SDPAProcessor()  # what get_processor returns / what runs

    def heads_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, N, C) -> q, k, v as (B, heads, N, head_dim), q and k normalised and rotated."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        return q, k, v

    def get_processor(self):
        return self.processor

    def set_processor(self, processor) -> None:
        """`processor(attn, hidden_states) -> hidden_states`. diffusers' plain processors compute what ours do and
        are run as ours (`AttnProcessor` as `MathProcessor`, `AttnProcessor2_0` as `SDPAProcessor`); its other
        processors (xformers, added KV, IP-adapter, ...) read separate `to_q`/`to_k`/`to_v` projections, which this
        layer does not have (its `qkv` is fused, as in the published checkpoints): they are refused here rather than
        failing at the first forward."""
        kind = type(processor)
        if kind.__module__.startswith("diffusers."):
            if kind.__name__ not in _DIFFUSERS_EQUIVALENTS:
                raise ValueError(
                    f"{kind.__name__} is a diffusers processor for layers with separate to_q/to_k/to_v projections; "
                    "this model's attention has one fused qkv projection. Use AttnProcessor2_0 or AttnProcessor, "
                    "vfmvae.diffusion.layers.SDPAProcessor (default) or MathProcessor, or a callable "
                    "processor(attn, hidden_states) that reads attn.heads_qkv(hidden_states)"
                )
            self._compute = _DIFFUSERS_EQUIVALENTS[kind.__name__]()
        elif callable(processor):
            self._compute = processor
        else:
            raise TypeError(f"an attention processor must be callable, got {kind.__name__}")
        self.processor = processor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compute(self, x)


class GeluMlp(nn.Module):
    """timm's Mlp with tanh-approximated GELU (DiT/SiT)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SwiGLU(nn.Module):
    """w3(silu(a) * b) with (a, b) = w12(x) split in halves (LightningDiT's fused SwiGLU FFN)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)
