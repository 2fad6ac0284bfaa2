"""What a training checkpoint holds, named once (in the spirit of NVlabs/edm2's `CheckpointIO`): `run.save(state)`
writes it, `restore(state, run.resume())` loads it back.

The files of a checkpoint (vfmvae.checkpoint.training) and what goes where:

    model.safetensors   `model`'s weights (without the frozen weights under `frozen_prefix`, rebuilt from the config)
    ema.safetensors     the EMA's weights (likewise)
    state.*             every part of `shared` under its name (optimizers, discriminators, the safe-loss references;
                        a part that is None is stored as {}), and the run's counters
    rank-NNN.*          every part of `per_rank` under its name (the data position), and this rank's RNG

A part is anything with `state_dict()` and `load_state_dict(state)`; modules are loaded strictly, with one line
naming the first mismatch. A part whose `load_state_dict` takes the device its tensors belong on (the safe-loss
guards) is named with `OnDevice.wrap(part, device)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vfmvae.checkpoint.training import TrainingCheckpoint, load_state_strict
from vfmvae.training.ema import EMA

__all__ = ["CheckpointState", "OnDevice", "restore"]


@dataclass(frozen=True)
class OnDevice:
    """A part whose `load_state_dict(state, device)` puts its tensors on `device`."""

    part: Any
    device: torch.device

    @classmethod
    def wrap(cls, part: Any, device: torch.device) -> OnDevice | None:
        return None if part is None else cls(part, device)

    def state_dict(self) -> dict[str, Any]:
        return self.part.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.part.load_state_dict(state, self.device)


@dataclass
class CheckpointState:
    model: nn.Module
    ema: EMA
    shared: dict[str, Any] = field(default_factory=dict)  # name -> part (None: stored as {}, nothing to restore)
    per_rank: dict[str, Any] = field(default_factory=dict)  # name -> part; each rank saves its own
    frozen_prefix: str | None = None  # weights left out of the checkpoint (e.g. "vfm.": the tokenizer's frozen VFM)

    def model_weights(self) -> dict[str, torch.Tensor]:
        return self._without_frozen(self.model.state_dict())

    def ema_weights(self) -> dict[str, torch.Tensor]:
        return self._without_frozen(self.ema.state_dict())

    def shared_state(self) -> dict[str, Any]:
        return {name: part.state_dict() if part is not None else {} for name, part in self.shared.items()}

    def rank_state(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.per_rank.items()}

    def _without_frozen(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.frozen_prefix is None:
            return state
        return {k: v for k, v in state.items() if not k.startswith(self.frozen_prefix)}


def restore(state: CheckpointState, ckpt: TrainingCheckpoint | None) -> None:
    """Load `ckpt` (None: a new run, nothing to do) into the parts of `state` that exist when training is built:
    the weights, the EMA and the shared parts. The per-rank data position is read by the data stream when it is
    made (`ckpt.rank_state["data"]`)."""
    if ckpt is None:
        return
    optional = (state.frozen_prefix,) if state.frozen_prefix is not None else ()
    # a checkpoint of another architecture is refused in one line
    load_state_strict(state.model, ckpt.model, ckpt.path / "model.safetensors", optional_prefixes=optional)
    load_state_strict(state.ema.model, ckpt.ema, ckpt.path / "ema.safetensors", optional_prefixes=optional)
    for name, part in state.shared.items():
        if part is None:
            continue
        if isinstance(part, nn.Module):
            load_state_strict(part, ckpt.state[name], ckpt.path / "state.safetensors")
        else:  # a part newer than the checkpoint (the safe-loss references, say) starts empty
            part.load_state_dict(ckpt.state.get(name, {}))
