"""Helpers shared by the benchmark scripts: environment description and JSON output."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

import torch


def environment() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()})"
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
