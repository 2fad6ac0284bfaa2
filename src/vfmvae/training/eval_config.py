"""The `eval:` section of both training recipes (evaluation while training), and the names the evaluator and the
report share: the folder under the run, the metric names and which way each is better."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from vfmvae.evaluation.weights import RANDOM_INIT  # `inception: random-init:0`: seeded random weights (demo, tests)

__all__ = [
    "EvalConfig",
    "RANDOM_INIT",
    "EVAL_DIR",
    "LOWER_IS_BETTER",
    "HIGHER_IS_BETTER",
    "TOKENIZER_METRICS",
    "DIFFUSION_METRICS",
]

EVAL_DIR = "eval"
RECORDS = "records.jsonl"
BEST_DIR = "best"
BEST_MARKER = "best.json"  # written into RUN/best by us; a RUN/best without it is never replaced

TOKENIZER_METRICS = ("rfid", "ris", "psnr", "ssim", "lpips")
DIFFUSION_METRICS = ("fid", "sfid", "is", "precision", "recall")
LOWER_IS_BETTER = frozenset({"rfid", "fid", "sfid", "lpips"})
HIGHER_IS_BETTER = frozenset({"ris", "psnr", "ssim", "is", "precision", "recall"})


@dataclass(frozen=True)
class EvalConfig:
    """A recipe's `eval:` section. Off by default; `every_images` counts images, as every cadence of a run."""

    enabled: bool = False
    every_images: int = 5_120_000  # evaluate each time the run's image count reaches a multiple of this
    seed: int = 0  # posterior noise / sample noise and labels of the evaluation
    batch_size: int = 32  # per process
    # FID Inception (pt_inception-2015-12-05 .pth), or "random-init:SEED" (seeded random weights: the pipeline runs,
    # the values compare with nothing). None: Inception metrics are skipped with one warning.
    inception: str | None = None
    lpips: str | None = None  # VGG16 trunk for LPIPS (vgg16-397923af.pth) or "random-init:SEED"
    keep_best: str | None = None  # keep RUN/best: the evaluated model with the best value of this metric
    # tokenizer: a held-out image folder or tar shards, its first `num_images` images (sorted order)
    data: str | None = None
    num_images: int = 1000
    crop: Literal["resize_center", "adm_center"] = "resize_center"  # resize_center: the official reconstruct.py
    latent: Literal["sample", "mode"] = "sample"  # decode a posterior sample (official) or the posterior mean
    grid: int = 8  # held-out images in the reconstruction grid (0 = no grid)
    # diffusion: an ADM reference batch (.npz with mu/sigma/mu_s/sigma_s and arr_0 images)
    ref: str | None = None
    num_samples: int = 5000
    sampler: dict[str, Any] = field(default_factory=dict)  # SamplerConfig fields over the recipe's preset

    def __post_init__(self) -> None:
        for name in ("every_images", "batch_size", "num_images", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"eval.{name} must be at least 1, got {getattr(self, name)}")
        if self.grid < 0:
            raise ValueError(f"eval.grid must be >= 0, got {self.grid}")
        for name in ("num_images", "num_samples"):
            if getattr(self, name) < 10:
                raise ValueError(
                    f"eval.{name} must be at least 10 (Inception Score splits and k-NN need a few "
                    f"images), got {getattr(self, name)}"
                )
        if self.keep_best is not None and self.keep_best not in LOWER_IS_BETTER | HIGHER_IS_BETTER:
            raise ValueError(
                f"eval.keep_best {self.keep_best!r}: choose one of "
                f"{', '.join(TOKENIZER_METRICS + DIFFUSION_METRICS)} (or null)"
            )
