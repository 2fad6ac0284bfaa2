"""A run that starts from another run's checkpoint: the later stage of a longer schedule.

Official LightningDiT trains in two stages (tianciB/VFM-VAE@b3a752a tools/preprocess_for_lightningdit/
train_lightningdit_xl_1_stage_1.yaml, `train.resume: true`, hustvl/LightningDiT train.py): stage 1 loads stage 0's
last checkpoint (model, EMA, optimizer and the step count) and trains on to 700k steps with uniform t instead of
lognormal t. A recipe says so with `start_from: RUN_OR_CHECKPOINT`; the stage runs in its own run folder, so stage
0's folder, export and checkpoints stay as they were.

What is carried over: the weights, the EMA, the AdamW state and the step and image counts (so the learning-rate
schedule, the per-step draws and the data order continue where stage 0 stopped). Not carried over: the RNG and data
states of each process (the loops draw from per-step generators, so nothing depends on them) and the skip counters;
so the stage may run on another number of processes than the one it starts from.
"""

from __future__ import annotations

import json
from pathlib import Path

from vfmvae.checkpoint.digest import file_sha256
from vfmvae.checkpoint.serialize import CheckpointFormatError, load_state, load_tensors
from vfmvae.checkpoint.training import CheckpointManager, TrainingCheckpoint

__all__ = ["find_start_checkpoint", "load_start"]


def find_start_checkpoint(start_from: str | Path) -> Path:
    """The checkpoint folder `start_from` names: itself, or the newest complete one of a run folder."""
    path = Path(start_from)
    if not path.is_dir():
        raise FileNotFoundError(f"start_from: {path} is neither a run folder nor a checkpoint folder")
    manager = CheckpointManager(path.parent)
    if manager.is_complete(path):
        return path
    latest = CheckpointManager(path).latest()
    if latest is None:
        raise FileNotFoundError(
            f"start_from: {path} holds no complete checkpoint (a run folder with checkpoints/step-*/meta.json, "
            "or one such checkpoint folder); finish the earlier stage first"
        )
    return latest


def load_start(start_from: str | Path) -> TrainingCheckpoint:
    """The shared part of the checkpoint `start_from` names (weights, EMA, optimizer state, counts), checked
    against the hashes recorded when it was saved; `rank_state` is empty (see the module docstring)."""
    path = find_start_checkpoint(start_from)
    meta = json.loads((path / "meta.json").read_text())
    recorded = meta.get("sha256") or {}
    for name in ("model.safetensors", "ema.safetensors", "state.safetensors", "state.json"):
        if name in recorded and (path / name).exists() and file_sha256(path / name) != recorded[name]:
            raise CheckpointFormatError(f"start_from: {path / name} differs from the sha256 recorded when it was saved")
    ema = path / "ema.safetensors"
    return TrainingCheckpoint(
        path=path,
        step=int(meta["step"]),
        images_seen=int(meta["images_seen"]),
        model=load_tensors(path / "model.safetensors"),
        ema=load_tensors(ema) if ema.exists() else None,
        state=load_state(path / "state"),
        rank_state={},
        meta=meta,
    )
