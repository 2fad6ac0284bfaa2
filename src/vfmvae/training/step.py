"""One optimizer step over k micro-batches, correct under DDP and safe against non-finite values.

* Gradient accumulation *averages*: each micro-batch loss (a mean over its samples) is weighted by its
  share of the samples, so k micro-batches equal one k-times batch (the official VFM-VAE loop
  multiplies by k instead; see docs/architecture.md).
* Under DDP, gradients are synchronised only on the last micro-batch (`no_sync`), and DDP averages
  them across ranks: W ranks x B samples equal one process with W x B samples.
* A non-finite loss or gradient on any rank skips the step on every rank (the flag is all-reduced so
  the ranks never diverge); nothing non-finite reaches the weights. A caller's `accepted` flag (the safe-loss
  guard's) can skip the step the same way.
* No host synchronisation: the loss, the finiteness flag and the gradient norm stay on the device. With
  a fused optimizer (AdamW/Adam/SGD with `fused=True`) the skip itself happens on the device too, through
  the optimizer's `found_inf` input (the mechanism GradScaler uses), so the CPU can queue the next step
  while the GPU still runs this one. The values are read back only when a caller asks for them
  (`StepResult.loss`, `.skipped`, `.grad_norm`), which a training loop does at its logging interval.
  Other optimizers, and fp16 with a GradScaler, read the flag back once per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vfmvae import distributed as dist_utils

__all__ = ["StepResult", "fused_optimizer_supported", "optimizer_step"]


@dataclass
class StepResult:
    """Device tensors of one step; the float/bool properties read them back (a host sync, when asked)."""

    loss_t: torch.Tensor  # sample-weighted mean loss over the micro-batches (this rank), 0-d
    applied_t: torch.Tensor  # 1.0 when the update was applied, 0.0 when a non-finite value skipped it
    grad_norm_t: torch.Tensor  # total gradient norm before clipping (nan when skipped), 0-d
    num_samples: int  # samples this rank processed

    @property
    def loss(self) -> float:
        return float(self.loss_t)

    @property
    def skipped(self) -> bool:
        return bool(self.applied_t < 1.0)

    @property
    def grad_norm(self) -> float:
        return float(self.grad_norm_t)


def fused_optimizer_supported(device: torch.device) -> bool:
    """Whether torch has fused Adam/AdamW kernels for `device` (CUDA and, since torch 2.4, CPU)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    return device.type in _get_fused_kernels_supported_devices()


def _supports_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Fused torch optimizers skip their update on the device when given `found_inf` (as under GradScaler)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        g.get("fused") for g in optimizer.param_groups
    )


def optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    *,
    batch_size_of: Callable[[Any], int] = lambda b: len(b),
    grad_clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    params: Sequence[torch.nn.Parameter] | None = None,
    all_reduce_grads: bool = False,
    accepted: Callable[[], torch.Tensor | None] | None = None,
) -> StepResult:
    """Accumulate gradients over `micro_batches`, then step `optimizer` unless something was non-finite.

    `params` restricts clipping and the finiteness check (default: all of `model`'s). `all_reduce_grads`
    all-reduces (averages) their gradients over ranks by hand, for models that are not wrapped in DDP.
    `accepted()`, called after the micro-batches, may veto the step with a 0-d device bool (the safe-loss guard,
    which zeroes the loss of each micro-batch it drops, says False when it dropped all of them); the step is then
    skipped like a non-finite one, without a read-back.
    """
    sizes = [batch_size_of(b) for b in micro_batches]
    total = sum(sizes)
    if total == 0:
        raise ValueError("optimizer_step got no samples")
    optimizer.zero_grad(set_to_none=True)
    loss_sum, finite = _accumulate(model, micro_batches, sizes, loss_fn, scaler)
    params = [p for p in (params if params is not None else model.parameters()) if p.grad is not None]
    if all_reduce_grads and dist_utils.is_distributed() and params:
        _average_over_ranks(params)
    if scaler is not None:
        scaler.unscale_(optimizer)
    if params:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    else:
        grad_norm = torch.zeros((), device=loss_sum.device)
    ok = finite.to(grad_norm.device) & torch.isfinite(grad_norm)
    veto = accepted() if accepted is not None else None
    if veto is not None:
        ok = ok & veto.to(grad_norm.device)
    applied = ok.float().reshape(1)
    if dist_utils.is_distributed():
        torch.distributed.all_reduce(applied, op=torch.distributed.ReduceOp.MIN)
    applied = applied.reshape(())
    reported_norm = torch.where(applied > 0, grad_norm, torch.full_like(grad_norm, float("nan")))

    # fused optimizers skip on the device (found_inf = 1 leaves weights, moments and step counts untouched);
    # the others, and a GradScaler, need the flag on the host: one read-back per step on that path
    skip_on_device = scaler is None and _supports_found_inf(optimizer)
    if not skip_on_device and float(applied) < 1.0:
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # lets the scaler lower its scale after an overflow
        return StepResult(loss_sum, applied, reported_norm, total)
    if grad_clip is not None and params:
        # by a non-finite norm this makes the gradients nan, which only the device-side skip ever sees
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    elif skip_on_device:
        optimizer.found_inf = (1.0 - applied).to(torch.float32)
        optimizer.grad_scale = None
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf, optimizer.grad_scale
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum, applied, reported_norm, total)


def _accumulate(
    model: nn.Module,
    micro_batches: Sequence[Any],
    sizes: list[int],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    scaler: torch.amp.GradScaler | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of every micro-batch's loss weighted by its share of the samples (DDP synchronises only on the
    last); the weighted loss sum and whether every loss was finite, both device tensors."""
    total = sum(sizes)
    loss_sum: torch.Tensor | None = None
    finite: torch.Tensor | None = None
    for i, (batch, n) in enumerate(zip(micro_batches, sizes)):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss = loss_fn(model, batch)
            weighted = loss * (n / total)
            ok = torch.isfinite(loss.detach()).all()
            (scaler.scale(weighted) if scaler is not None else weighted).backward()
        part = weighted.detach().float()
        loss_sum = part if loss_sum is None else loss_sum + part
        finite = ok if finite is None else finite & ok
    return loss_sum, finite


def _average_over_ranks(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of `params` over ranks in one all-reduce (models not wrapped in DDP)."""
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist_utils.all_reduce_mean(flat)
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.grad.numel()].view_as(p.grad))
        offset += p.grad.numel()
