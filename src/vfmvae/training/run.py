"""What both training loops share around their step body: one run object, in the phases of EDM2's loop
(NVlabs/edm2 training/training_loop.py: set up, resume, loop with cadenced log/grid/checkpoint, final save).

A trainer reads top to bottom as "build, then the step body":

    with TrainingRun.open(cfg.run, cfg, kind="diffusion", resume=resume, progress=progress) as run:
        model = ...; ema = EMA(...)                         # build (on run.device)
        ckpt = run.resume()                                  # None, or the checkpoint to restore from
        run.begin(model=model, ema=ema, dataset_size=..., save=save, grid=grid, loss_key="loss")
        while run.running:
            result = optimizer_step(...)                    # the step body
            run.end_step(skips={"skipped_steps": result.applied_t}, scalars=..., record=...)
        return run.finish(export=...)

The run object owns: device and process group, micro-batch arithmetic, the run folder (claimed, config.yaml),
the CheckpointManager, resume, the EMA update, the progress bar (images/s and the named loss), the log / grid /
checkpoint cadence, skip counters kept on the device and the stop after too many consecutive skipped steps,
metrics.jsonl records (always with "step" and "images"), the optional online evaluator, the final save, the export
and the closing barrier, and a header and footer on rank 0.

No host synchronisation between sync points (logging, checkpoints, the end): the exact image count (a batch may be
short by skipped files) and the skip counters stay on the device; in between the host plans with the nominal count
(batch_size per step), which never undercounts; the run ends only when a read-back count says so.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from vfmvae import distributed as dist_utils
from vfmvae.checkpoint import CheckpointFormatError, CheckpointManager, restore_rng_state
from vfmvae.checkpoint.training import TrainingCheckpoint
from vfmvae.config import ConfigError, config_to_dict
from vfmvae.training.config import RunConfig
from vfmvae.training.ema import EMA
from vfmvae.training.exports import publish_export
from vfmvae.training.run_folder import claimed_run_folder, write_run_config
from vfmvae.training.run_log import RunLog, peak_memory, scalars_to_floats

__all__ = ["Evaluator", "TrainingRun", "TrainingStopped", "micro_batch_plan"]


class TrainingStopped(RuntimeError):
    """The run stopped because its steps were skipped (non-finite); the message names the last good checkpoint."""


class Evaluator(Protocol):
    """An online evaluator: called on every rank after each step's logging; returns a record to log, or None."""

    def maybe_run(self, *, model: nn.Module, step: int, images: int) -> dict[str, Any] | None: ...


def micro_batch_plan(run: RunConfig, world: int) -> tuple[int, int]:
    """(micro-batch per process and forward, accumulation steps) for `run.batch_size` over `world` processes."""
    micro = run.micro_batch or run.batch_size // world
    if micro < 1 or run.batch_size % (world * micro):
        raise ConfigError(
            f"run.batch_size {run.batch_size} is not a multiple of processes ({world}) x run.micro_batch ({micro})"
        )
    return micro, run.batch_size // (world * micro)


