"""Discrete mode: multi-codebook normalised vector quantisation (UniTok's design, used by the official code).

The `vocab_width`-channel encoder output is split into `num_codebooks` chunks; each chunk is L2-normalised
and replaced by the codebook entry of largest cosine similarity (codebook rows are L2-normalised too), with
a straight-through gradient. vq_loss = beta ||sg(q) - f||^2 + ||q - sg(f)||^2 (MSE), averaged over codebooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiCodebookQuantizer", "QuantizedLatent"]


class _Codebook(nn.Module):
    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        self.codebook = nn.Embedding(size, width)
        bound = width**-0.5 / 36  # official init: uniform(+-width^-0.5 / 36)
        nn.init.uniform_(self.codebook.weight, -bound, bound)
        self.register_buffer("vocab_usage", torch.zeros(size))  # kept for checkpoint compatibility (statistics only)

    def normalized(self) -> torch.Tensor:
        return F.normalize(self.codebook.weight, dim=1)


class MultiCodebookQuantizer(nn.Module):
    def __init__(self, vocab_size: int, vocab_width: int, num_codebooks: int, beta: float = 0.25) -> None:
        super().__init__()
        if vocab_size % num_codebooks or vocab_width % num_codebooks:
            raise ValueError("vocab_size and vocab_width must be divisible by num_codebooks")
        self.beta, self.num_codebooks = beta, num_codebooks
        self.codebooks = nn.ModuleList(
            _Codebook(vocab_size // num_codebooks, vocab_width // num_codebooks) for _ in range(num_codebooks)
        )

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (B, N, vocab_width) -> (quantised tokens with straight-through grads, indices (B, K, N), vq_loss)."""
        b, n, c = tokens.shape
        chunks = tokens.split(c // self.num_codebooks, dim=-1)
        outs, indices, loss = [], [], tokens.new_zeros(())
        for chunk, book in zip(chunks, self.codebooks):
            f = F.normalize(chunk.reshape(-1, chunk.shape[-1]), dim=-1).float()
            codes = book.normalized()
            idx = (f.detach() @ codes.T).argmax(dim=1)
            q = codes[idx]
            loss = loss + F.mse_loss(q.detach(), f) * self.beta + F.mse_loss(q, f.detach())
            outs.append((q.detach() - f.detach() + f).view(b, n, -1))
            indices.append(idx.view(b, n))
        return torch.cat(outs, -1), torch.stack(indices, 1), loss / self.num_codebooks

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, K, N) -> quantised tokens (B, N, vocab_width)."""
        return torch.cat([book.normalized()[indices[:, i]] for i, book in enumerate(self.codebooks)], -1)


class QuantizedLatent:
    """What `VFMVAE.encode` returns in discrete mode; mirrors the posterior API (deterministic)."""

    def __init__(self, z: torch.Tensor, indices: torch.Tensor, vq_loss: torch.Tensor) -> None:
        self.mean = z
        self.indices = indices
        self.vq_loss = vq_loss
        self.logvar = torch.full_like(z, -torch.inf)
        self.std = torch.zeros_like(z)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        return self.mean.new_zeros(self.mean.shape[0])
