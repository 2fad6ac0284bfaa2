"""Every random draw of one diffusion training step, in one place.

The draws are made for the whole global batch from a generator seeded by
`derive_seed(run.seed, "diffusion-step", step)` and each micro-batch takes the rows of its own samples
(`StepDraws.rows_of`), so a run does not depend on the number of processes or on gradient accumulation, and a
resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vfmvae.diffusion import DiTConfig
from vfmvae.diffusion.transport import TransportConfig, sample_time
from vfmvae.seeding import derive_seed

__all__ = ["StepDraws", "MicroDraws", "global_rows"]


def global_rows(rank: int, world: int, micro_index: int, micro: int, n: int, device: torch.device) -> torch.Tensor:
    """The global-batch rows of a rank's micro-batch: rank r holds rows r, r + W, r + 2W, ... (the sampler's order)."""
    return rank + world * (micro_index * micro + torch.arange(n, device=device))


@dataclass(frozen=True)
class MicroDraws:
    """One micro-batch's share of a step's draws (what `training_loss` and the posterior draw take)."""

    t: torch.Tensor
    noise: torch.Tensor
    cls_noise: torch.Tensor | None
    drop: torch.Tensor | None  # label dropout mask (None: the model has no null class)
    posterior_eps: torch.Tensor | None  # eps of z = mean + std * eps (posterior draws only)


@dataclass(frozen=True)
class StepDraws:
    """All random draws of one optimizer step, for the whole global batch."""

    t: torch.Tensor
    noise: torch.Tensor
    cls_noise: torch.Tensor | None
    drop: torch.Tensor | None
    posterior_eps: torch.Tensor | None

    @classmethod
    def draw(
        cls,
        step: int,
        *,
        seed: int,
        batch_size: int,
        transport: TransportConfig,
        model: DiTConfig,
        posterior: bool,
        generator: torch.Generator,
    ) -> StepDraws:
        """The draws of `step`. The order is fixed: t, noise, class-token noise, label drops, posterior eps."""
        g, b, c, dev = generator, batch_size, model, generator.device
        g.manual_seed(derive_seed(seed, "diffusion-step", step))
        t = sample_time(b, transport, g, device=dev)
        noise = torch.randn(b, c.in_channels, c.input_size, c.input_size, generator=g, device=dev)
        cls_noise = torch.randn(b, c.class_token_dim, generator=g, device=dev) if c.class_token_dim else None
        drop = torch.rand(b, generator=g, device=dev) < c.class_dropout
        # drawn last, so that the other draws are the same with or without posterior moments
        eps = torch.randn(b, c.in_channels, c.input_size, c.input_size, generator=g, device=dev) if posterior else None
        return cls(t, noise, cls_noise, drop if c.class_dropout > 0 else None, eps)

    def rows_of(self, rows: torch.Tensor) -> MicroDraws:
        pick = lambda v: None if v is None else v[rows]  # noqa: E731
        return MicroDraws(
            self.t[rows], self.noise[rows], pick(self.cls_noise), pick(self.drop), pick(self.posterior_eps)
        )
