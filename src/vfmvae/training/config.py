"""The `run:` section of both training recipes: one RunConfig, counted in images throughout (NVlabs/edm2's
`total_nimg`, `status_nimg`, `snapshot_nimg`): run length, EMA half-life and the log / grid / checkpoint cadences.
The diffusion recipe adds its grid sampler settings in a subclass.

A cadence of N images is due at the step whose image count (step x batch_size) reaches the next multiple of N, so
a value that is not a multiple of the batch size still comes round once per N images.

Keys of older recipes are refused with one line that gives the value to write instead (`retired_keys`, and
`retired_step_cadences` for the `eval:` and `optim:` cadences, which need the run's batch size)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vfmvae.config import require_positive
from vfmvae.distributed import parse_device

__all__ = ["RunConfig", "DiffusionRunConfig", "halflife_from_decay", "retired_step_cadences", "steps_in_images"]

# cadence keys counted in optimizer steps before they were counted in images: old key -> new key
_STEP_CADENCES = {
    "log_every": "log_every_images",
    "grid_every": "grid_every_images",
    "checkpoint_every": "checkpoint_every_images",
    "sample_every": "grid_every_images",  # the grid's names before RUN/grids
    "snapshot_every": "grid_every_images",
}


def halflife_from_decay(decay: float, batch_size: int) -> float:
    """The EMA half-life in images of a per-step decay: 0.5 ** (batch / halflife) = decay."""
    return batch_size * math.log(0.5) / math.log(decay)


def steps_in_images(key: str, steps: Any, batch: Any) -> str:
    """The advice for a cadence key of older recipes that counted optimizer steps: write KEY: STEPS x BATCH."""
    images = steps * batch if isinstance(steps, int) and isinstance(batch, int) else "STEPS x BATCH"
    return f"cadences are in images now: write {key}: {images} ({steps} steps x batch {batch})"


def retired_step_cadences(data: Mapping[str, Any], prefix: str, run_class: type[RunConfig]) -> dict[str, str]:
    """The retired keys of a whole recipe `data` that count optimizer steps or predate images: `eval.every`,
    `optim.warmup_steps` (their conversion needs `run.batch_size`, so the recipe checks them, not their own
    sections) and the `run:` section's own (`run_class.retired_keys`), each with its value in images. They are
    checked here, before any section is read, so that an older recipe hears of them first (not of a data path)."""
    run, advice = data.get("run"), {}
    batch = run.get("batch_size", run_class.batch_size) if isinstance(run, Mapping) else run_class.batch_size
    if isinstance(run, Mapping):
        advice.update({f"run.{key}": text for key, text in run_class.retired_keys(run, f"{prefix}run.").items()})
    for section, old, new in (("eval", "every", "every_images"), ("optim", "warmup_steps", "warmup_images")):
        values = data.get(section)
        if isinstance(values, Mapping) and old in values:
            advice[f"{section}.{old}"] = steps_in_images(f"{prefix}{section}.{new}", values[old], batch)
    return advice


@dataclass(frozen=True)
class RunConfig:
    dir: Path = Path("runs/tokenizer")
    seed: int = 0
    batch_size: int = 512  # global batch per optimizer step
    micro_batch: int | None = None  # per process and forward; None = batch_size / world
    total_images: int = 20_000_000  # run length in images (steps = ceil(total_images / batch_size))
    ema_halflife_images: float = 160_000  # EMA half-life in images
    ema_rampup: float | None = 0.05  # cap the half-life at ema_rampup x images seen; None = no ramp-up
    # bf16 / fp16: autocast over the networks; fp32; official (tokenizer only): the official tokenizer's mixed
    # precision, float32 with float16 in the last three synthesis blocks and TF32 off (tokenizer_training/precision.py)
    precision: Literal["fp32", "bf16", "fp16", "official"] = "bf16"
    log_every_images: int = 25_600  # images between metrics.jsonl records (50 steps of 512)
    grid_every_images: int = 512_000  # images between RUN/grids/*.png of the EMA model (0 = never)
    checkpoint_every_images: int = 512_000  # images between checkpoints
    keep_checkpoints: int = 2
    max_consecutive_nonfinite: int = 20  # this many skipped steps in a row stop the run
    device: str | None = None  # default: cuda if available
    tensorboard: bool = False
    compile: bool = False  # torch.compile the forward passes (same checkpoints)

    def __post_init__(self) -> None:
        require_positive(
            self,
            "batch_size",
            "micro_batch",
            "total_images",
            "ema_halflife_images",
            "ema_rampup",
            "log_every_images",
            "grid_every_images",
            "checkpoint_every_images",
            "keep_checkpoints",
            "max_consecutive_nonfinite",
            allow_zero=("total_images", "ema_rampup", "grid_every_images"),
        )
        if self.device is not None:
            parse_device(self.device)

    @property
    def total_steps(self) -> int:
        return -(-self.total_images // self.batch_size)

    @classmethod
    def retired_keys(cls, data: Mapping[str, Any], prefix: str) -> dict[str, str]:
        """Keys of older recipes in `data`, each with the key and value to write instead."""
        batch = data.get("batch_size", cls.batch_size)
        advice = {}
        if "total_steps" in data:
            steps = data["total_steps"]
            images = steps * batch if isinstance(steps, int) and isinstance(batch, int) else "STEPS x BATCH"
            advice["total_steps"] = (
                f"run length is in images now: write {prefix}total_images: {images} ({steps} steps x batch {batch})"
            )
        if "ema_decay" in data:
            decay = data["ema_decay"]
            try:
                halflife = f"{halflife_from_decay(float(decay), int(batch)):.0f}"
            except (TypeError, ValueError, ZeroDivisionError):
                halflife = "BATCH x ln(0.5) / ln(DECAY)"
            advice["ema_decay"] = (
                f"the EMA is a half-life in images now: write {prefix}ema_halflife_images: "
                f"{halflife} (batch {batch} x ln(0.5) / ln({decay}))"
            )
        for old, new in _STEP_CADENCES.items():
            if old in data:
                advice[old] = steps_in_images(f"{prefix}{new}", data[old], batch)
        for old, new in (
            ("sample_steps", "grid_steps"),
            ("sample_cfg", "grid_cfg"),
            ("sample_count", "grid_count"),
        ):
            if old in data:
                advice[old] = f"renamed: write {prefix}{new}: {data[old]}"
        return advice


@dataclass(frozen=True)
class DiffusionRunConfig(RunConfig):
    """The diffusion run: the shared fields (with diffusion defaults) plus the grid sampler and memory settings."""

    dir: Path = Path("runs/diffusion")
    batch_size: int = 1024
    total_images: int = 409_600_000  # 400k steps of 1024
    ema_halflife_images: float = 7_097_472  # per-step decay 0.9999 at batch 1024
    ema_rampup: float | None = None
    log_every_images: int = 102_400  # 100 steps of 1024
    grid_every_images: int = 10_240_000  # 10k steps of 1024
    checkpoint_every_images: int = 10_240_000
    grid_steps: int = 50  # sampler steps of the grid (the export's preset sampler)
    grid_cfg: float = 1.0  # guidance scale of the grid
    grid_count: int = 16  # images in the grid
    gradient_checkpointing: bool = False  # recompute blocks in backward: less memory, about 30 % more compute

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "grid_steps", "grid_count")
        if self.precision == "official":
            raise ValueError(
                "precision: official is the tokenizer's mixed precision (float16 synthesis blocks); "
                "diffusion training takes bf16, fp16 or fp32"
            )
