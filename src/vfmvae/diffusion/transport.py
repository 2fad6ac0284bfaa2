"""Flow matching with the linear interpolant: the package's one time convention, and the training loss.

Convention (used by every public function, model and sampler in vfmvae):

    t = 0 is data, t = 1 is noise;  x_t = (1 - t) * x + t * eps;  velocity v = d x_t / d t = eps - x.

This is REG/SiT's convention. LightningDiT uses the mirror image (t' = 1 - t is 0 at noise, its velocity is
x - eps = -v); `to_native_time` / `from_native_time` and `velocity_to_native` convert, and
`DiffusionTransformer` applies them for weights trained that way (config `time_convention`).

Timestep sampling: `uniform` (t ~ U(0, 1)) or `lognormal` (t = sigmoid(n), n ~ N(mean, std); SD3 /
LightningDiT), optionally shifted towards noise by `shift_time` (shift > 1) or towards data (shift < 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "TransportConfig",
    "LossTerms",
    "interpolate",
    "shift_time",
    "sample_time",
    "to_native_time",
    "from_native_time",
    "velocity_to_native",
    "repa_loss",
    "training_loss",
]

Convention = Literal["noise_at_1", "data_at_1"]


def to_native_time(t: torch.Tensor, convention: Convention) -> torch.Tensor:
    """Package time -> the time a network trained in `convention` expects."""
    return t if convention == "noise_at_1" else 1 - t


# t -> 1 - t is its own inverse
from_native_time = to_native_time


def velocity_to_native(v: torch.Tensor, convention: Convention) -> torch.Tensor:
    """Package velocity (eps - x) -> the velocity of `convention` (x - eps for data_at_1). Self-inverse."""
    return v if convention == "noise_at_1" else -v


def interpolate(x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, v) for data x, noise eps and per-sample times t (B,)."""
    tt = t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    return (1 - tt) * x + tt * eps, eps - x


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """s*t / (1 + (s - 1)*t): monotone map of [0, 1] onto itself; s > 1 spends more time near noise."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


@dataclass(frozen=True)
class TransportConfig:
    time_sampling: Literal["uniform", "lognormal"] = "uniform"
    lognormal_mean: float = 0.0
    lognormal_std: float = 1.0
    time_shift: float = 1.0  # applied to the sampled training times (shift_time)
    cosine_weight: float = 0.0  # LightningDiT's velocity-direction loss (1 in its recipe)
    align_weight: float = 0.0  # REPA/REG projection loss coefficient (0.5 in the REG recipe)
    cls_weight: float = 0.0  # REG class-token denoising loss (0.03 in the REG recipe)


def sample_time(
    n: int, cfg: TransportConfig, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    if device is None and generator is not None:
        device = generator.device
    if cfg.time_sampling == "uniform":
        t = torch.rand(n, generator=generator, device=device)
    elif cfg.time_sampling == "lognormal":
        t = torch.sigmoid(torch.randn(n, generator=generator, device=device) * cfg.lognormal_std + cfg.lognormal_mean)
    else:
        raise ValueError(f"unknown time_sampling {cfg.time_sampling!r}")
    return shift_time(t, cfg.time_shift)


def repa_loss(projected: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample mean over tokens of the negative cosine similarity, averaged over projector/target pairs."""
    if len(projected) != len(targets):
        raise ValueError(f"{len(projected)} projector outputs but {len(targets)} alignment targets")
    total = 0.0
    for z_hat, z in zip(projected, targets):
        if z_hat.shape[:2] != z.shape[:2]:
            raise ValueError(f"projector output {tuple(z_hat.shape)} and VFM target {tuple(z.shape)} differ in tokens")
        cos = (F.normalize(z_hat.float(), dim=-1) * F.normalize(z.float(), dim=-1)).sum(-1)
        total = total + (-cos).mean(-1)
    return total / len(projected)


@dataclass
class LossTerms:
    loss: torch.Tensor  # (B,) the weighted total per sample
    mse: torch.Tensor  # (B,) velocity MSE
    cosine: torch.Tensor | None = None  # (B,) 1 - cos(v_hat, v)
    align: torch.Tensor | None = None  # (B,) REPA projection loss
    cls: torch.Tensor | None = None  # (B,) REG class-token velocity MSE
    t: torch.Tensor | None = None


def training_loss(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TransportConfig,
    *,
    t: torch.Tensor,
    noise: torch.Tensor,
    cls_noise: torch.Tensor | None = None,
    drop_labels: torch.Tensor | None = None,
    align_targets: list[torch.Tensor] | None = None,
    cls_target: torch.Tensor | None = None,
) -> LossTerms:
    """Flow-matching loss for one batch, from given draws: times `t`, `noise` (like `x`), `cls_noise` (like
    `cls_target`, REG) and the label-dropout mask `drop_labels` (the training step draws them all, see
    vfmvae.diffusion_training.draws). `model` is a DiffusionTransformer (or its DDP wrapper).
    """
    t = t.to(x.device, torch.float32)
    x_t, v = interpolate(x, noise.to(x.device, x.dtype), t)
    cls_t = cls_v = None
    if cls_target is not None:
        if cls_noise is None:
            raise ValueError("cls_target needs its noise draw cls_noise")
        cls_t, cls_v = interpolate(cls_target, cls_noise.to(x.device, cls_target.dtype), t)
    out = model(x_t, t, y, cls_t, drop_labels=drop_labels)
    pred = out.sample.float()
    mse = (pred - v.float()).pow(2).mean(dim=(1, 2, 3))
    terms = LossTerms(loss=mse, mse=mse, t=t)
    if cfg.cosine_weight:
        terms.cosine = (1 - F.cosine_similarity(pred, v.float(), dim=1)).mean(dim=(1, 2))
        terms.loss = terms.loss + cfg.cosine_weight * terms.cosine
    if cfg.align_weight:
        if align_targets is None or out.projected is None:
            raise ValueError(
                "align_weight > 0 needs VFM targets (a latent cache with vfm_features) and a model "
                "with projectors (align_dims)"
            )
        terms.align = repa_loss(out.projected, align_targets)
        terms.loss = terms.loss + cfg.align_weight * terms.align
    if cfg.cls_weight:
        if out.cls is None or cls_v is None:
            raise ValueError("cls_weight > 0 needs a REG model (class_token_dim) and VFM class tokens in the cache")
        terms.cls = (out.cls.float() - cls_v.float()).pow(2).mean(dim=-1)
        terms.loss = terms.loss + cfg.cls_weight * terms.cls
    return terms
