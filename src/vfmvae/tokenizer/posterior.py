"""The latent distribution: a diagonal Gaussian over the (B, z_dim, h, w) latent (LDM convention)."""

from __future__ import annotations

import torch

__all__ = ["DiagonalGaussian"]


class DiagonalGaussian:
    """Built from `moments` = [mean | logvar] on the channel axis; logvar is clamped to [-30, 20] as the official."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.moments = moments
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * eps. With `generator`, eps is drawn from it (on the generator's device)."""
        eps = torch.randn(
            self.mean.shape,
            generator=generator,
            device=self.mean.device if generator is None else generator.device,
            dtype=self.mean.dtype,
        ).to(self.mean.device)
        return self.mean + self.std * eps

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per sample: 0.5 * sum_{c,h,w} (mean^2 + var - 1 - logvar); shape (B,)."""
        return 0.5 * (self.mean.square() + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))
