"""What both training loops share around their step: the run object. It owns the device and process group, the
micro-batch plan, the claimed run folder, resume, the cadences, the skip counters, the records and the final save;
the loop itself, its phases named as in NVlabs/edm2 training/training_loop.py, stays in the trainer:

    with TrainingRun.open(cfg.run, cfg, kind="diffusion", resume=resume, progress=progress) as run:
        # ---- setup: models, optimizers, EMA, and what a checkpoint holds
        state = CheckpointState(model=model, ema=ema, shared={"opt": optimizer})
        # ---- resume
        restore(state, run.resume())
        run.start(trainable_parameters=..., dataset_size=..., skip_counters=("skipped_steps",))
        # ---- loop
        while run.running:
            result = optimizer_step(...)                                   # evaluate loss, accumulate, step
            ema.update(model, run.images_total, batch_size, applied=result.applied_t)   # maintain EMA
            run.count_step({"skipped_steps": result.applied_t})            # the step's images and skips
            if run.report_due:                                             # report / evaluate / checkpoint
                run.report({"grad_norm": result.grad_norm_t})
            if run.grid_due:
                save_grid(run.grid_path())
            run.evaluate(ema.model)
            if run.checkpoint_due:
                run.save(state)
        return run.finish(state, export=...)

Every cadence counts images: one of N images is due at the step whose image count (step x batch_size) reaches the
next multiple of N. Every metrics.jsonl record has "step" and "images".

No host synchronisation between sync points (reports, checkpoints, the end): the exact image count (a batch may be
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
from vfmvae.checkpoint import CheckpointFormatError, CheckpointManager, capture_rng_state, restore_rng_state
from vfmvae.checkpoint.training import TrainingCheckpoint
from vfmvae.config import ConfigError, config_to_dict
from vfmvae.training.config import RunConfig
from vfmvae.training.exports import publish_export
from vfmvae.training.run_folder import claimed_run_folder, write_run_config
from vfmvae.training.run_log import RunLog, peak_memory, scalars_to_floats
from vfmvae.training.state import CheckpointState

__all__ = ["Evaluator", "TrainingRun", "TrainingStopped", "cadence_due", "micro_batch_plan"]


class TrainingStopped(RuntimeError):
    """The run stopped because its steps were skipped (non-finite); the message names the last good checkpoint."""


class Evaluator(Protocol):
    """An online evaluator: called on every rank after each step's report; returns a record to log, or None."""

    def maybe_run(self, *, model: nn.Module, step: int, images: int) -> dict[str, Any] | None: ...


def micro_batch_plan(run: RunConfig, world: int) -> tuple[int, int]:
    """(micro-batch per process and forward, accumulation steps) for `run.batch_size` over `world` processes."""
    micro = run.micro_batch or run.batch_size // world
    if micro < 1 or run.batch_size % (world * micro):
        raise ConfigError(
            f"run.batch_size {run.batch_size} is not a multiple of processes ({world}) x run.micro_batch ({micro})"
        )
    return micro, run.batch_size // (world * micro)


def cadence_due(every_images: int, step: int, batch_size: int) -> bool:
    """Whether step `step` (counted from 1) takes the image count step x batch_size to the next multiple of
    `every_images` (0 = never)."""
    return every_images > 0 and step * batch_size // every_images > (step - 1) * batch_size // every_images


