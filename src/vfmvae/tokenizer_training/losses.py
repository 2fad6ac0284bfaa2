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

from vfmvae import distributed as dist_utils
from vfmvae.evaluation.image_metrics import ssim

__all__ = [
    "ssim_loss",
    "multiscale_l1",
    "multiscale_l1_terms",
    "kl_loss",
    "vf_alignment_loss",
    "adaptive_vf_weight",
    "SafeLossGuard",
    "DiscriminatorGuard",
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


def multiscale_l1_terms(
    outputs: list[torch.Tensor], target01: torch.Tensor, mode: str = "bilinear"
) -> list[torch.Tensor]:
    """L1(resize(target, output_i size) * 2 - 1, output_i) per lower-resolution output (largest first),
    unweighted: the official `multiscale_pixel_loss_block{i}` terms. The target is resized in [0, 1] with the
    VFM's interpolation, antialiased when it shrinks."""
    terms = []
    with _float32(target01):
        for out in outputs:
            resized = F.interpolate(
                target01.float(), size=out.shape[-2:], mode=mode, align_corners=False, antialias=True
            )
            terms.append((resized * 2 - 1 - out.float()).abs().mean())
    return terms


def multiscale_l1(
    outputs: list[torch.Tensor], target01: torch.Tensor, weights: list[float], mode: str = "bilinear"
) -> torch.Tensor:
    """sum_i w_i L1(resize(target, output_i size) * 2 - 1, output_i); outputs largest first."""
    total = target01.new_zeros((), dtype=torch.float32)
    used = [(out, weight) for out, weight in zip(outputs, weights) if weight]
    for (_, weight), term in zip(used, multiscale_l1_terms([out for out, _ in used], target01, mode)):
        total = total + weight * term
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


class _MicroBatchGate:
    """What both safe-loss rules share: a rejected micro-batch contributes nothing, the others train.

    The official check (`training/loss.py`, `accumulate_gradients`) runs once per micro-batch, all-reduces the
    decision over ranks, and multiplies a rejected micro-batch's loss by zero, so that only its gradient is
    zero. Here the decision stays on the device: `torch.where` returns 0 instead of the loss (its gradient is
    zero), the decision is all-reduced with MIN, and the step's flag `step_accepted()` tells the optimizer step
    to skip when every micro-batch was rejected (the official one then steps with zero gradients; see
    docs/architecture.md)."""

    def __init__(self) -> None:
        self.active = False
        self.rejected: torch.Tensor | None = None  # device counter of rejected micro-batches
        self._accepted: torch.Tensor | None = None  # any micro-batch of the current step accepted

    def _gate(self, total: torch.Tensor, safe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if dist_utils.is_distributed():  # every rank drops the same micro-batch, as the official all-reduce
            flag = safe.float().reshape(1)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            safe = flag.reshape(()) > 0
        rejected = (~safe).float()
        self.rejected = rejected if self.rejected is None else self.rejected + rejected
        self._accepted = safe if self._accepted is None else self._accepted | safe
        return torch.where(safe, total, torch.zeros_like(total)), safe

    def step_accepted(self) -> torch.Tensor | None:
        """After the micro-batches of a step: False (device) when the guard rejected all of them; resets."""
        accepted, self._accepted = self._accepted, None
        return accepted

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rejected": self.rejected.detach().cpu()} if self.rejected is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        self.rejected = state["rejected"].to(device) if "rejected" in state else None


class DiscriminatorGuard(_MicroBatchGate):
    """The official discriminator-side rule: a micro-batch whose D term (fake, real or their sum, per
    discriminator) is non-finite or above `limit` in magnitude is dropped, once `active`."""

    def __init__(self, limit: float = 1e4) -> None:
        super().__init__()
        self.limit = limit
        self._current: list[torch.Tensor] = []

    def watch(self, value: torch.Tensor) -> torch.Tensor:
        """Record one term of this micro-batch (a 0-d loss); returns it unchanged."""
        self._current.append(value.detach().float())
        return value

    def __call__(self, total: torch.Tensor) -> torch.Tensor:
        current, self._current = self._current, []
        if not self.active or not current:
            return total
        safe = torch.ones((), dtype=torch.bool, device=total.device)
        for value in current:
            safe = safe & torch.isfinite(value) & (value.abs() <= self.limit)
        return self._gate(total, safe)[0]


class SafeLossGuard(_MicroBatchGate):
    """The official generator-side "safe loss" rule (`training/loss.py`, `TotalLoss`): once `active`, drop a
    micro-batch whose L1, L2, LPIPS, SSIM or multi-scale loss is non-finite or above `ratio` x its value in the
    previous accepted micro-batch (only where that value exceeds `floor`), or whose GAN, PatchGAN or feature-
    matching term is non-finite.

    `watch(name, value, relative=True)` records a term: `relative` terms get the ratio rule and become the
    reference of the next micro-batch when accepted (also before the guard is active, as the official
    reference follows every accepted micro-batch); the others are checked for finiteness only. `guard(total)`
    returns the loss, or 0 for a dropped micro-batch (see `_MicroBatchGate`).
    """

    def __init__(self, ratio: float = 10.0, floor: float = 1e-6) -> None:
        super().__init__()
        self.ratio, self.floor = ratio, floor
        self.prev: dict[str, torch.Tensor] = {}
        self._current: dict[str, tuple[torch.Tensor, bool]] = {}

    def watch(self, name: str, value: torch.Tensor, relative: bool = True) -> torch.Tensor:
        """Record one term of this micro-batch (an unweighted 0-d loss); returns it unchanged."""
        self._current[name] = (value.detach().float(), relative)
        return value

    def __call__(self, total: torch.Tensor) -> torch.Tensor:
        current, self._current = self._current, {}
        if not current:
            return total
        safe = torch.ones((), dtype=torch.bool, device=total.device)
        if self.active:
            for name, (value, relative) in current.items():
                ok = torch.isfinite(value)
                if relative and name in self.prev:
                    prev = self.prev[name].to(value.device)
                    ok = ok & ((prev <= self.floor) | (value <= self.ratio * prev))
                safe = safe & ok
            total, safe = self._gate(total, safe)
        else:
            self._accepted = safe if self._accepted is None else self._accepted | safe
        for name, (value, relative) in current.items():
            if relative:  # an accepted micro-batch's finite values are the next reference
                prev = self.prev.get(name, torch.zeros_like(value)).to(value.device)  # 0: no reference yet
                self.prev[name] = torch.where(safe & torch.isfinite(value), value, prev)
        return total

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), **{f"prev.{k}": v.detach().cpu() for k, v in self.prev.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        super().load_state_dict(state, device)
        self.prev = {k[len("prev.") :]: v.to(device) for k, v in state.items() if k.startswith("prev.")}
