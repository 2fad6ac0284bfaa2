"""FLOPs of one diffusion training step per latent, counted from the architecture, against torch's count.

    python flops.py --arch lightningdit-xl/1          # the MFU numerator of docs/benchmarks.md, term by term
    python flops.py --arch reg-sit-xl/1 --check       # and torch's FlopCounterMode on CPU, for comparison

A multiply-add is 2 FLOPs. Training = forward + backward; backward costs two matmuls per forward matmul (the
input's and the weight's gradient), except where the input needs no gradient (the latent patch embedding, the
timestep MLP's first layer, REG's class-token projection): there only the weight's. Elementwise work (norms,
activations, RoPE, the loss) is left out, as MFU conventionally does.

torch's FlopCounterMode misses attention on CPU (its CPU flash kernel is not registered), so `count_flops` in
common.py counts with the math SDPA backend, which decomposes attention into counted matmuls.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["DiTFlops", "dit_training_flops"]


@dataclass(frozen=True)
class DiTFlops:
    """Forward FLOPs per latent by part, and the training total (forward + backward)."""

    blocks_linear: float  # qkv, output projection, MLP: per token
    blocks_attention: float  # q k^T and attention x v
    adaln: float  # the blocks' and the final layer's modulation: once per sample
    embed_and_heads: float  # patch embedding, timestep MLP, output linear, REPA projectors, REG class token
    no_input_grad: float  # forward FLOPs of layers whose input needs no gradient (backward = 1x, not 2x)

    @property
    def forward(self) -> float:
        return self.blocks_linear + self.blocks_attention + self.adaln + self.embed_and_heads

    @property
    def training(self) -> float:
        return 3 * self.forward - self.no_input_grad


def dit_training_flops(config) -> DiTFlops:
    """The count for a `DiTConfig` (vfmvae.diffusion.model)."""
    d, p, c = config.hidden_size, config.patch_size, config.in_channels
    grid_tokens = config.grid**2
    tokens = grid_tokens + (1 if config.class_token_dim else 0)  # REG's class token joins the sequence
    hidden = config.mlp_hidden
    mlp = 2 * d * 2 * hidden + 2 * hidden * d if config.mlp == "swiglu" else 2 * 2 * d * hidden
    per_token = 2 * d * 3 * d + 2 * d * d + mlp  # qkv, proj, MLP
    blocks_linear = config.depth * tokens * per_token
    blocks_attention = config.depth * 2 * (2 * tokens * tokens * d)  # q k^T and attn v over all heads
    adaln = config.depth * 2 * d * (4 if config.wo_shift else 6) * d + 2 * d * 2 * d
    out_channels = c * (2 if config.learn_sigma else 1)
    patch_embed = grid_tokens * 2 * c * p * p * d
    timestep = 2 * 256 * d + 2 * d * d  # 256 sinusoidal frequencies -> D -> D
    output = grid_tokens * 2 * d * p * p * out_channels
    projectors = sum(
        tokens * 2 * (d * config.projector_dim + config.projector_dim**2 + config.projector_dim * width)
        for width in config.align_dims
    )
    cls = 2 * config.class_token_dim * d * 2 if config.class_token_dim else 0  # in: token -> D; out: D -> token
    embed_and_heads = patch_embed + timestep + output + projectors + cls
    no_input_grad = patch_embed + 2 * 256 * d + (2 * config.class_token_dim * d if config.class_token_dim else 0)
    return DiTFlops(blocks_linear, blocks_attention, adaln, embed_and_heads, no_input_grad)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lightningdit-xl/1")
    p.add_argument("--check", action="store_true", help="also count with torch's FlopCounterMode (batch 2, CPU)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from common import emit

    from vfmvae.diffusion import diffusion_config

    config = diffusion_config(args.arch)
    flops = dit_training_flops(config)
    result = {
        "benchmark": "flops",
        "arch": args.arch,
        "forward_tflop_per_latent": round(flops.forward / 1e12, 4),
        "training_tflop_per_latent": round(flops.training / 1e12, 4),
        "parts_forward_gflop": {
            "blocks_linear": round(flops.blocks_linear / 1e9, 2),
            "blocks_attention": round(flops.blocks_attention / 1e9, 2),
            "adaln": round(flops.adaln / 1e9, 2),
            "embed_and_heads": round(flops.embed_and_heads / 1e9, 2),
        },
    }
    if args.check:
        result["flopcounter_tflop_per_latent"] = round(counted_training_flops(config) / 1e12, 4)
    emit(result, args.json)


def counted_training_flops(config, batch: int = 2) -> float:
    """torch's count (common.count_flops) of one training forward + backward per latent, every head trained."""
    import torch
    from common import count_flops

    from vfmvae.diffusion import DiffusionTransformer, TransportConfig, training_loss

    model = DiffusionTransformer(config)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size)
    tokens = config.grid**2 + (1 if config.class_token_dim else 0)
    cls = torch.randn(batch, config.class_token_dim) if config.class_token_dim else None
    transport = TransportConfig(
        align_weight=0.5 if config.align_dims else 0.0, cls_weight=0.03 if cls is not None else 0
    )
    flops = count_flops(
        lambda: (
            training_loss(
                model,
                x,
                torch.zeros(batch, dtype=torch.long),
                transport,
                t=torch.rand(batch),
                noise=torch.randn_like(x),
                cls_noise=torch.randn_like(cls) if cls is not None else None,
                align_targets=[torch.randn(batch, tokens, width) for width in config.align_dims] or None,
                cls_target=cls,
            )
            .loss.mean()
            .backward()
        )
    )
    return flops / batch


if __name__ == "__main__":
    main()
