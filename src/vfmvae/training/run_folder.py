"""A training run folder belongs to one run: claim it (a lock), check it, and only then write into it.

`claim_run_folder` is called by rank 0 before a trainer writes anything. It refuses

* a second process on the same folder (an exclusive `flock` on `RUN/.lock`, held until the process exits;
  the kernel releases it when the process dies, so a killed run never leaves a stale lock);
* a recipe that differs from the folder's `config.yaml` in anything but the keys that may change on resume
  (lengths, logging and checkpoint intervals, device, workers, the `eval:` section), unless `--resume CHECKPOINT`
  names the checkpoint to continue on purpose (then a warning lists the changes), and a run of another kind;
* `--resume none` on a folder that already holds this run's outputs, unless `--resume fresh` asks to start
  over, which removes only this run's own outputs (RUN_OUTPUTS, each named in the `--resume` help);
* checkpoint folders that exist but none of which is complete (no `meta.json`): restarting from step 0
  would silently replace them.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.checkpoint.folder_lock import LOCK_NAME, RunFolderError, RunFolderLock, lock_output_folder
from vfmvae.checkpoint.training import CheckpointManager
from vfmvae.config import ConfigError, config_to_dict, dump_yaml, read_yaml

__all__ = [
    "FRESH_HELP",
    "RUN_OUTPUTS",
    "RunFolderError",
    "RunFolderLock",
    "LOCK_NAME",
    "lock_output_folder",
    "claim_run_folder",
    "claimed_run_folder",
    "write_run_config",
    "RESUMABLE_CHANGES",
]

# Recipe keys a resumed run may change: they do not alter what the trained weights are.
RESUMABLE_CHANGES = frozenset(
    {
        "run.dir",  # the folder itself, however it was spelled (relative to another working directory, ...)
        "run.total_images",
        "run.log_every_images",
        "run.grid_every_images",
        "run.checkpoint_every_images",
        "run.keep_checkpoints",
        "run.max_consecutive_nonfinite",
        "run.device",
        "run.tensorboard",
        "run.compile",
        "run.gradient_checkpointing",
        "run.micro_batch",
        "run.grid_steps",
        "run.grid_cfg",
        "run.grid_count",
        "data.num_workers",
        # evaluation draws from its own generators and restores the training RNG: its cadence changes no weight
        "eval.every_images",
        # the same settings under their names before RUN/grids and run length in images (config.yaml of older runs)
        "run.total_steps",
        "run.log_every",
        "run.grid_every",
        "run.checkpoint_every",
        "run.sample_every",
        "run.snapshot_every",
        "run.sample_steps",
        "run.sample_cfg",
        "run.sample_count",
    }
)
# Whole sections a resumed run may change: evaluation while training uses its own seeds and restores the training
# RNG, so the weights do not depend on it (tested); each evaluation point records its own protocol.
RESUMABLE_SECTIONS = ("eval.",)


def _resumable(key: str) -> bool:
    return key in RESUMABLE_CHANGES or key.startswith(RESUMABLE_SECTIONS)


# What a run writes into its folder, and `--resume fresh` removes (its help names each); nothing else is deleted.
# eval/ and best/ (evaluation while training) go too: a new run must not take the old run's evaluation points as done.
RUN_OUTPUTS = (
    "checkpoints",
    "metrics.jsonl",
    "grids",
    "export",
    "exports",
    "eval",
    "best",
    "tensorboard",
    "config.yaml",
)
# The grid folders of runs written before RUN/grids: they show that a folder holds a run, but `--resume fresh` keeps
# them, since a user's `vfmvae sample --out RUN/samples` would have the same name.
OLD_RUN_OUTPUTS = ("samples", "snapshots")
FRESH_HELP = (
    "fresh (delete this run's outputs in RUN - checkpoints/, metrics.jsonl, grids/, export, exports/, eval/, best/, "
    "tensorboard/, config.yaml - and start over; nothing else in RUN is touched)"
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: tree}


def _in_images(stored: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml of a run written when `eval.every` and `optim.warmup_steps` counted optimizer steps, with those
    two in images (x the run's batch size), so that resuming it compares like with like. (The run's own step
    cadences may change on resume anyway.)"""
    run = stored.get("run")
    batch = run.get("batch_size") if isinstance(run, dict) else None
    if not isinstance(batch, int):
        return stored
    upgraded = dict(stored)
    for section, old, new in (("eval", "every", "every_images"), ("optim", "warmup_steps", "warmup_images")):
        values = stored.get(section)
        if isinstance(values, dict) and isinstance(values.get(old), int):
            upgraded[section] = {(new if k == old else k): (v * batch if k == old else v) for k, v in values.items()}
    return upgraded


