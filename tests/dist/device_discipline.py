"""Run `python -m vfmvae ...` (or a script) with collectives that reject host tensors, as NCCL does.

    torchrun --nproc-per-node=2 device_discipline.py -m vfmvae train tokenizer ...
    torchrun --nproc-per-node=1 device_discipline.py --script snippet.py

On a CPU run the run's device *is* the host, so a tensor made without `device=` reaches gloo and works, while
under NCCL the same line fails at the first step. To catch that without a GPU, every tensor is tagged with
where it came from: a factory called without a device (`torch.tensor([...])`, `torch.zeros(3)`), `.cpu()`, or
an operation whose tensor inputs are all such host tensors makes a host tensor; `.to(device)`, a factory given
a device, or anything computed from a device tensor (parameters moved with `.to(device)`, gradients, losses)
does not. Every `torch.distributed` collective then raises for a host tensor or a tensor off the run's device.
"""

from __future__ import annotations

import contextlib
import functools
import runpy
import sys

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

FACTORIES = {torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
             torch.rand, torch.randn, torch.randint, torch.linspace, torch.eye, torch.randperm, torch.from_numpy,
             torch.scalar_tensor}
PLACEMENTS = {torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.type_as, torch.Tensor.new_tensor,
              torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full, torch.Tensor.new_empty}
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
               "reduce", "reduce_scatter", "all_to_all_single", "gather", "scatter")
TAG = "_made_on_host"


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _tag(out, host: bool) -> None:
    for t in _tensors(out):
        try:
            setattr(t, TAG, host)
        except (AttributeError, RuntimeError):  # e.g. tensors of C++-only subclasses
            pass


def _placement_is_host(func, args, kwargs) -> bool | None:
    """True for `.cpu()`; False for an explicit device placement; None when only the dtype changes."""
    if func is torch.Tensor.cuda:
        return False
    if func in (torch.Tensor.new_tensor, torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full,
                torch.Tensor.new_empty, torch.Tensor.type_as):
        return None  # inherits the source tensor's device
    placed = kwargs.get("device") is not None or any(
        isinstance(a, (torch.device, str, torch.Tensor)) for a in args[1:])
    return False if placed else None


class HostTensorTracker(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, (torch.Tensor, list, tuple)):
            return out
        if func in FACTORIES:
            _tag(out, kwargs.get("device") is None)
        elif func is torch.Tensor.cpu:
            _tag(out, True)
        elif func in PLACEMENTS:
            host = _placement_is_host(func, args, kwargs)
            _tag(out, getattr(args[0], TAG, False) if host is None else host)
        else:
            inputs = list(_tensors((args, kwargs)))
            # a computation on host tensors only stays on the host; one device input makes it a device op
            _tag(out, bool(inputs) and all(getattr(t, TAG, False) for t in inputs))
        return out


def _checked(name: str, original):
    @functools.wraps(original)
    def collective(*args, **kwargs):
        from vfmvae import distributed as dist_utils

        expected = dist_utils.default_device()
        for t in _tensors((args, kwargs)):
            if getattr(t, TAG, False) or t.device.type != expected.type:
                raise RuntimeError(f"device discipline: torch.distributed.{name} got a host tensor "
                                   f"(shape {tuple(t.shape)}); the run's device is {expected} and NCCL serves only that")
        return original(*args, **kwargs)

    return collective


@contextlib.contextmanager
def checked_collectives():
    """Within: host tensors are tagged and every collective rejects them (see the module docstring)."""
    saved = {name: getattr(dist, name) for name in COLLECTIVES if hasattr(dist, name)}
    try:
        for name, original in saved.items():
            setattr(dist, name, _checked(name, original))
        with HostTensorTracker():
            yield
    finally:
        for name, original in saved.items():
            setattr(dist, name, original)


def main() -> None:
    if len(sys.argv) < 3 or sys.argv[1] not in ("-m", "--script"):
        raise SystemExit(__doc__)
    kind, target = sys.argv[1], sys.argv[2]
    sys.argv = sys.argv[2:]
    with checked_collectives():
        if kind == "-m":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
