"""Tokenizer training building blocks (tianciB/VFM-VAE@b3a752a training/loss.py, training/training_loop.py, configs/).

In place: trainable-parameter selection per stage, the equivariance regularisation, and the generator-side
losses (L1/L2, LPIPS, SSIM, multi-scale L1, KL, VF alignment with its adaptive weight). The discriminators,
the training loop, the stage recipes and `vfmvae train tokenizer` are not written yet.
"""

from vfmvae.tokenizer_training.equivariance import EquivarianceDraw, draw_equivariance, transform_target
from vfmvae.tokenizer_training.losses import (
    adaptive_vf_weight,
    kl_loss,
    multiscale_l1,
    ssim_loss,
    vf_alignment_loss,
)
from vfmvae.tokenizer_training.stages import STAGES, select_trainable

__all__ = [
    "EquivarianceDraw",
    "STAGES",
    "adaptive_vf_weight",
    "draw_equivariance",
    "kl_loss",
    "multiscale_l1",
    "select_trainable",
    "ssim_loss",
    "transform_target",
    "vf_alignment_loss",
]
