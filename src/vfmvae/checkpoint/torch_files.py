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
    """The line of torch's message that says what was refused, without its advice to turn the check off."""
    lines = [" ".join(line.split()) for line in str(err).splitlines() if line.strip()]
    advice = ("Weights only load failed", "Check the documentation", "weights_only")
    useful = [line for line in lines if not any(a in line for a in advice)]
    text = (useful or lines or [type(err).__name__])[0].replace("WeightsUnpickler error:", "").strip()
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
