"""The diffusion-training recipe (YAML under configs/diffusion/), one frozen dataclass per component."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vfmvae.config import ExistingPath
from vfmvae.diffusion.transport import TransportConfig
from vfmvae.training.config import DiffusionRunConfig, retired_step_cadences  # `run:` shared, plus grid settings
from vfmvae.training.eval_config import EvalConfig

__all__ = ["LatentDataConfig", "ModelChoice", "DiffusionOptimConfig", "DiffusionRunConfig", "DiffusionTrainConfig"]


@dataclass(frozen=True)
class LatentDataConfig:
    cache: ExistingPath  # a finished `vfmvae cache-latents` folder
    flip: bool = True  # use the cached flipped copy half of the time (needs --flip)
    # draw z = mean + std * eps afresh every step from a cache of posterior moments (cache-latents --moments), as
    # REG's train.py; false: train on the stored latents (the mean, or the one sample of --sample)
    posterior_draws: bool = False
    num_workers: int = 2


@dataclass(frozen=True)
class ModelChoice:
    arch: str = "lightningdit-xl/1"  # `vfmvae diffusion list`
    # DiTConfig fields to change; in_channels, input_size and num_classes default to the cache's
    overrides: dict[str, Any] = field(default_factory=dict)
    init: str | None = None  # start from these weights (a DiffusionTransformer folder)


@dataclass(frozen=True)
class DiffusionOptimConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    warmup_images: int = 0  # linear warm-up of the learning rate over this many images (0 = none)


@dataclass(frozen=True)
class DiffusionTrainConfig:
    data: LatentDataConfig
    model: ModelChoice = field(default_factory=ModelChoice)
    transport: TransportConfig = field(default_factory=TransportConfig)
    optim: DiffusionOptimConfig = field(default_factory=DiffusionOptimConfig)
    run: DiffusionRunConfig = field(default_factory=DiffusionRunConfig)
    tokenizer: str | None = None  # for decoding sample grids; default: the cache's tokenizer
    # official sampler settings recorded in the export; `vfmvae sample` uses them (vfmvae.sampling.presets)
    sample_preset: Literal["reg-sde", "reg-sde-64ep", "reg-sde-80ep", "lightningdit", "lightningdit-64ep"] | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation while training (off by default)
    # a later stage of a longer run (LightningDiT stage 1, as the official train_lightningdit_xl_1_stage_1.yaml
    # `train.resume`): a run folder (its newest complete checkpoint) or a checkpoint folder whose model, EMA,
    # optimizer state and step count this run starts from; used only while this run has no checkpoint of its own
    start_from: str | None = None

    @staticmethod
    def retired_keys(data: dict[str, Any], prefix: str) -> dict[str, str]:
        """The step-counted keys (`run.*_every`, `eval.every`, `optim.warmup_steps`, ...), refused with their values
        in images."""
        return retired_step_cadences(data, prefix, DiffusionRunConfig)

    def __post_init__(self) -> None:
        if self.start_from is not None and self.model.init is not None:
            raise ValueError(
                "set at most one of start_from (a checkpoint: model, EMA and optimizer continue) and model.init "
                "(weights only, a new optimizer)"
            )
