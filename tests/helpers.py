"""Small models and data shared by the tests (no weights, no downloads)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vfmvae.checkpoint import PretrainedMixin


@dataclass(frozen=True)
class TinyNetConfig:
    channels: int = 8
    num_classes: int = 4


class TinyNet(PretrainedMixin, nn.Module):
    """A classifier on uint8 images: enough parameters and a buffer to exercise checkpoints and DDP."""

    config_class = TinyNetConfig

    def __init__(self, config: TinyNetConfig) -> None:
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(3, config.channels, 3, padding=1)
        self.head = nn.Linear(config.channels, config.num_classes)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0
        x = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(x)


def classification_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch["image"]), batch["label"])
