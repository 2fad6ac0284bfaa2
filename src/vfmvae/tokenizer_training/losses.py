"""Generator-side losses of VFM-VAE training (spec sections 6.2-6.4). Images are in [-1, 1] here."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vfmvae.evaluation.image_metrics import ssim

__all__ = ["ssim_loss", "multiscale_l1", "kl_loss", "vf_alignment_loss", "adaptive_vf_weight"]


def ssim_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1 - SSIM on clamped [-1, 1] images, data range 2, as the official `training/loss.py` (torchmetrics SSIM).

    The images stay in [-1, 1]: SSIM's luminance term is not shift-invariant, and on [0, 2] it punishes a
    brightness shift of mid-grey content far less.
    """
    return 1.0 - ssim(fake.clamp(-1, 1), real.clamp(-1, 1), data_range=2.0).float().mean()


def multiscale_l1(outputs: list[torch.Tensor], target01: torch.Tensor, weights: list[float], mode: str = "bilinear") -> torch.Tensor:
    """sum_i w_i L1(resize(target, output_i size) * 2 - 1, output_i); outputs largest first."""
    total = target01.new_zeros(())
    for out, w in zip(outputs, weights):
        if w:
            t = F.interpolate(target01, size=out.shape[-2:], mode=mode, align_corners=False, antialias=True)
            total = total + w * (t * 2 - 1 - out).abs().mean()
    return total


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Batch mean of the per-sample KL(N(mean, var) || N(0, I)) summed over c, h, w."""
    return (0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3))).mean()


def vf_alignment_loss(projected: torch.Tensor, vfm_features: torch.Tensor, distmat_margin: float = 0.0,
                      cos_margin: float = 0.0, distmat_weight: float = 1.0, cos_weight: float = 1.0) -> torch.Tensor:
    """VA-VAE's VF loss between projected latents p (B, C, h, w) and detached VFM features f (B, C, H, W).

    f is average-pooled to the latent grid. distmat: mean relu(|cos(p_i, p_j) - cos(f_i, f_j)| - m_d) over all
    position pairs; cos: mean relu(1 - m_c - cos(f_hw, p_hw)).
    """
    f = vfm_features.detach()
    if f.shape[-2:] != projected.shape[-2:]:
        f = F.adaptive_avg_pool2d(f, projected.shape[-2:])
    p_flat = F.normalize(projected.flatten(2), dim=1)
    f_flat = F.normalize(f.flatten(2), dim=1)
    p_cos = torch.einsum("bci,bcj->bij", p_flat, p_flat)
    f_cos = torch.einsum("bci,bcj->bij", f_flat, f_flat)
    distmat = F.relu((p_cos - f_cos).abs() - distmat_margin).mean()
    cos = F.relu(1 - cos_margin - F.cosine_similarity(f, projected, dim=1)).mean()
    return distmat_weight * distmat + cos_weight * cos


def adaptive_vf_weight(rec_loss: torch.Tensor, vf_loss: torch.Tensor, last_layer: torch.Tensor, base: float) -> torch.Tensor:
    """base * clamp(|grad_W rec| / (|grad_W vf| + 1e-4), 0, 1e8), detached (W: the encoder's last linear layer)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_vf = torch.autograd.grad(vf_loss, last_layer, retain_graph=True)[0]
    return (base * (g_rec.norm() / (g_vf.norm() + 1e-4)).clamp(0, 1e8)).detach()
