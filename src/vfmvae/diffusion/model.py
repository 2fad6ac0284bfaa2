"""`DiffusionTransformer`: one class for DiT/SiT, LightningDiT and REG's SiT, switched by its config.

The three published families differ only in block flavour (norm, MLP, q/k norm, RoPE, shift-free
adaLN), in their alignment heads (REPA projectors reading block `align_depth`; REG's extra class token)
and in the time convention their weights were trained with. The model's public `forward` always speaks
the package's convention (see `vfmvae.diffusion.transport`): t = 0 is data, t = 1 is noise, and the output
is the velocity d x_t / d t = noise - data. Weights trained with LightningDiT's opposite convention
(`time_convention="data_at_1"`) are wrapped: the network sees 1 - t and its output is negated.
`forward_native` runs the network exactly as its original code does (used by the parity tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.utils.checkpoint
from torch import nn

from vfmvae.checkpoint import PretrainedMixin
from vfmvae.config import require_positive
from vfmvae.diffusion.layers import (
    Attention,
    GeluMlp,
    LabelEmbedder,
    PatchEmbed,
    RotaryEmbedding2D,
    SwiGLU,
    TimestepEmbedder,
    make_norm,
    modulate,
    sincos_pos_embed_2d,
)
from vfmvae.limits import MAX_BLOCKS, MAX_LATENT_SIDE, require_at_most

__all__ = ["DiTConfig", "DiTOutput", "DiffusionTransformer"]


_MAY_BE_ZERO = ("num_classes", "projector_dim", "class_token_dim", "align_depth")  # 0 = none / off


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of a class-conditional diffusion transformer on latents."""

    input_size: int = 16  # latent height = width
    in_channels: int = 32
    patch_size: int = 1
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout: float = 0.1  # label dropout for classifier-free guidance (0 = no null class)
    learn_sigma: bool = False  # extra output channels of old checkpoints (ignored at use)
    # block flavour: DiT/SiT = layernorm/gelu/none/no rope; LightningDiT = rmsnorm/swiglu/rmsnorm/rope
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    mlp: Literal["gelu", "swiglu"] = "gelu"
    qk_norm: Literal["none", "layernorm", "rmsnorm"] = "none"
    rope: bool = False
    wo_shift: bool = False  # adaLN with scale and gate only (LightningDiT option)
    # alignment heads (REPA / REG)
    align_depth: int = 0  # projectors read the output of this block (1-based); 0 = none
    projector_dim: int = 2048
    align_dims: tuple[int, ...] = ()  # one projector per target feature width (e.g. 768 for DINOv2-B)
    class_token_dim: int = 0  # REG: width of the VFM class token entangled as an extra token
    time_convention: Literal["noise_at_1", "data_at_1"] = "noise_at_1"

    def __post_init__(self) -> None:
        # zero sizes would divide by zero below; the latent grid is in no weight (pos_embed is rebuilt), so bounded
        require_positive(
            self, "input_size", "in_channels", "patch_size", "hidden_size", "depth", "num_heads", "mlp_ratio"
        )
        require_positive(
            self, "num_classes", "projector_dim", "class_token_dim", "align_depth", allow_zero=_MAY_BE_ZERO
        )
        require_at_most(self, {"input_size": MAX_LATENT_SIDE, "depth": MAX_BLOCKS})
        if any(dim < 1 for dim in self.align_dims):
            raise ValueError(f"align_dims must be positive widths, got {self.align_dims}")
        if not 0 <= self.class_dropout < 1:
            raise ValueError(f"class_dropout must be in [0, 1), got {self.class_dropout}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.align_dims and not 1 <= self.align_depth <= self.depth:
            raise ValueError(f"align_depth must be in 1..{self.depth} when align_dims are set, got {self.align_depth}")
        if self.class_token_dim and self.rope:
            raise ValueError("class_token_dim (REG) is not supported together with rope")

    @property
    def grid(self) -> int:
        return self.input_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.hidden_size * self.mlp_ratio)
        return int(2 / 3 * hidden) if self.mlp == "swiglu" else hidden


@dataclass
class DiTOutput:
    sample: torch.Tensor  # velocity (B, C, H, W) in the package convention
    cls: torch.Tensor | None = None  # REG: velocity of the class token (B, class_token_dim)
    projected: list[torch.Tensor] | None = None  # REPA/REG: projector outputs (B, tokens, align_dim)
    hidden: dict[int, torch.Tensor] | None = None  # requested block outputs (B, tokens, hidden); 0 = embedder


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig, rope: RotaryEmbedding2D | None) -> None:
        super().__init__()
        d = cfg.hidden_size
        affine = cfg.norm == "rmsnorm"  # LayerNorms carry no affine parameters in adaLN blocks
        self.norm1 = make_norm(cfg.norm, d, affine=affine)
        self.attn = Attention(d, cfg.num_heads, qk_norm=cfg.qk_norm, rope=rope)
        self.norm2 = make_norm(cfg.norm, d, affine=affine)
        self.mlp = SwiGLU(d, cfg.mlp_hidden) if cfg.mlp == "swiglu" else GeluMlp(d, cfg.mlp_hidden)
        self.wo_shift = cfg.wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, (4 if cfg.wo_shift else 6) * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x (N, T, D) tokens, c (N, D) conditioning; each modulation below is (N, D)
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=-1)
            shift_msa = shift_mlp = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (N, T, D)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # (N, T, D)


