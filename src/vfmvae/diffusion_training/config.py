"""The diffusion-training recipe (YAML under configs/diffusion/), one frozen dataclass per component."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vfmvae.config import ExistingPath, require_positive
from vfmvae.diffusion.transport import TransportConfig
from vfmvae.distributed import parse_device

__all__ = ["LatentDataConfig", "ModelChoice", "DiffusionOptimConfig", "DiffusionRunConfig", "DiffusionTrainConfig"]


@dataclass(frozen=True)
class LatentDataConfig:
    cache: ExistingPath                      # a finished `vfmvae cache-latents` folder
    flip: bool = True                        # use the cached flipped copy half of the time (needs --flip)
    # draw z = mean + std * eps afresh every step from a cache of posterior moments (cache-latents --moments), as
    # REG's train.py; false: train on the stored latents (the mean, or the one sample of --sample)
    posterior_draws: bool = False
    num_workers: int = 2


@dataclass(frozen=True)
class ModelChoice:
    arch: str = "lightningdit-xl/1"          # `vfmvae diffusion list`
    # DiTConfig fields to change; in_channels, input_size and num_classes default to the cache's
    overrides: dict[str, Any] = field(default_factory=dict)
    init: str | None = None                  # start from these weights (a DiffusionTransformer folder)


@dataclass(frozen=True)
class DiffusionOptimConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    warmup_steps: int = 0                    # linear warm-up of the learning rate


@dataclass(frozen=True)
class DiffusionRunConfig:
    dir: Path = Path("runs/diffusion")
    seed: int = 0
    batch_size: int = 1024                   # global batch per optimizer step
    micro_batch: int | None = None           # per process and forward; None = batch_size / world
    total_steps: int = 400_000               # optimizer steps
    ema_decay: float = 0.9999                # per step
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    log_every: int = 100
    sample_every: int = 10_000               # sample grid of the EMA model (0 = never)
    sample_steps: int = 50                   # Euler steps for the grid
    sample_cfg: float = 1.0                  # guidance scale for the grid
    sample_count: int = 16
    checkpoint_every: int = 10_000
    keep_checkpoints: int = 2
    max_consecutive_nonfinite: int = 20
    device: str | None = None                # default: cuda if available
    tensorboard: bool = False
    compile: bool = False                    # torch.compile the model (GPU)
    gradient_checkpointing: bool = False     # recompute blocks in backward: less memory, about 30 % more compute

    def __post_init__(self) -> None:
        require_positive(self, "batch_size", "micro_batch", "total_steps", "log_every", "sample_every", "sample_steps",
                         "sample_count", "checkpoint_every", "keep_checkpoints", "max_consecutive_nonfinite",
                         allow_zero=("total_steps", "sample_every"))
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay} (1.0 would never update the EMA)")
        if self.device is not None:
            parse_device(self.device)


@dataclass(frozen=True)
class DiffusionTrainConfig:
    data: LatentDataConfig
    model: ModelChoice = field(default_factory=ModelChoice)
    transport: TransportConfig = field(default_factory=TransportConfig)
    optim: DiffusionOptimConfig = field(default_factory=DiffusionOptimConfig)
    run: DiffusionRunConfig = field(default_factory=DiffusionRunConfig)
    tokenizer: str | None = None             # for decoding sample grids; default: the cache's tokenizer
    # official sampler settings recorded in the export; `vfmvae sample` uses them (vfmvae.sampling.presets)
    sample_preset: Literal["reg-sde", "lightningdit"] | None = None
