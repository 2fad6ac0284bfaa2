"""Process-group setup for torchrun (env://) with a single-process fallback, after EDM2.

The same entry point runs as `vfmvae ...` (one process, CPU or one GPU) and as
`torchrun --nproc-per-node=8 -m vfmvae ...`. Under torchrun the process group is created even for one
process, so one GPU runs the same collectives as eight. NCCL serves a CUDA run, gloo a CPU run.
Only rank 0 prints, draws progress bars and writes shared files.

The device rule (docs/architecture.md, "Collectives and devices"): every tensor handed to a collective lives
on the run's device, the one the backend serves (`collective_device()`); NCCL has no CPU path, so a host
tensor there fails at the first step. `all_reduce_sum`/`all_reduce_mean` check this and say so in one line.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "destroy_distributed",
    "is_distributed",
    "rank",
    "world_size",
    "local_rank",
    "is_main_process",
    "barrier",
    "all_reduce_mean",
    "all_reduce_sum",
    "gather_rows",
    "print0",
    "default_device",
    "parse_device",
    "collective_device",
    "launched_by_torchrun",
]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return rank() == 0


def default_device() -> torch.device:
    """The device this process should use: its local GPU under torchrun, else cuda:0, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another env:// launcher) started this process, whatever the number of processes."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(
    backend: str | None = None, timeout_minutes: float = 30.0, device: torch.device | str | None = None
) -> torch.device:
    """Join the torchrun process group when launched by torchrun (even as its only process); otherwise run
    as a single process without a group.

    `device` overrides the default device (a run's `--device`); the backend follows it: NCCL for CUDA, gloo
    for CPU. Returns the device for this process. Safe to call twice.
    """
    device = torch.device(device) if device is not None else default_device()
    if is_distributed() or not launched_by_torchrun():
        return device
    if backend is None:
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        timeout=datetime.timedelta(minutes=timeout_minutes),
        device_id=device if backend == "nccl" else None,
    )
    return device


def collective_device() -> torch.device:
    """The device whose tensors the process group's backend reduces: this rank's GPU under NCCL, else CPU."""
    if is_distributed() and "nccl" in str(dist.get_backend()).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_collective_device(tensor: torch.Tensor) -> None:
    expected = collective_device()
    if tensor.device.type != expected.type:
        raise RuntimeError(
            f"a collective got a tensor on {tensor.device}, but the process group ({dist.get_backend()}) "
            f"serves {expected}: create it on the run's device"
        )


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In place sum over ranks (a no-op for one process)."""
    if is_distributed():
        _check_collective_device(tensor)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        _check_collective_device(tensor)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world_size()
    return tensor


def gather_rows(local: torch.Tensor, total: int) -> torch.Tensor:
    """Rows of all ranks in global index order, on the CPU. Rank r of W holds the rows of indices r, r + W, ...
    (in that order); every rank receives the whole (total, ...) tensor."""
    world = world_size()
    if world == 1:
        return local.cpu()
    per = -(-total // world)
    device = collective_device()
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype)
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, total, world))].cpu()
    return out


def print0(*args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only, flushed so logs interleave sensibly under torchrun."""
    if is_main_process():
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)
        if kwargs.get("file") is None:
            sys.stdout.flush()


def parse_device(name: str) -> torch.device:
    """`cpu`, `cuda`, `cuda:N` or `mps`, checked against this machine (one clear error instead of a CUDA traceback)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {name!r} (use cpu, cuda, cuda:N or mps): {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available on this machine; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r}: vfmvae runs on cpu, cuda or mps")
    return device
