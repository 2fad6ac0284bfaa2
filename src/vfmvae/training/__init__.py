"""Training machinery shared by the tokenizer and diffusion trainers: optimizer steps, EMA, logging."""

from vfmvae.training.ema import EMA
from vfmvae.training.step import StepResult, optimizer_step

__all__ = ["EMA", "StepResult", "optimizer_step"]
