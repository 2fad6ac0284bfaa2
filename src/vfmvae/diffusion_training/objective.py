"""The diffusion objective of one micro-batch: the transport loss with the step's draws, and the REPA/REG targets
from the cached VFM features (LightningDiT / SiT / REPA / REG; the loss itself is `vfmvae.diffusion.transport`).

The trainer (trainer.py) owns the loop; this module owns what one micro-batch computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vfmvae.diffusion import DiTConfig, training_loss
from vfmvae.diffusion.transport import TransportConfig
from vfmvae.latents import draw_posterior

__all__ = ["DiffusionObjective", "align_targets"]

LOGGED_TERMS = {"loss": "loss", "mse": "loss/mse", "cosine": "loss/cosine", "align": "loss/align", "cls": "loss/cls"}


class DiffusionObjective:
    """`objective(module, batch)`: the mean loss of a micro-batch (latents, labels, cached VFM features and its rows
    of the step's draws); its terms are kept, detached on the device, in `scalars` for the run's report."""

    def __init__(self, model_cfg: DiTConfig, transport: TransportConfig, autocast: Callable) -> None:
        self.model_cfg, self.transport, self.autocast = model_cfg, transport, autocast
        self.scalars: dict[str, torch.Tensor] = {}

    def __call__(self, module: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        targets, cls = align_targets(self.model_cfg, batch)
        draws = batch["draws"]
        latents = batch["latents"]
        if draws.posterior_eps is not None:  # a fresh posterior sample per step (REG's sample_posterior)
            latents = draw_posterior(latents, batch["latents_std"], draws.posterior_eps)
        with self.autocast():
            terms = training_loss(
                module,
                latents,
                batch["label"],
                self.transport,
                t=draws.t,
                noise=draws.noise,
                cls_noise=draws.cls_noise,
                drop_labels=draws.drop,
                align_targets=targets if self.transport.align_weight else None,
                cls_target=cls if self.model_cfg.class_token_dim else None,
            )
        for name, key in LOGGED_TERMS.items():
            value = getattr(terms, name)
            if value is not None:
                self.scalars[key] = value.detach().mean()
        return terms.loss.mean()


def align_targets(
    model_cfg: DiTConfig, batch: dict[str, torch.Tensor]
) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
    """REPA/REG targets from cached VFM features: patch tokens on the model's token grid, preceded by the VFM
    class token for REG models (whose projector reads the class token too). A VFM grid that differs from the
    model's (e.g. 18x18 DINOv2 tokens for a 16x16 latent) is area-resampled to it."""
    feats, cls = batch.get("vfm_features"), batch.get("vfm_cls")
    if feats is None:
        return None, cls
    grid = model_cfg.grid
    b, n, d = feats.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cached VFM features have {n} tokens, not a square grid")
    if side != grid:
        maps = feats.transpose(1, 2).reshape(b, d, side, side)
        feats = F.adaptive_avg_pool2d(maps, grid).flatten(2).transpose(1, 2)
    if model_cfg.class_token_dim:
        if cls is None:
            raise ValueError("REG models need the VFM class token; cache with a VFM that has one (e.g. dinov2-base)")
        feats = torch.cat([cls[:, None], feats], dim=1)
    return [feats] * len(model_cfg.align_dims), cls
