"""Generator-side losses of VFM-VAE training (tianciB/VFM-VAE@b3a752a training/loss.py `TotalLoss`).
Images are in [-1, 1] here.

The official losses run in float32 (only synthesis blocks 3-5 use fp16). Under bf16/fp16 autocast these
functions therefore switch autocast off and compute in float32: the VF loss compares cosine matrices whose
differences are far below bf16's resolution, and the KL and reductions sum many terms.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from vfmvae.evaluation.image_metrics import ssim

__all__ = [
    "ssim_loss",
    "multiscale_l1",
    "kl_loss",
    "vf_alignment_loss",
    "adaptive_vf_weight",
    "SafeLossGuard",
    "discriminator_term_guard",
]


def _float32(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for the enclosed computation (its inputs are cast to float32 by the callers)."""
    return torch.autocast(x.device.type, enabled=False)


def ssim_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1 - SSIM on clamped [-1, 1] images, data range 2, as the official `training/loss.py` (torchmetrics SSIM).

    The images stay in [-1, 1]: SSIM's luminance term is not shift-invariant, and on [0, 2] it punishes a
    brightness shift of mid-grey content far less.
    """
    return 1.0 - ssim(fake.clamp(-1, 1), real.clamp(-1, 1), data_range=2.0).float().mean()


def multiscale_l1(
    outputs: list[torch.Tensor], target01: torch.Tensor, weights: list[float], mode: str = "bilinear"
) -> torch.Tensor:
    """sum_i w_i L1(resize(target, output_i size) * 2 - 1, output_i); outputs largest first."""
    total = target01.new_zeros((), dtype=torch.float32)
    with _float32(target01):
        for out, w in zip(outputs, weights):
            if w:
                t = F.interpolate(target01.float(), size=out.shape[-2:], mode=mode, align_corners=False, antialias=True)
                total = total + w * (t * 2 - 1 - out.float()).abs().mean()
    return total


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Batch mean of the per-sample KL(N(mean, var) || N(0, I)) summed over c, h, w."""
    with _float32(mean):
        mean, logvar = mean.float(), logvar.float()
        return (0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3))).mean()


def vf_alignment_loss(
    projected: torch.Tensor,
    vfm_features: torch.Tensor,
    distmat_margin: float = 0.0,
    cos_margin: float = 0.0,
    distmat_weight: float = 1.0,
    cos_weight: float = 1.0,
) -> torch.Tensor:
    """VA-VAE's VF loss between projected latents p (B, C, h, w) and detached VFM features f (B, C, H, W).

    f is average-pooled to the latent grid. distmat: mean relu(|cos(p_i, p_j) - cos(f_i, f_j)| - m_d) over all
    position pairs; cos: mean relu(1 - m_c - cos(f_hw, p_hw)).
    """
    with _float32(projected):
        projected, f = projected.float(), vfm_features.detach().float()
        if f.shape[-2:] != projected.shape[-2:]:
            f = F.adaptive_avg_pool2d(f, projected.shape[-2:])
        p_flat = F.normalize(projected.flatten(2), dim=1)
        f_flat = F.normalize(f.flatten(2), dim=1)
        p_cos = torch.einsum("bci,bcj->bij", p_flat, p_flat)
        f_cos = torch.einsum("bci,bcj->bij", f_flat, f_flat)
        distmat = F.relu((p_cos - f_cos).abs() - distmat_margin).mean()
        cos = F.relu(1 - cos_margin - F.cosine_similarity(f, projected, dim=1)).mean()
        return distmat_weight * distmat + cos_weight * cos


def adaptive_vf_weight(
    rec_loss: torch.Tensor, vf_loss: torch.Tensor, last_layer: torch.Tensor, base: float
) -> torch.Tensor:
    """base * clamp(|grad_W rec| / (|grad_W vf| + 1e-4), 0, 1e8), detached (W: the encoder's last linear layer)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_vf = torch.autograd.grad(vf_loss, last_layer, retain_graph=True)[0]
    with _float32(g_rec):  # the norms in float32 whatever the parameter's dtype
        return (base * (g_rec.float().norm() / (g_vf.float().norm() + 1e-4)).clamp(0, 1e8)).detach()


def discriminator_term_guard(loss: torch.Tensor, limit: float = 1e4) -> torch.Tensor:
    """The official discriminator-side safe-loss rule: a term that is non-finite or above `limit` in magnitude
    turns the D loss into NaN, which skips the D step (on the device, gradients zero)."""
    ok = torch.isfinite(loss) & (loss.abs() <= limit)
    return torch.where(ok, loss, torch.full_like(loss, float("nan")))


class SafeLossGuard:
    """The official "safe loss" rule (`training/loss.py`, `TotalLoss`): reject a generator step whose L1, L2,
    LPIPS, SSIM or multi-scale loss is non-finite or above `ratio` x its value at the previous accepted step
    (only where that value exceeds `floor`), once `active`.

    Everything stays on the device: `guard(total)` returns the loss unchanged when safe and NaN otherwise
    (`torch.where`, so the gradients are zero rather than NaN), and the optimizer step skips a NaN loss like any
    non-finite one, on every rank. `commit(applied)` then records this step's values as the reference, for
    accepted steps only. With several micro-batches, each is checked against the previous step and the step's
    reference is their mean.
    """

    def __init__(self, ratio: float = 10.0, floor: float = 1e-6) -> None:
        self.ratio, self.floor = ratio, floor
        self.active = False
        self.prev: dict[str, torch.Tensor] = {}
        self.rejected: torch.Tensor | None = None  # device counter of rejected micro-batches
        self._current: dict[str, torch.Tensor] = {}
        self._step: dict[str, list[torch.Tensor]] = {}

    def watch(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Record one term of this micro-batch (an unweighted 0-d loss); returns it unchanged."""
        self._current[name] = value.detach().float()
        return value

    def __call__(self, total: torch.Tensor) -> torch.Tensor:
        current, self._current = self._current, {}
        for name, value in current.items():
            self._step.setdefault(name, []).append(value)
        if not self.active or not current:
            return total
        safe = torch.ones((), dtype=torch.bool, device=total.device)
        for name, value in current.items():
            ok = torch.isfinite(value)
            if name in self.prev:
                prev = self.prev[name].to(value.device)
                ok = ok & ((prev <= self.floor) | (value <= self.ratio * prev))
            safe = safe & ok
        unsafe = (~safe).float()
        self.rejected = unsafe if self.rejected is None else self.rejected + unsafe
        return torch.where(safe, total, torch.full_like(total, float("nan")))

    def commit(self, applied: torch.Tensor) -> None:
        """After the optimizer step: an applied step's mean term values become the reference."""
        step, self._step = self._step, {}
        for name, values in step.items():
            mean = torch.stack(values).mean()
            prev = self.prev.get(name, torch.zeros_like(mean)).to(mean.device)  # 0: no reference, nothing rejected
            self.prev[name] = torch.where(applied.to(mean.device) > 0, mean, prev)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"prev.{k}": v.detach().cpu() for k, v in self.prev.items()}
        if self.rejected is not None:
            state["rejected"] = self.rejected.detach().cpu()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        self.prev = {k[len("prev.") :]: v.to(device) for k, v in state.items() if k.startswith("prev.")}
        self.rejected = state["rejected"].to(device) if "rejected" in state else None
