"""Safe persistence: atomic writes, pickle-free state, model folders and resumable training checkpoints."""

from vfmvae.checkpoint.atomic import atomic_directory, atomic_write, atomic_write_bytes, atomic_write_text
from vfmvae.checkpoint.pretrained import PretrainedMixin, load_pretrained, load_state_dict_strict
from vfmvae.checkpoint.serialize import CheckpointFormatError, load_state, load_tensors, save_state, save_tensors
from vfmvae.checkpoint.training import (
    CheckpointManager,
    TrainingCheckpoint,
    capture_rng_state,
    load_state_strict,
    restore_rng_state,
)

__all__ = [
    "CheckpointFormatError",
    "CheckpointManager",
    "PretrainedMixin",
    "TrainingCheckpoint",
    "atomic_directory",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "capture_rng_state",
    "load_pretrained",
    "load_state",
    "load_state_dict_strict",
    "load_state_strict",
    "load_tensors",
    "restore_rng_state",
    "save_state",
    "save_tensors",
]
