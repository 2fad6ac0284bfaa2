"""What both trainers share around the step: the autocast context for a precision, and the run log
(`RUN/metrics.jsonl`, one JSON record per logged step, mirrored to TensorBoard when asked)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["autocast_factory", "RunLog", "peak_memory", "scalars_to_floats"]


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """fp32: no autocast; bf16 / fp16: autocast on the device (fp16 also needs a GradScaler, made by the trainer);
    official: no autocast around the networks (the tokenizer's float16 blocks set their own, see
    tokenizer_training/precision.py)."""
    if precision in ("fp32", "official"):
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


class RunLog:
    """Appends records to RUN/metrics.jsonl; numeric fields also go to RUN/tensorboard against `x_key`."""

    def __init__(self, run_dir: Path, *, tensorboard: bool, x_key: str) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.x_key = x_key
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        with open(self.path, "ab+") as f:
            if f.seek(0, 2) > 0:
                f.seek(-1, 2)
                if f.read(1) != b"\n":  # a line torn by a full disk or a kill: end it, keep this record whole
                    line = b"\n" + line
            f.write(line)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "images"):
                    self.writer.add_scalar(key, value, record[self.x_key])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def peak_memory(device: torch.device) -> dict[str, float]:
    """{"peak_memory_GiB": ...} of this process on a CUDA device since the start (a log field); {} elsewhere."""
    if device.type != "cuda":
        return {}
    return {"peak_memory_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}


def scalars_to_floats(scalars: dict[str, Any]) -> dict[str, float]:
    """Logged values kept as device tensors during the step, read back together (one transfer per device)."""
    out: dict[str, float] = {}
    by_device: dict[torch.device, list[str]] = {}
    for key, value in scalars.items():
        if torch.is_tensor(value):
            by_device.setdefault(value.device, []).append(key)
        else:
            out[key] = float(value)
    for keys in by_device.values():
        out.update(zip(keys, torch.stack([scalars[k].detach().float().reshape(()) for k in keys]).tolist()))
    return {k: out[k] for k in scalars}
