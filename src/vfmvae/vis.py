"""Image grids: where people would rather look than read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["make_grid", "save_grid", "to_uint8_images"]


def to_uint8_images(images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Float images in `value_range` (or uint8) -> uint8 (N, 3, H, W), rounding half up."""
    if images.dtype == torch.uint8:
        return images
    lo, hi = value_range
    x = (images.detach().float().cpu() - lo) / (hi - lo)
    return (x * 255 + 0.5).clamp(0, 255).to(torch.uint8)


def make_grid(
    images: torch.Tensor,
    nrow: int = 8,
    padding: int = 2,
    row_labels: Sequence[str] | None = None,
    background: int = 255,
) -> Image.Image:
    """Tile uint8 (N, 3, H, W) images into one PIL image, `nrow` per row, optionally labelled per row."""
    images = to_uint8_images(images)
    n, _, h, w = images.shape
    rows = max(1, -(-n // nrow))
    label_w = 0
    if row_labels:
        label_w = 7 * max(len(s) for s in row_labels) + 2 * padding
    grid = np.full((rows * (h + padding) + padding, label_w + nrow * (w + padding) + padding, 3), background, np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()
    for i in range(n):
        r, c = divmod(i, nrow)
        y, x = padding + r * (h + padding), label_w + padding + c * (w + padding)
        grid[y : y + h, x : x + w] = arr[i]
    img = Image.fromarray(grid)
    if row_labels:
        draw = ImageDraw.Draw(img)
        for r, text in enumerate(row_labels[:rows]):
            draw.text((padding, padding + r * (h + padding) + h // 2 - 5), text, fill=(0, 0, 0))
    return img


def save_grid(images: torch.Tensor, path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images, **kwargs).save(path)
    return path
