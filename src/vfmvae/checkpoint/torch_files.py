"""Reading `.pt`/`.pth` files written by other projects, without ever running pickled code.

Every place that imports an official or third-party torch file goes through `load_weights_only`, so a
malicious or foreign pickle is refused the same way everywhere: one line naming the file and what was
refused, never torch's multi-line advice to turn the safety off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vfmvae.checkpoint.serialize import CheckpointFormatError

__all__ = ["load_weights_only"]


def _short_reason(err: BaseException) -> str:
    text = str(err)
    for line in text.splitlines():  # torch puts the actual refusal on the "WeightsUnpickler error" line
        if "WeightsUnpickler error" in line:
            text = line.split("WeightsUnpickler error:", 1)[-1]
            break
    else:
        text = text.splitlines()[0] if text else type(err).__name__
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def load_weights_only(path: str | Path, what: str = "file") -> Any:
    """`torch.load(path, weights_only=True)` on CPU; anything else becomes one `CheckpointFormatError` line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (foreign objects), RuntimeError (not a torch file), EOFError, ...
        raise CheckpointFormatError(
            f"{what} {path}: refused, not a plain tensor file ({type(err).__name__}: {_short_reason(err)}); "
            "vfmvae reads .pt/.pth only with weights_only=True and never runs pickled code"
        ) from None
