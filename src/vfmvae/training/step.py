"""One optimizer step over k micro-batches, correct under DDP and safe against non-finite values.

* Gradient accumulation *averages*: each micro-batch loss (a mean over its samples) is weighted by its
  share of the samples, so k micro-batches equal one k-times batch (the official VFM-VAE loop
  multiplies by k instead; see docs/architecture.md).
* Under DDP, gradients are synchronised only on the last micro-batch (`no_sync`), and DDP averages
  them across ranks: W ranks x B samples equal one process with W x B samples.
* A non-finite loss or gradient on any rank skips the step on every rank (the flag is all-reduced so
  the ranks never diverge); nothing non-finite reaches the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vfmvae import distributed as dist_utils

__all__ = ["StepResult", "optimizer_step"]


@dataclass
class StepResult:
    loss: float            # sample-weighted mean loss over the micro-batches (this rank)
    skipped: bool          # True when a non-finite value made the step a no-op
    grad_norm: float       # total gradient norm before clipping (nan when skipped)
    num_samples: int       # samples this rank processed


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
    sync_gradients: bool = False,
) -> StepResult:
    """Accumulate gradients over `micro_batches`, then step `optimizer` unless something was non-finite.

    `params` restricts clipping and the finiteness check (default: all of `model`'s). `sync_gradients`
    averages their gradients over ranks by hand, for models that are not wrapped in DDP.
    """
    sizes = [batch_size_of(b) for b in micro_batches]
    total = sum(sizes)
    if total == 0:
        raise ValueError("optimizer_step got no samples")
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), dtype=torch.float64)
    finite = True
    for i, (batch, n) in enumerate(zip(micro_batches, sizes)):
        last = i == len(micro_batches) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            loss = loss_fn(model, batch)
            weighted = loss * (n / total)
            finite &= bool(torch.isfinite(loss.detach()).all())
            (scaler.scale(weighted) if scaler is not None else weighted).backward()
        loss_sum += weighted.detach().double().cpu()

    params = [p for p in (params if params is not None else model.parameters()) if p.grad is not None]
    if sync_gradients and dist_utils.is_distributed() and params:
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist_utils.all_reduce_mean(flat)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.grad.numel()].view_as(p.grad))
            offset += p.grad.numel()
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.zeros(())
    flag = torch.tensor([1.0 if finite and bool(torch.isfinite(grad_norm)) else 0.0], device=grad_norm.device)
    if dist_utils.is_distributed():
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    if flag.item() < 1.0:
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.update()  # lets the scaler lower its scale after an overflow
        return StepResult(loss=float(loss_sum), skipped=True, grad_norm=float("nan"), num_samples=total)
    if grad_clip is not None:
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=float(loss_sum), skipped=False, grad_norm=float(grad_norm), num_samples=total)
