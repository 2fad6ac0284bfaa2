"""Training machinery shared by the tokenizer and diffusion trainers: optimizer steps, EMA, logging."""

from vfmvae.training.ema import EMA
from vfmvae.training.step import StepResult, fused_optimizer_supported, optimizer_step

__all__ = ["EMA", "StepResult", "fused_optimizer_supported", "optimizer_step"]
