"""Tokenizer training (tianciB/VFM-VAE@b3a752a training/loss.py, training/training_loop.py, configs/).

Trainable-parameter selection per stage (stages.py), the equivariance regularisation (equivariance.py), the losses
and safe-loss guards (losses.py), the discriminators (discriminators.py, spectral_norm.py), the D and G passes of
one micro-batch with their draws (objective.py, draws.py), the stage hand-off (handoff.py) and the loop behind
`vfmvae train tokenizer` (trainer.py).
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