class TrainingRun:
    """One training run: made by `TrainingRun.open`, driven by `resume`, `begin`, `end_step`, `save`, `finish`."""

    def __init__(
        self, cfg: RunConfig, recipe: Any, *, kind: str, resume: str, progress: bool, evaluator: Evaluator | None = None
    ) -> None:
        self.cfg, self.recipe, self.kind, self.resume_mode, self.progress = cfg, recipe, kind, resume, progress
        self.evaluator = evaluator
        self.device = dist_utils.init_distributed(device=cfg.device)  # the backend follows the device (NCCL / gloo)
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.micro, self.accum = micro_batch_plan(cfg, self.world)
        self.dir = Path(cfg.dir)
        self.manager = CheckpointManager(self.dir, keep=cfg.keep_checkpoints)
        self.step = 0
        self.images = 0  # images of this run (nominal between sync points, exact after one)
        self.images_before = 0  # images of earlier stages: the EMA ramp-up continues from there
        self.counters: dict[str, int] = {}
        self.scalars: dict[str, torch.Tensor] = {}  # the step body's logged values, device tensors until logged
        self.last_record: dict[str, Any] | None = None
        self._started_wall = time.perf_counter()

    # ---------------------------------------------------------------------------------------------------- set-up
    @classmethod
    @contextlib.contextmanager
    def open(
        cls,
        cfg: RunConfig,
        recipe: Any,
        *,
        kind: str,
        resume: str = "auto",
        progress: bool = True,
        evaluator: Evaluator | None = None,
    ) -> Iterator[TrainingRun]:
        """Claim the run folder (rank 0 locks and checks it before any rank starts) and set up the device."""
        dist_utils.init_distributed()
        with claimed_run_folder(cfg.dir, recipe, resume):
            run = cls(cfg, recipe, kind=kind, resume=resume, progress=progress, evaluator=evaluator)
            try:
                yield run
            finally:
                run._close()

    def resume(self) -> TrainingCheckpoint | None:
        """The checkpoint `--resume` asks for (None for a new run). Restores the run's step, images, counters and
        RNG; the trainer restores its own state (weights, optimizers, data position) from what is returned."""
        if self.resume_mode in ("none", "fresh") or (self.resume_mode == "auto" and self.manager.latest() is None):
            return None
        ckpt = self.manager.load(None if self.resume_mode == "auto" else self.resume_mode)
        self.step, self.images = ckpt.step, ckpt.images_seen
        self.counters = {k: int(v) for k, v in ckpt.state.get("counters", {}).items()}
        if "rng" not in ckpt.rank_state:
            raise CheckpointFormatError(
                f"{ckpt.path}: no RNG state for this rank; not a training checkpoint of vfmvae "
                "(resume a folder under RUN/checkpoints written by `vfmvae train`)"
            )
        restore_rng_state(ckpt.rank_state["rng"])  # the loops draw from per-step generators; this covers the rest
        dist_utils.print0(f"resumed from {ckpt.path} (step {self.step}, {self.images:,} images)")
        return ckpt

    def begin(
        self,
        *,
        model: nn.Module,
        ema: EMA,
        dataset_size: int | None,
        save: Callable[[], None],
        grid: Callable[[Path], None] | None = None,
        loss_key: str = "loss",
        skip_keys: tuple[str, ...] = (),
        stop_label: str = "skipped steps",
        images_before: int = 0,
        trainable_parameters: int | None = None,
    ) -> None:
        """Start the loop: config.yaml, the header, the log, the bar and the device counters.

        `save()` writes a checkpoint (collective), `grid(path)` a grid of the EMA model (rank 0); `skip_keys` name
        the skip counters of `end_step`, the first of which counts towards the consecutive-skip stop (named
        `stop_label` in its message)."""
        from tqdm.auto import tqdm

        self.model, self.ema, self._save, self._grid, self.loss_key = model, ema, save, grid, loss_key
        self.images_before = images_before
        for key in skip_keys:
            self.counters.setdefault(key, 0)
        self._skipped_before = self.counters[skip_keys[0]] if skip_keys else 0  # of the checkpoint resumed from
        self.skip_keys, self.stop_label = skip_keys, stop_label
        if trainable_parameters is None:
            trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if self.rank == 0:
            write_run_config(self.dir, self.recipe)
        cfg = self.cfg
        dataset = f"{dataset_size:,} images" if dataset_size is not None else "size unknown (a stream of shards)"
        dist_utils.print0(
            f"{self.kind} training: device {self.device}, {self.world} process(es), run folder {self.dir}, "
            f"dataset {dataset}, {trainable_parameters:,} trainable parameters, batch {cfg.batch_size} "
            f"= {self.world} x {self.micro} x {self.accum} (processes x micro-batch x accumulation), "
            f"{cfg.total_images:,} images ({cfg.total_steps:,} steps)"
        )
        self.log = RunLog(self.dir, tensorboard=cfg.tensorboard, x_key="images") if self.rank == 0 else None
        self.bar = tqdm(
            total=cfg.total_images,
            initial=self.images,
            desc=self.kind,
            unit="img",
            unit_scale=True,
            disable=not (self.progress and self.rank == 0),
        )
        self._first_step, self._started = self.step, time.perf_counter()
        dev = self.device
        self._images_t = torch.full((), self.images, dtype=torch.int64, device=dev)
        self._counted = False  # whether end_step was given exact image counts
        self._skipped_t = torch.zeros(len(skip_keys), dtype=torch.int64, device=dev)  # since the last sync point
        self._run_t = torch.zeros((), dtype=torch.int64, device=dev)  # current run of consecutive skips
        self._longest_t = torch.zeros((), dtype=torch.int64, device=dev)  # longest such run since the last sync

    # ---------------------------------------------------------------------------------------------------- loop
    @property
    def running(self) -> bool:
        return self.images < self.cfg.total_images

    @property
    def finished(self) -> bool:
        return not self.running

    def end_step(
        self,
        *,
        skips: Mapping[str, torch.Tensor],
        images_t: torch.Tensor | None = None,
        record: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        """After the step body: count the step, update the EMA, then log / grid / evaluate / checkpoint when due.

        `skips` maps each skip counter to its step's `applied_t` (0-d device tensor, 1 = applied); the first
        also gates the EMA update. `images_t`: this rank's images of the step (device tensor) when a batch can be
        short; summed over ranks here. `record()` returns the trainer's extra log fields (called when logging,
        on rank 0)."""
        cfg = self.cfg
        applied = [skips[k] for k in self.skip_keys]
        skipped = torch.stack([(a < 1).long().reshape(()) for a in applied])
        self._skipped_t += skipped
        self._run_t = (self._run_t + 1) * skipped[0]
        self._longest_t = torch.maximum(self._longest_t, self._run_t)
        if images_t is not None:
            self._counted = True
            self._images_t += dist_utils.all_reduce_sum(images_t.to(torch.int64))
        self.images += cfg.batch_size
        self.step += 1
        # a skipped step leaves the EMA as it is, without a host read; the ramp-up counts the images before this
        # batch (official cur_nimg at the G_ema update)
        seen_before = self.images_before + self.images - cfg.batch_size
        self.ema.update(self.model, seen_before, cfg.batch_size, applied=applied[0])
        self.bar.update(cfg.batch_size)
        log_now = self.step % cfg.log_every == 0 or self.finished
        checkpoint_now = self.step % cfg.checkpoint_every == 0
        if log_now or checkpoint_now:
            self._sync()
        if log_now:
            self._log(record)
        if (
            self.rank == 0
            and self._grid is not None
            and cfg.grid_every
            and (self.step % cfg.grid_every == 0 or self.finished)
        ):
            self._grid(self.dir / "grids" / f"step-{self.step:08d}.png")
        if self.evaluator is not None:
            result = self.evaluator.maybe_run(model=self.ema.model, step=self.step, images=self.images)
            if result is not None:
                self.write_record({"step": self.step, "images": self.images, **result})
        if checkpoint_now and not self.finished:
            self.save()

    def _sync(self) -> None:
        """The one host synchronisation of the loop (every rank, so that every rank stops together)."""
        values = torch.cat([self._images_t.reshape(1), self._skipped_t, self._longest_t.reshape(1)]).tolist()
        if self._counted:
            self.images = int(values[0])
        for key, n in zip(self.skip_keys, values[1:-1]):
            self.counters[key] += int(n)
        longest = int(values[-1])
        self._skipped_t.zero_()
        self._longest_t.copy_(self._run_t)
        if not self._counted:
            self._images_t.fill_(self.images)
        if self.skip_keys and longest >= self.cfg.max_consecutive_nonfinite:
            raise TrainingStopped(
                f"{longest} consecutive {self.stop_label} by step {self.step}; stopping. "
                f"The last good checkpoint is {self.manager.latest()}"
            )

    def _log(self, record: Callable[[], dict[str, Any]] | None) -> None:
        if self.rank != 0:
            return
        values = scalars_to_floats(self.scalars)  # logged values stay on the device until here
        elapsed = time.perf_counter() - self._started
        steps = max(1, self.step - self._first_step)
        self.write_record(
            {
                "step": self.step,
                "images": self.images,
                **values,
                **(record() if record else {}),
                **self.counters,
                "sec_per_step": elapsed / steps,
                "images_per_s": steps * self.cfg.batch_size / max(elapsed, 1e-9),
                **peak_memory(self.device),
            }
        )
        if self.loss_key in values:
            self.bar.set_postfix({self.loss_key: f"{values[self.loss_key]:.4f}"})

    def write_record(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (rank 0; other ranks ignore it)."""
        if self.log is not None:
            self.log.write(record)
            self.last_record = record

    # ---------------------------------------------------------------------------------------------------- end
    def save(self) -> None:
        """A checkpoint now (collective: every rank calls it)."""
        self._save()

    def finish(self, export: Callable[[Path], None] | None = None) -> dict[str, Any]:
        """Final checkpoint, the export (rank 0, into RUN/export) and the barrier; prints the footer. Returns
        the summary fields the run owns."""
        self.bar.close()
        if self.log is not None:
            self.log.close()
            self.log = None
        steps = self.step - self._first_step
        if self.skip_keys and steps > 0 and self.counters[self.skip_keys[0]] - self._skipped_before >= steps:
            # nothing was learned (NaN weights resumed, a poisoned checkpoint): an export would pass for a result
            raise TrainingStopped(
                f"every one of the {steps:,} steps of this run was skipped ({self.stop_label}), so no checkpoint or "
                "export is written; the last good checkpoint is "
                f"{self.manager.latest()}: check the weights it resumed or started from, the data and the learning rate"
            )
        self.save()
        path = self.dir / "export"
        if self.rank == 0 and export is not None:  # RUN/exports/images-N, RUN/export -> the newest (never replaced)
            publish_export(self.dir, self.images, export)
        dist_utils.barrier()
        wall = time.perf_counter() - self._started_wall
        dist_utils.print0(
            f"{self.kind} training finished: {self.step:,} steps, {self.images:,} images, wall time "
            f"{_hms(wall)} ({wall:.1f} s); export {path}"
        )
        return {
            "steps": self.step,
            "images": self.images,
            "export": str(path),
            **self.counters,
            "wall_s": round(wall, 3),
            "config": config_to_dict(self.cfg),
        }

    def _close(self) -> None:
        bar, log = getattr(self, "bar", None), getattr(self, "log", None)
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
