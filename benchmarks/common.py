"""Helpers shared by the benchmark scripts: environment description and JSON output."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

import torch


def environment() -> dict:
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    return {
        "date": datetime.date.today().isoformat(),
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def emit(result: dict, out: str | None) -> None:
    text = json.dumps({**result, "env": environment(), "command": " ".join(["python", *sys.argv])}, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


# dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets
_PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0, "L40S": 362.0}


def peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    """The accelerator's dense bf16 peak, for MFU; None where unknown (pass --peak-tflops)."""
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in _PEAK_BF16_TFLOPS.items():  # most specific names first
        if key in name:
            return value
    return None


def count_flops(fn) -> int:
    """Floating-point operations of one call of `fn` (matmuls, convolutions and attention, forward and backward),
    counted by torch's FlopCounterMode: the numerator of MFU. Attention runs on the math SDPA backend while
    counting: the counter does not know the CPU flash kernel and would leave attention out (benchmarks/flops.py)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def cuda_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"peak_memory_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
