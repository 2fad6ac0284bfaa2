"""`run.precision: official`: the official tokenizer training's numerics
(tianciB/VFM-VAE@b3a752a networks/generator.py `num_fp16_res: 3` of the released configs, and
training/training_loop.py, which turns TF32 off for matmuls and cuDNN).

Everything trains in float32 except the last three synthesis blocks (64, 128 and 256 px at 256 px), which run
under float16 autocast with float16 inputs, and the frozen VFM, which runs under bf16 autocast on CUDA in both
codes. No loss scaling, as the official. The official code applies its float16 blocks on CUDA only (it forces
float32 elsewhere); here they run on every device, so that a CPU run exercises the same code path as a GPU one.
`bf16` (autocast over every network) stays the recipes' default: see docs/architecture.md for the measured
difference of losses between the two.
"""

from __future__ import annotations

import torch

from vfmvae.tokenizer import VFMVAE

__all__ = ["OFFICIAL_FP16_BLOCKS", "use_official_precision"]

OFFICIAL_FP16_BLOCKS = 3  # official num_fp16_res of every released stage config


def use_official_precision(model: VFMVAE) -> None:
    """Switch `model`'s last synthesis blocks to float16 and TF32 off (process-wide, as the official loop)."""
    model.synthesis.fp16_blocks = min(OFFICIAL_FP16_BLOCKS, len(model.synthesis.blocks))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