class TrainingRun:
    """One training run: made by `TrainingRun.open`, driven by the trainer (see the module docstring)."""

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
        # images of the earlier stages this run continues (a tokenizer stage from `init`; None: a run of its own):
        # the EMA ramp-up continues from there, and checkpoints record it among the counters
        self.images_before: int | None = None
        self.counters: dict[str, int] = {}
        self.scalars: dict[str, torch.Tensor] = {}  # the step body's logged values, device tensors until reported
        self.last_record: dict[str, Any] | None = None
        self.report_due = False
        self.log: RunLog | None = None
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
        RNG; the trainer restores its own state from what is returned (`restore(state, run.resume())`)."""
        if self.resume_mode in ("none", "fresh") or (self.resume_mode == "auto" and self.manager.latest() is None):
            return None
        ckpt = self.manager.load(None if self.resume_mode == "auto" else self.resume_mode)
        self.step, self.images = ckpt.step, ckpt.images_seen
        self.counters = {k: int(v) for k, v in ckpt.state.get("counters", {}).items()}
        if "images_before_stage" in self.counters:
            self.images_before = self.counters.pop("images_before_stage")
        if "rng" not in ckpt.rank_state:
            raise CheckpointFormatError(
                f"{ckpt.path}: no RNG state for this rank; not a training checkpoint of vfmvae "
                "(resume a folder under RUN/checkpoints written by `vfmvae train`)"
            )
        restore_rng_state(ckpt.rank_state["rng"])  # the loops draw from per-step generators; this covers the rest
        dist_utils.print0(f"resumed from {ckpt.path} (step {self.step}, {self.images:,} images)")
        return ckpt

    def start(
        self,
        *,
        trainable_parameters: int,
        dataset_size: int | None,
        skip_counters: tuple[str, ...] = (),
        stop_label: str = "skipped steps",
        loss_key: str = "loss",
    ) -> None:
        """Start the loop: config.yaml, the header, the log, the bar and the device counters.

        `skip_counters` name the skip counters of `count_step`; the first counts towards the consecutive-skip stop
        (named `stop_label` in its message). `loss_key` is the scalar the progress bar shows."""
        from tqdm.auto import tqdm

        self.loss_key, self.skip_counters, self.stop_label = loss_key, skip_counters, stop_label
        for key in skip_counters:
            self.counters.setdefault(key, 0)
        self._skipped_before = self.counters[skip_counters[0]] if skip_counters else 0  # of the checkpoint resumed from
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
        self._counted = False  # whether count_step was given exact image counts
        self._skipped_t = torch.zeros(len(skip_counters), dtype=torch.int64, device=dev)  # since the last sync point
        self._run_t = torch.zeros((), dtype=torch.int64, device=dev)  # current run of consecutive skips
        self._longest_t = torch.zeros((), dtype=torch.int64, device=dev)  # longest such run since the last sync

    # ---------------------------------------------------------------------------------------------------- loop
    @property
    def running(self) -> bool:
        return self.images < self.cfg.total_images

    @property
    def finished(self) -> bool:
        return not self.running

    @property
    def images_total(self) -> int:
        """Images of this run and of the stages it continues (what the EMA ramp-up counts)."""
        return (self.images_before or 0) + self.images

    def count_step(self, skips: Mapping[str, torch.Tensor], images_t: torch.Tensor | None = None) -> None:
        """Count the optimizer step just taken: its images, and per skip counter whether it was applied.

        `skips` maps each skip counter to its step's `applied_t` (0-d device tensor, 1 = applied). `images_t`: this
        rank's images of the step (device tensor), when a batch can be short; summed over ranks. At a report or a
        checkpoint point, and when the nominal count reaches the end, the device counters are read back here: the
        loop's one host synchronisation (on every rank, so that every rank stops together)."""
        skipped = torch.stack([(skips[k] < 1).long().reshape(()) for k in self.skip_counters])
        self._skipped_t += skipped
        self._run_t = (self._run_t + 1) * skipped[0]
        self._longest_t = torch.maximum(self._longest_t, self._run_t)
        if images_t is not None:
            self._counted = True
            self._images_t += dist_utils.all_reduce_sum(images_t.to(torch.int64))
        self.images += self.cfg.batch_size
        self.step += 1
        self.bar.update(self.cfg.batch_size)
        self.report_due = self._due(self.cfg.log_every_images) or self.finished
        self._checkpoint_point = self._due(self.cfg.checkpoint_every_images)
        if self.report_due or self._checkpoint_point:
            self._read_back()

    def _due(self, every_images: int) -> bool:
        return cadence_due(every_images, self.step, self.cfg.batch_size)

    @property
    def grid_due(self) -> bool:
        """Whether to save a grid of the EMA model now (rank 0: grids are written by one process)."""
        every = self.cfg.grid_every_images
        return self.rank == 0 and every > 0 and (self._due(every) or self.finished)

    @property
    def checkpoint_due(self) -> bool:
        """Whether to save a checkpoint now (the last one is saved by `finish`)."""
        return self._checkpoint_point and not self.finished

    def grid_path(self) -> Path:
        return self.dir / "grids" / f"step-{self.step:08d}.png"

    def _read_back(self) -> None:
        values = torch.cat([self._images_t.reshape(1), self._skipped_t, self._longest_t.reshape(1)]).tolist()
        if self._counted:
            self.images = int(values[0])
        for key, n in zip(self.skip_counters, values[1:-1]):
            self.counters[key] += int(n)
        longest = int(values[-1])
        self._skipped_t.zero_()
        self._longest_t.copy_(self._run_t)
        if not self._counted:
            self._images_t.fill_(self.images)
        if self.skip_counters and longest >= self.cfg.max_consecutive_nonfinite:
            raise TrainingStopped(
                f"{longest} consecutive {self.stop_label} by step {self.step}; stopping. "
                f"The last good checkpoint is {self.manager.latest()}"
            )

    def report(self, fields: Mapping[str, Any] | None = None) -> None:
        """One metrics.jsonl record (rank 0): step, images, the step body's scalars, `fields`, the skip counters and
        the speed. Tensors among `fields` are read back here, with the scalars (call it on every rank)."""
        if self.rank != 0:
            return
        fields = dict(fields or {})
        # the step body's scalars and the tensors among `fields` stay on the device until here: one read-back
        values = scalars_to_floats({**self.scalars, **{k: v for k, v in fields.items() if torch.is_tensor(v)}})
        elapsed = time.perf_counter() - self._started
        steps = max(1, self.step - self._first_step)
        self.write_record(
            {
                "step": self.step,
                "images": self.images,
                **{k: values[k] for k in self.scalars},
                **{k: values[k] if torch.is_tensor(v) else v for k, v in fields.items()},
                **self.counters,
                "sec_per_step": elapsed / steps,
                "images_per_s": steps * self.cfg.batch_size / max(elapsed, 1e-9),
                **peak_memory(self.device),
            }
        )
        if self.loss_key in values:
            self.bar.set_postfix({self.loss_key: f"{values[self.loss_key]:.4f}"})

    def evaluate(self, model: nn.Module) -> None:
        """Hand `model` (the EMA) to the online evaluator, if any; it evaluates when its cadence is due (every rank
        takes part) and its record is logged."""
        if self.evaluator is None:
            return
        result = self.evaluator.maybe_run(model=model, step=self.step, images=self.images)
        if result is not None:
            self.write_record({"step": self.step, "images": self.images, **result})

    def write_record(self, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (rank 0; other ranks ignore it)."""
        if self.log is not None:
            self.log.write(record)
            self.last_record = record

    # ---------------------------------------------------------------------------------------------------- end
    def save(self, state: CheckpointState) -> None:
        """A checkpoint of `state` and of the run's own step, images, counters and RNG (collective: every rank)."""
        counters = dict(self.counters)
        if self.images_before is not None:
            counters["images_before_stage"] = self.images_before
        self.manager.save(
            self.step,
            images_seen=self.images,
            model=state.model_weights(),
            ema=state.ema_weights(),
            state={**state.shared_state(), "counters": counters},
            rank_state={**state.rank_state(), "rng": capture_rng_state()},
            meta={"config": config_to_dict(self.recipe)},
        )

    def finish(self, state: CheckpointState, export: Callable[[Path], None] | None = None) -> dict[str, Any]:
        """The final checkpoint, the export (rank 0: `export(RUN/export)`), the barrier and the footer. Returns the
        summary fields the run owns."""
        self.bar.close()
        if self.log is not None:
            self.log.close()
            self.log = None
        steps = self.step - self._first_step
        if self.skip_counters and steps > 0 and self.counters[self.skip_counters[0]] - self._skipped_before >= steps:
            # nothing was learned (NaN weights resumed, a poisoned checkpoint): an export would pass for a result
            raise TrainingStopped(
                f"every one of the {steps:,} steps of this run was skipped ({self.stop_label}), so no checkpoint or "
                "export is written; the last good checkpoint is "
                f"{self.manager.latest()}: check the weights it resumed or started from, the data and the learning rate"
            )
        self.save(state)
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
        bar, log = getattr(self, "bar", None), self.log
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()


def _hms(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
