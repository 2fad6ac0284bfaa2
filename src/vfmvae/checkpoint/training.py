"""Resumable training checkpoints: model, EMA, optimizer, step, images seen, RNG and data position.

Layout of one checkpoint (`run_dir/checkpoints/step-00001000/`):

    model.safetensors        trained weights
    ema.safetensors          EMA weights (if any)
    state.safetensors/json   optimizer, grad scaler and any other shared state (pickle-free, see serialize.py)
    rank-000.safetensors/json  per-rank state: RNG states and data-loader position
    meta.json                step, images seen, world size, config, versions; written last

The whole folder is built under a temporary name and renamed into place, so a kill or a full disk at
any moment leaves the previous checkpoint untouched and never a half-written "latest". `latest()`
only considers folders whose `meta.json` exists and whose listed files all have their recorded sizes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint.atomic import DiskFullError, atomic_directory, atomic_write_text, disk_full
from vfmvae.checkpoint.digest import file_sha256
from vfmvae.checkpoint.serialize import CheckpointFormatError, load_state, load_tensors, save_state, save_tensors

__all__ = ["CheckpointManager", "TrainingCheckpoint", "capture_rng_state", "load_state_strict", "restore_rng_state"]

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
# What an interrupted save or prune leaves beside the step folders (nothing else is ever removed):
_STAGING_DIR = re.compile(r"^\.staging-step-\d{8,}$")  # per-rank files gathered by save()
_TMP_DIR = re.compile(r"^\.step-\d{8,}\.[A-Za-z0-9_]+\.tmp$")  # atomic_directory's folder being built
_PRUNING_DIR = re.compile(r"^\.step-\d{8,}\.pruning$")  # an old checkpoint being deleted by _prune
_OLD_DIR = re.compile(r"^\.(step-\d{8,})\.old$")  # atomic_directory's replaced copy

log = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, Any]:
    """The state of every random generator this process uses (python, numpy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


RESUME_ADVICE = (
    "it was written by another architecture: resume it with the recipe that wrote it, or use another run.dir"
)


def load_state_strict(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    source: str | Path,
    *,
    optional_prefixes: tuple[str, ...] = (),
    advice: str = RESUME_ADVICE,
) -> None:
    """`module.load_state_dict(state)`, refusing a state of another architecture in one line.

    The line names `source` and the first parameter (in the module's order) that is missing or has another
    shape, with both shapes, then `advice`, instead of torch's dump of every key (kilobytes for a wrong file).
    Keys under `optional_prefixes` may be absent from `state` (the tokenizer's frozen VFM is not checkpointed).
    """
    own = module.state_dict()
    problems = []
    for key, value in own.items():
        if key not in state:
            if not key.startswith(optional_prefixes):
                problems.append(f"{key} {tuple(value.shape)} is missing from the checkpoint")
        elif tuple(state[key].shape) != tuple(value.shape):
            problems.append(
                f"{key} is {tuple(state[key].shape)} in the checkpoint but {tuple(value.shape)} in this model"
            )
    problems += [
        f"{key} {tuple(state[key].shape)} is in the checkpoint but not in this model" for key in state if key not in own
    ]
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointFormatError(f"{source} does not fit this model: {problems[0]}{more}; {advice}")
    module.load_state_dict(state, strict=not optional_prefixes)


@dataclass
class TrainingCheckpoint:
    """What `CheckpointManager.load` returns."""

    path: Path
    step: int
    images_seen: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]  # shared state (optimizer, scaler, ...), as passed to save()
    rank_state: dict[str, Any]  # this rank's state (rng, data position, ...)
    meta: dict[str, Any] = field(default_factory=dict)


# Bounds on what meta.json may claim: 1e10 steps or 1e13 images (10,000 ImageNet epochs) are beyond any run.
MAX_STEP = 10**10
MAX_IMAGES_SEEN = 10**13