class FinalLayer(nn.Module):
    """adaLN-modulated norm, then a linear to patch pixels. REG also reads its class token from the same modulated
    norm through `linear_cls`."""

    def __init__(self, cfg: DiTConfig, out_channels: int) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.norm_final = make_norm(cfg.norm, d, affine=cfg.norm == "rmsnorm")
        self.linear = nn.Linear(d, cfg.patch_size**2 * out_channels)
        self.linear_cls = nn.Linear(d, cfg.class_token_dim) if cfg.class_token_dim else None
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # (N, D) each
        h = modulate(self.norm_final(x), shift, scale)  # (N, T, D)
        if self.linear_cls is None:
            return self.linear(h), None  # (N, T, p * p * C)
        return self.linear(h[:, 1:]), self.linear_cls(h[:, 0])  # (N, T - 1, p * p * C), (N, class_token_dim)


def _checkpoint(block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)


def _projector(hidden: int, width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, out))


class DiffusionTransformer(PretrainedMixin, nn.Module):
    config_class = DiTConfig

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        cfg = self.config = config
        d = cfg.hidden_size
        self.out_channels = cfg.in_channels * (2 if cfg.learn_sigma else 1)
        self.x_embedder = PatchEmbed(cfg.in_channels, d, cfg.patch_size)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d, cfg.class_dropout)
        pos = sincos_pos_embed_2d(d, cfg.grid)
        if cfg.class_token_dim:  # REG: the noisy VFM class token -> Linear -> LayerNorm, first, at a zero position
            pos = torch.cat([torch.zeros(1, d), pos])
            self.cls_projectors2 = nn.Linear(cfg.class_token_dim, d)
            self.wg_norm = nn.LayerNorm(d, eps=1e-6)
        # fixed, not trained and not saved: rebuilt from the config on load
        self.register_buffer("pos_embed", pos[None], persistent=False)
        rope = RotaryEmbedding2D(d // cfg.num_heads, cfg.grid) if cfg.rope else None
        self.blocks = nn.ModuleList([Block(cfg, rope) for _ in range(cfg.depth)])
        self.projectors = nn.ModuleList([_projector(d, cfg.projector_dim, dim) for dim in cfg.align_dims])
        self.final_layer = FinalLayer(cfg, self.out_channels)
        self.gradient_checkpointing = False  # a runtime switch (run.gradient_checkpointing), not part of the config
        self.initialize_weights()

    # ------------------------------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        """DiT's init: Xavier linears, N(0, 0.02) label and time embeddings, zero adaLN and output layers."""

        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(basic)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        final = self.final_layer
        for layer in (final.adaLN_modulation[-1], final.linear, final.linear_cls):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    @property
    def num_tokens(self) -> int:
        return self.config.grid**2

    def unpatchify(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """(N, T, p * p * C) patch tokens -> (N, C, H, W) with H = W = grid x p."""
        p, g = self.config.patch_size, self.config.grid
        x = x.reshape(x.shape[0], g, g, p, p, channels)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], channels, g * p, g * p)

    # ------------------------------------------------------------------------------------------------
    def forward_native(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cls: torch.Tensor | None = None,
        *,
        drop_labels: torch.Tensor | None = None,
        hidden_at: Sequence[int] = (),
    ) -> DiTOutput:
        """The network in its own time convention; output in its own sign. `drop_labels` (B,) bool: labels to
        replace by the null class (label dropout, drawn by the caller)."""
        cfg = self.config
        if x.shape[1:] != (cfg.in_channels, cfg.input_size, cfg.input_size):
            raise ValueError(
                f"expected latents (B, {cfg.in_channels}, {cfg.input_size}, {cfg.input_size}), got {tuple(x.shape)}"
            )
        tokens = self.x_embedder(x)  # (N, T, D), T = grid^2
        if cfg.class_token_dim:
            if cls is None:
                raise ValueError("this model (REG) needs the noisy class token `cls` (B, class_token_dim)")
            # REG: the class token first, (N, 1 + T, D)
            tokens = torch.cat([self.wg_norm(self.cls_projectors2(cls)).unsqueeze(1), tokens], dim=1)
        h = tokens + self.pos_embed.to(tokens.dtype)  # (N, T, D)
        c = self.t_embedder(t.expand(x.shape[0]) if t.ndim == 0 else t) + self.y_embedder(y, drop_labels)  # (N, D)
        projected, hidden = None, {}
        if 0 in hidden_at:
            hidden[0] = h
        for i, block in enumerate(self.blocks, start=1):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                # recompute the block in backward: activation memory of one block instead of all (single-GPU XL);
                # diffusers' enable_gradient_checkpointing(func) may set its own function
                recompute = getattr(self, "_gradient_checkpointing_func", None) or _checkpoint
                h = recompute(block, h, c)
            else:
                h = block(h, c)
            if i in hidden_at:
                hidden[i] = h
            if i == cfg.align_depth and len(self.projectors):
                projected = [proj(h) for proj in self.projectors]  # [(N, T, align_dim)]: REPA/REG targets' shape
        patches, cls_out = self.final_layer(h, c)  # (N, T, p * p * out_channels)
        out = self.unpatchify(patches, self.out_channels)[:, : cfg.in_channels]  # (N, C, H, W), learn_sigma dropped
        return DiTOutput(out, cls_out, projected, hidden or None)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cls: torch.Tensor | None = None,
        **kwargs,
    ) -> DiTOutput:
        """Velocity in the package convention (t = 0 data, t = 1 noise)."""
        if self.config.time_convention == "noise_at_1":
            return self.forward_native(x, t, y, cls, **kwargs)
        out = self.forward_native(x, 1 - t, y, cls, **kwargs)
        out.sample = -out.sample
        if out.cls is not None:
            out.cls = -out.cls
        return out
