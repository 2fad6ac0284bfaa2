"""Where a converted diffusers model lives: the device and precision of the model it was converted from."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["placed_like"]


def placed_like(model: nn.Module, param: torch.Tensor) -> nn.Module:
    """`model` on `param`'s device and in its precision (a float32 model is not cast: diffusers warns on casts),
    in eval mode."""
    model.to(device=param.device)
    if param.dtype != torch.float32:
        model.to(dtype=param.dtype)
    return model.eval()