def _check_meta(path: Path, meta: Any) -> None:
    """Refuse a meta.json whose counts are not what a save writes: a step or image count that is not a whole number
    in range, a step that is not the folder's (`step-00000300` holds step 300), a world size below 1."""
    where = path / "meta.json"
    if not isinstance(meta, dict):
        raise CheckpointFormatError(f"{where}: expected a JSON object")
    for key, high in (("step", MAX_STEP), ("images_seen", MAX_IMAGES_SEEN), ("world_size", 1 << 20)):
        value = meta.get(key)
        low = 1 if key == "world_size" else 0
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise CheckpointFormatError(
                f"{where}: {key} {value!r} is not a count in {low}..{high:,}; the checkpoint's metadata is damaged "
                "or was edited: resume an earlier checkpoint with --resume PATH (or --resume fresh to start over)"
            )
    named = _STEP_DIR.match(path.name)
    if named and int(named.group(1)) != meta["step"]:
        raise CheckpointFormatError(
            f"{where}: step {meta['step']:,} is not the step of its folder {path.name}; the checkpoint's metadata is "
            "damaged or was edited: resume an earlier checkpoint with --resume PATH (or --resume fresh to start over)"
        )


def _tensor_bytes(tree: Any) -> int:
    """Bytes of the tensors and arrays in a nested state (what its safetensors files hold, headers aside)."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, np.ndarray):
        return int(tree.nbytes)
    if isinstance(tree, dict):
        return sum(_tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_tensor_bytes(v) for v in tree)
    return 0


@contextlib.contextmanager
def _checkpoint_space(manager: CheckpointManager, final: Path, *parts: Any) -> Iterator[None]:
    """A full disk during a save: one line naming the checkpoints folder and the size of a whole checkpoint."""
    try:
        yield
    except DiskFullError:
        latest = manager.latest()
        kept = f"the last good checkpoint {latest.name} is intact" if latest else "no earlier checkpoint exists"
        raise disk_full(
            manager.root, f"checkpoint {final.name} ({kept})", sum(_tensor_bytes(p) for p in parts)
        ) from None


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file() and p.name != "meta.json"}


class CheckpointManager:
    """Save, find and load training checkpoints under `run_dir/checkpoints`, keeping the newest `keep`."""

    def __init__(self, run_dir: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1: the last good checkpoint is never deleted")
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    # ---------------------------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        images_seen: int,
        model: dict[str, torch.Tensor],
        ema: dict[str, torch.Tensor] | None = None,
        state: dict[str, Any] | None = None,
        rank_state: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Path:
        """Collective under torchrun: every rank calls it (each writes its own rank file).

        `model`, `ema` and `state` are taken from rank 0, which is the one that must hold them.
        """
        final = self.root / f"step-{step:08d}"
        rank, world = dist_utils.rank(), dist_utils.world_size()
        staging = self.root / f".staging-step-{step:08d}"
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        dist_utils.barrier()
        save_state(staging / f"rank-{rank:03d}", rank_state or {})
        dist_utils.barrier()
        if rank == 0:
            try:
                with (
                    _checkpoint_space(self, final, model, ema, state, rank_state),
                    atomic_directory(final, replace_whole=True) as tmp,
                ):
                    for p in staging.iterdir():
                        shutil.move(str(p), tmp / p.name)
                    save_tensors(tmp / "model.safetensors", model)
                    if ema is not None:
                        save_tensors(tmp / "ema.safetensors", ema)
                    save_state(tmp / "state", state or {})
                    info = {
                        "step": step,
                        "images_seen": images_seen,
                        "world_size": world,
                        "files": _file_sizes(tmp),
                        # verified at load: a same-size corruption must not resume silently
                        "sha256": {name: file_sha256(tmp / name) for name in _file_sizes(tmp)},
                        **(meta or {}),
                    }
                    # meta.json is written last: its presence marks a complete checkpoint.
                    atomic_write_text(tmp / "meta.json", json.dumps(info, indent=2, default=str))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            self._prune()
        dist_utils.barrier()
        return final

    def _prune(self) -> None:
        complete = self.list()
        for old in complete[: -self.keep]:
            # renamed first, so a kill during the deletion leaves a name that remove_debris() recognises
            doomed = old.with_name(f".{old.name}.pruning")
            if doomed.exists():  # a leftover of the same name would block the rename
                shutil.rmtree(doomed)
            os.rename(old, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def remove_debris(self) -> list[Path]:
        """Remove what killed saves and prunes left under `checkpoints/`; returns what was removed.

        Only names this class creates are touched: staging and temporary step folders, folders being pruned,
        `.step-N.old` copies whose `step-N` is complete (one is renamed back when a kill fell between the
        two renames of a replacement and left no `step-N`), and incomplete `step-N` folders older than the
        newest complete checkpoint (an older version deleted them in place). Call it only while holding the
        run folder's lock: a running save's temporary folder looks the same.
        """
        if not self.root.is_dir():
            return []
        removed = []
        for path in sorted(self.root.iterdir()):
            old = _OLD_DIR.match(path.name)
            if old and not (self.root / old.group(1)).exists() and self.is_complete(path):
                os.rename(path, self.root / old.group(1))
                log.warning("restored %s from %s (a replacement was interrupted)", old.group(1), path.name)
            elif path.is_dir() and (
                _STAGING_DIR.match(path.name)
                or _TMP_DIR.match(path.name)
                or _PRUNING_DIR.match(path.name)
                or (old and self.is_complete(self.root / old.group(1)))
            ):
                removed.append(path)
        complete = self.list()
        if complete:
            newest = int(_STEP_DIR.match(complete[-1].name).group(1))
            removed += [
                p
                for p in self.root.iterdir()
                if (m := _STEP_DIR.match(p.name))
                and p.is_dir()
                and int(m.group(1)) < newest
                and not self.is_complete(p)
            ]
        for path in removed:
            shutil.rmtree(path)
        if removed:
            log.warning(
                "removed %d incomplete checkpoint folder(s) left by an interrupted run under %s: %s",
                len(removed),
                self.root,
                ", ".join(sorted(p.name for p in removed)),
            )
        return removed

    # ---------------------------------------------------------------------------------------------------
    def is_complete(self, path: Path) -> bool:
        try:
            meta = json.loads((path / "meta.json").read_text())
            return all((path / name).stat().st_size == size for name, size in meta["files"].items())
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def list(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = sorted(
            (int(m.group(1)), p) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()
        )
        return [p for _, p in found if self.is_complete(p)]

    def latest(self) -> Path | None:
        complete = self.list()
        return complete[-1] if complete else None

    def load(self, path: str | Path | None = None, *, device: str | torch.device = "cpu") -> TrainingCheckpoint:
        """Load `path`, or the latest complete checkpoint when `path` is None."""
        if path is None:
            path = self.latest()
            if path is None:
                raise FileNotFoundError(f"no complete checkpoint under {self.root}")
        path = Path(path)
        if not self.is_complete(path):
            raise CheckpointFormatError(f"{path} is not a complete checkpoint (meta.json missing or file sizes differ)")
        meta = json.loads((path / "meta.json").read_text())
        _check_meta(path, meta)
        rank, world = dist_utils.rank(), dist_utils.world_size()
        if meta["world_size"] != world:
            raise CheckpointFormatError(
                f"{path} was written by {meta['world_size']} processes, this run has {world}; "
                "resume with the same number of processes (data position and RNG are per rank)"
            )
        ema_path = path / "ema.safetensors"
        self._verify_hashes(
            path,
            meta,
            [
                "model.safetensors",
                "ema.safetensors",
                "state.safetensors",
                "state.json",
                f"rank-{rank:03d}.safetensors",
                f"rank-{rank:03d}.json",
            ],
        )
        return TrainingCheckpoint(
            path=path,
            step=int(meta["step"]),
            images_seen=int(meta["images_seen"]),
            model=load_tensors(path / "model.safetensors", device),
            ema=load_tensors(ema_path, device) if ema_path.exists() else None,
            state=load_state(path / "state"),
            rank_state=load_state(path / f"rank-{rank:03d}"),
            meta=meta,
        )

    @staticmethod
    def _verify_hashes(path: Path, meta: dict[str, Any], names: list[str]) -> None:
        """Compare the files about to be loaded with the sha256 recorded at save time (older checkpoints have none)."""
        recorded = meta.get("sha256") or {}
        for name in names:
            if name in recorded and (path / name).exists() and file_sha256(path / name) != recorded[name]:
                raise CheckpointFormatError(
                    f"{path / name}: sha256 differs from the one recorded in meta.json when it was saved; the file is "
                    "corrupted. Resume from an earlier checkpoint with --resume PATH (or --resume fresh to start over)"
                )
