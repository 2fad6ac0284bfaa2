"""Exponential moving average of weights, parameterised by a half-life in images (EDM/StyleGAN style).

beta = 0.5 ** (batch_images / halflife). During ramp-up the half-life is capped at
`rampup_ratio x images_seen`, so the average does not remember the random initialisation for long.
Buffers are copied, not averaged.

Every parameter is averaged, frozen ones included, as the official updates do (tianciB/VFM-VAE@b3a752a
training/training_loop.py, the G_ema update; hustvl/LightningDiT@2725fed and Martinser/REG@021ea2e train.py
`update_ema`): a part frozen in a later stage then converges to the raw weights instead of keeping an old
average. Only parameters the trainer names in `exclude_prefixes` are skipped (the tokenizer's frozen VFM, identical
in both copies and never trained).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


_CHUNK = 64  # parameters per multi-tensor update when the weight is a device tensor


class EMA:
    def __init__(
        self,
        model: nn.Module,
        halflife_images: float,
        rampup_ratio: float | None = 0.05,
        exclude_prefixes: tuple[str, ...] = (),
    ) -> None:
        """Parameters whose names start with one of `exclude_prefixes` are not averaged (whether they train or
        not); every other parameter is."""
        if halflife_images <= 0:
            raise ValueError("EMA half-life must be positive")
        self.halflife_images = halflife_images
        self.rampup_ratio = rampup_ratio
        self.exclude_prefixes = tuple(exclude_prefixes)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, images_seen: int, batch_images: int) -> float:
        halflife = self.halflife_images
        if self.rampup_ratio is not None:
            halflife = min(halflife, images_seen * self.rampup_ratio)
        return 0.5 ** (batch_images / max(halflife, 1e-8))

    @torch.no_grad()
    def update(
        self, model: nn.Module, images_seen: int, batch_images: int, applied: torch.Tensor | None = None
    ) -> float:
        """Blend `model` into the average; `images_seen` counts the images before this batch (the official
        `cur_nimg` at the update), which caps the half-life during ramp-up.

        `applied` (a 0-d 0/1 device tensor, `StepResult.applied_t`) makes a skipped step a no-op without
        reading the flag back to the host.
        """
        beta = self.beta(images_seen, batch_images)
        source = dict(model.named_parameters())
        averaged, current = [], []
        for name, p_ema in self.model.named_parameters():
            if name.startswith(self.exclude_prefixes):
                continue
            averaged.append(p_ema)
            current.append(source[name].detach().to(p_ema.dtype))
        if averaged and applied is None:
            # one multi-tensor kernel instead of a launch per parameter (hundreds for an XL model)
            torch._foreach_lerp_(averaged, current, 1.0 - beta)
        elif averaged:
            # `_foreach_lerp_` takes its weight as a host Scalar: a device tensor would be read back, one
            # synchronisation per step (found by the GPU check). ema += w * (p - ema), with w on the device; the
            # difference is formed in chunks to bound the extra memory.
            weight = (applied * (1.0 - beta)).to(averaged[0].device)
            for start in range(0, len(averaged), _CHUNK):
                ema_chunk = averaged[start : start + _CHUNK]
                delta = torch._foreach_sub(current[start : start + _CHUNK], ema_chunk)
                torch._foreach_mul_(delta, weight)
                torch._foreach_add_(ema_chunk, delta)
        source_buffers = dict(model.named_buffers())
        for name, b_ema in self.model.named_buffers():
            b_ema.copy_(source_buffers[name])
        return beta

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)