def _recipe_changes(stored: dict[str, Any], new: dict[str, Any], config_path: Path, *, explicit: bool) -> None:
    stored = _in_images(stored)
    if set(stored) != set(new):
        raise RunFolderError(
            f"{config_path} belongs to another kind of run (its sections: {', '.join(sorted(stored))}; this run's: "
            f"{', '.join(sorted(new))}); use another run.dir"
        )
    old_flat, new_flat = _flatten(stored), _flatten(new)
    changed = sorted(
        k
        for k in set(old_flat) | set(new_flat)
        if old_flat.get(k, "<unset>") != new_flat.get(k, "<unset>") and not _resumable(k)
    )
    evaluation = sorted(
        k
        for k in set(old_flat) | set(new_flat)
        if k.startswith(RESUMABLE_SECTIONS) and old_flat.get(k, "<unset>") != new_flat.get(k, "<unset>")
    )
    if evaluation and not changed:
        shown = "; ".join(f"{k}: {old_flat.get(k, '<unset>')!r} -> {new_flat.get(k, '<unset>')!r}" for k in evaluation)
        print(
            f"evaluation settings changed for this run ({shown}); points evaluated from now on use them (each "
            "point records its protocol in RUN/eval/records.jsonl); the trained weights do not depend on them",
            flush=True,
        )
    if changed:
        shown = "; ".join(f"{k}: {old_flat.get(k, '<unset>')!r} -> {new_flat.get(k, '<unset>')!r}" for k in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        if explicit:  # --resume CHECKPOINT: the user continues that checkpoint on purpose, with a changed recipe
            warnings.warn(
                f"continuing with a recipe that differs from {config_path}: {shown}{more}; config.yaml "
                "will record the new recipe",
                stacklevel=4,
            )
            return
        raise RunFolderError(
            f"the recipe differs from the run in {config_path}: {shown}{more}. A run folder belongs to one run: "
            "use another run.dir, pass --resume fresh to delete this run's outputs and start over, or name the "
            "checkpoint to continue with the changed recipe (--resume RUN/checkpoints/step-...)"
        )


def _holds_run_outputs(run_dir: Path) -> list[str]:
    names = (*RUN_OUTPUTS, *OLD_RUN_OUTPUTS)
    return [name for name in names if name != "config.yaml" and (run_dir / name).exists()]


def remove_run_outputs(run_dir: Path) -> list[str]:
    """`--resume fresh`: delete exactly the RUN_OUTPUTS entries of `run_dir`; returns the names removed."""
    removed = []
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_symlink() or path.is_file():  # RUN/export is a link to exports/images-N: remove the link
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(name)
    return removed


def claim_run_folder(run_dir: Path, config: Any, resume: str) -> RunFolderLock:
    """Lock and check `run_dir` for a run with `config`; returns the lock (keep it for the run's lifetime).

    Writes nothing but the lock file (and the folder) until every check has passed; `resume="fresh"` then
    removes the folder's own run outputs.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"run.dir {run_dir} is a file")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunFolderLock(run_dir)
    try:
        _check(run_dir, config, resume)
    except BaseException:
        lock.release()
        raise
    if resume == "fresh":
        removed = remove_run_outputs(run_dir)
        kept = [name for name in OLD_RUN_OUTPUTS if (run_dir / name).exists()]
        print(
            f"--resume fresh: removed {', '.join(removed) or 'nothing'} from {run_dir}"
            + (f"; kept {', '.join(kept)} (not written by this version of vfmvae)" if kept else ""),
            flush=True,
        )
    else:  # under the lock, so no save is running: what killed saves and prunes left is ours to remove
        CheckpointManager(run_dir).remove_debris()
    return lock


def _check(run_dir: Path, config: Any, resume: str) -> None:
    config_path = run_dir / "config.yaml"
    outputs = _holds_run_outputs(run_dir)
    if not config_path.is_file():
        if outputs and resume != "fresh":
            raise RunFolderError(
                f"{run_dir} holds {', '.join(outputs)} but no config.yaml, so it cannot be checked "
                "against this recipe; use another run.dir, or pass --resume fresh to start over"
            )
        return
    if resume == "fresh":
        return
    try:
        stored = read_yaml(config_path.read_text(), str(config_path)) or {}  # bounded: size, depth, aliases
    except ConfigError as err:
        raise RunFolderError(f"{err}; use another run.dir or --resume fresh") from None
    if not isinstance(stored, dict):
        raise RunFolderError(f"{config_path}: not a recipe (a mapping); use another run.dir or --resume fresh")
    _recipe_changes(stored, config_to_dict(config), config_path, explicit=resume not in ("auto", "none"))
    if resume == "none" and outputs:
        raise RunFolderError(
            f"--resume none, but {run_dir} already holds this run's {', '.join(outputs)}; continue it (--resume auto), "
            "pass --resume fresh to delete them and start over, or use another run.dir"
        )
    if resume == "auto":
        manager = CheckpointManager(run_dir)
        started = sorted(p.name for p in manager.root.glob("step-*")) if manager.root.is_dir() else []
        if started and manager.latest() is None:
            raise RunFolderError(
                f"{manager.root} holds {len(started)} checkpoint folder(s) ({', '.join(started[-3:])}) but none is "
                "complete (meta.json missing or file sizes differ); refusing to restart from step 0 over them. "
                "Resume one explicitly with --resume PATH, or pass --resume fresh to start over"
            )


@contextlib.contextmanager
def claimed_run_folder(run_dir: str | Path, config: Any, resume: str) -> Iterator[None]:
    """Rank 0 claims the folder (lock + checks) before any rank starts; the lock is released on exit."""
    if resume not in ("auto", "none", "fresh") and not Path(resume).is_dir():
        raise RunFolderError(f"--resume {resume!r}: expected auto, none, fresh or a checkpoint folder")
    lock = claim_run_folder(Path(run_dir), config, resume) if dist_utils.rank() == 0 else None
    dist_utils.barrier()
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def write_run_config(run_dir: Path, config: Any) -> None:
    """`RUN/config.yaml`, written once the checks have passed and the run is about to start."""
    atomic_write_text(Path(run_dir) / "config.yaml", dump_yaml(config))
