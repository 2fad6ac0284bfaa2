"""Training recipes as the official runs: SSIM loss convention, safe-loss guard, crop augmentation, stage hand-off,
discriminator resize mode, float32 loss reductions, posterior moments in the latent cache, REG DINOv2 targets."""

from __future__ import annotations

import pytest
import torch


def test_ssim_loss_is_torchmetrics_ssim_on_minus_one_to_one_with_data_range_two():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    from vfmvae.tokenizer_training.losses import ssim_loss

    # mid-grey content with a brightness shift: where the [-1, 1] and [0, 2] conventions differ most
    g = torch.Generator().manual_seed(0)
    real = (0.2 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    fake = (real + 0.3 + 0.05 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    official = 1.0 - tm_ssim(fake.clamp(-1, 1), real.clamp(-1, 1), data_range=2.0)
    torch.testing.assert_close(ssim_loss(fake, real), official.float(), rtol=0, atol=1e-5)
    shifted = 1.0 - tm_ssim(fake + 1, real + 1, data_range=2.0)
    assert abs(float(official) - float(shifted)) > 0.05  # the old convention is measurably different here
