"""Run a pipeline's steps in order, in this process: each step is its command's own `main(argv)`.

Before anything runs, every step's status is known (vfmvae.pipeline.status): done steps are skipped, pending ones
run, and a stale step runs only when asked (`--redo STEP`, or `--from STEP` for it and everything downstream);
otherwise the run is refused with the reason and the option to pass, so the outputs of two settings are never
mixed. A step that runs again after a kill continues its work when its command resumes (training, caching,
sampling: their own checkpoints and finished items), and starts over otherwise. Starting over removes only what
the step wrote: its folder and its declared outputs, and only once its record shows that this pipeline made them.

Under torchrun (or a Slurm job of several tasks), `run_step` runs one step on every process; rank 0 keeps the
records.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.config import ConfigError
from vfmvae.pipeline.commands import entry_point
from vfmvae.pipeline.fingerprints import InputDigests, outputs_digest
from vfmvae.pipeline.recipe import Pipeline, Step
from vfmvae.pipeline.status import (
    RECORDS,
    StepStatus,
    input_digests,
    pipeline_status,
    read_record,
    settings_changes,
    step_status,
    write_record,
)

__all__ = ["PipelineError", "StepFailed", "requested_steps", "run_pipeline", "run_step", "write_summary"]

SUMMARY = "pipeline.json"  # under `out`: every step's command, status and time, for the report


class PipelineError(ConfigError):
    """A pipeline that cannot run as asked (a stale step not asked for, a folder it did not write)."""


class StepFailed(RuntimeError):
    def __init__(self, step: str, code: int, command: str) -> None:
        super().__init__(
            f"step {step} failed (exit code {code}): {command}; fix the cause and run the pipeline again: done "
            "steps are skipped and this one continues or starts over"
        )
        self.code = code


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _say(text: str) -> None:
    if _rank() == 0:
        print(text, flush=True)


def requested_steps(pipeline: Pipeline, redo: Iterable[str] = (), start: str | None = None) -> set[str]:
    """The steps to run even if done or stale: each `--redo STEP`, and `--from STEP` with every step downstream."""
    names = {pipeline.step(name).name for name in redo}
    if start is not None:
        names |= {pipeline.step(start).name, *pipeline.descendants(start)}
    return names


def check_runnable(pipeline: Pipeline, statuses: dict[str, StepStatus], requested: set[str]) -> None:
    """Refuse (before anything runs) when a stale step was not asked for."""
    blocked = [name for name, status in statuses.items() if status.state == "stale" and name not in requested]
    if not blocked:
        return
    first, rest = blocked[0], blocked[1:]
    others = f", and {', '.join(rest)} after it" if rest else ""
    raise PipelineError(
        f"stale, not run: {first} ({statuses[first].reason}){others}. Re-run on purpose with --from {first} "
        "(it and every step downstream) or --redo STEP, or restore the settings (vfmvae pipeline status RECIPE)"
    )


def check_new_folders(pipeline: Pipeline, statuses: dict[str, StepStatus]) -> None:
    """Refuse (before anything runs) a step whose folder or outputs hold files that this pipeline did not write: a
    step that never ran, or one whose folder or outputs moved (a changed `dir` or `out`) since its record."""
    for name, status in statuses.items():
        step = pipeline.step(name)
        written = _written_paths(status.record)
        for path in _owned_paths(step):
            if path in written:
                continue
            if path.is_file() or (path.is_dir() and any(path.iterdir())):
                raise PipelineError(
                    f"step {name}: {path} exists but this pipeline did not write it (the step's record in "
                    f"{pipeline.out / RECORDS} does not list it); move it away or give the step another folder "
                    f"(--set out=... or --set steps.{name}.dir=...)"
                )


def run_pipeline(
    pipeline: Pipeline, *, redo: Iterable[str] = (), start: str | None = None, only: str | None = None
) -> dict[str, StepStatus]:
    """Run every step that is not done (or one step: `only`), in order, in this process. Returns the statuses."""
    digests = InputDigests(pipeline.out / RECORDS / "inputs.json")
    statuses = pipeline_status(pipeline, digests)
    requested = requested_steps(pipeline, redo, start)
    if only is not None:
        step = pipeline.step(only)
        for dep in step.deps:
            if statuses[dep].state != "done":
                raise PipelineError(f"step {only} needs {dep}, which is {statuses[dep].state} ({statuses[dep].reason})")
        check_runnable(pipeline, {only: statuses[only]}, requested)
        check_new_folders(pipeline, {only: statuses[only]})
        run_step(pipeline, step, statuses[only], requested=only in requested, digests=digests)
        statuses[only] = step_status(pipeline, step, statuses, digests)
        write_summary(pipeline, statuses)
        return statuses
    check_runnable(pipeline, statuses, requested)
    check_new_folders(pipeline, statuses)
    ran = 0
    for step in pipeline.steps:
        status = step_status(pipeline, step, statuses, digests)  # again: an upstream step may have just run
        if status.state == "done" and step.name not in requested:
            _say(f"== {step.name}: done, skipped ({status.reason})")
            statuses[step.name] = status
            continue
        if status.state == "stale" and step.name not in requested:
            raise PipelineError(
                f"step {step.name} is now stale ({status.reason}); re-run it and every step after it with "
                f"--from {step.name}"
            )
        write_summary(pipeline, statuses)
        run_step(pipeline, step, status, requested=step.name in requested, digests=digests)
        statuses[step.name] = step_status(pipeline, step, statuses, digests)
        ran += 1
    write_summary(pipeline, statuses)
    digests.save()
    _say(
        f"pipeline {pipeline.source}: {ran} step(s) run, {len(pipeline.steps) - ran} skipped; outputs in {pipeline.out}"
    )
    return statuses


def _owned_paths(step: Step) -> list[Path]:
    return [step.dir, *(p for p in step.outputs if p != step.dir and not p.is_relative_to(step.dir))]


def _written_paths(record: dict[str, Any] | None) -> set[Path]:
    """The folder and outputs that the step's recorded run wrote (a record without them owns nothing)."""
    paths = (record or {}).get("paths")
    return {Path(p) for p in paths if isinstance(p, str)} if isinstance(paths, list) else set()


def _start_over(pipeline: Pipeline, step: Step, status: StepStatus, requested: bool) -> bool:
    """Whether the step's outputs are removed before it runs (else its command continues from them)."""
    # a folder or output that this pipeline did not write (never started, or moved since) must be new or empty:
    # nothing of anyone else is touched, even when the step starts over
    check_new_folders(pipeline, {step.name: status})
    if status.record is None:
        return False
    if not step.kind.resumes:
        return True
    if status.state == "pending":  # interrupted with the same settings: the command continues
        return False
    if status.state == "stale" and status.changed and set(status.changed) <= step.kind.continuable:
        return False  # e.g. a longer run.total_images: the trainer continues from its checkpoint
    return requested


def run_step(
    pipeline: Pipeline, step: Step, status: StepStatus, *, requested: bool, digests: InputDigests | None = None
) -> dict[str, Any]:
    """Run one step in this process (every process of a torchrun job); rank 0 writes its record."""
    from vfmvae import distributed as dist_utils

    digests = digests or InputDigests(pipeline.out / RECORDS / "inputs.json")
    distributed = dist_utils.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not step.distributed:
        raise PipelineError(f"step {step.name} runs as one process; run it without torchrun")
    rank = _rank()
    if distributed:
        dist_utils.init_distributed(device=step.settings["options"].get("device"))
    record: dict[str, Any] = {}
    if rank == 0:
        clear = _start_over(pipeline, step, status, requested)
        previous = status.record or {}
        if clear:
            written = _written_paths(status.record)
            for path in (p for p in _owned_paths(step) if p in written):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        upstream = {dep: (read_record(pipeline, dep) or {}).get("outputs_sha256") for dep in step.deps}
        record = {
            "name": step.name,
            "state": "running",
            "settings": step.settings,
            # every folder and output that runs of this step wrote (a moved `dir` keeps the old one): only these
            # are ever removed
            "paths": sorted({str(p) for p in _owned_paths(step)} | {str(p) for p in _written_paths(previous)}),
            "command": step.command_line(),
            "inputs": {"steps": upstream, "paths": input_digests(step, digests)},
            "started": _now(),
            # the time of the earlier runs whose work this one continues (a killed run, a run made longer)
            "seconds": 0.0 if clear else float(previous.get("seconds", 0.0)),
            "attempts": (0 if clear else int(previous.get("attempts", 0))) + 1,
        }
        write_record(pipeline, step.name, record)
        digests.save()
        changes = settings_changes(previous.get("settings", {}), step.settings) if previous else {}
        why = "starting over" if clear else "continuing" if previous else "new"
        _say(
            f"\n== [{step.index + 1}/{len(pipeline.steps)}] {step.name}: {step.title} ({why}"
            + (f"; changed: {', '.join(changes)}" if changes else "")
            + f")\n$ {step.command_line()}"
            + (f"\n  at scale: {step.torchrun_line()}" if step.distributed else "")
        )
    if distributed:
        dist_utils.barrier()
    started = time.perf_counter()
    try:
        code = _call(step)
    except BaseException as err:
        if rank == 0:
            _finish(pipeline, step, record, started, state="failed", error=f"{type(err).__name__}: {err}")
        raise
    if distributed:
        dist_utils.barrier()
    if rank != 0:
        if code:
            raise StepFailed(step.name, code, step.command_line())
        return {}
    if code:
        _finish(pipeline, step, record, started, state="failed", error=f"exit code {code}")
        raise StepFailed(step.name, code, step.command_line())
    missing = [str(p) for p in step.outputs if not p.exists()]
    if missing:
        _finish(pipeline, step, record, started, state="failed", error=f"outputs not written: {missing}")
        raise PipelineError(f"step {step.name} finished without writing {missing[0]} (its declared outputs)")
    return _finish(pipeline, step, record, started, state="done")


def _call(step: Step) -> int:
    main = entry_point(step.spec.program)
    try:
        return int(main(list(step.argv)) or 0)
    except SystemExit as exit_:  # a program that exits instead of returning its code
        return exit_.code if isinstance(exit_.code, int) else 1


def _finish(
    pipeline: Pipeline, step: Step, record: dict[str, Any], started: float, *, state: str, error: str | None = None
) -> dict[str, Any]:
    seconds = time.perf_counter() - started
    record = {**record, "state": state, "finished": _now(), "seconds": round(record.get("seconds", 0.0) + seconds, 3)}
    if state == "done":
        record["outputs_sha256"] = outputs_digest(step.outputs)
    if error:
        record["error"] = error
    write_record(pipeline, step.name, record)
    if state == "done":
        _say(f"   ({seconds:.1f} s)")
    return record


def write_summary(pipeline: Pipeline, statuses: dict[str, StepStatus]) -> Path | None:
    """OUT/pipeline.json: every step's command, status, time and result file (what `vfmvae report` shows)."""
    if _rank() != 0:
        return None
    by_name = {step.name: step for step in pipeline.steps}
    steps = []
    for step in pipeline.steps:
        status = statuses.get(step.name)
        record = (status.record if status else None) or {}
        result = None
        if step.result is not None:
            samples = [d for d in step.deps if by_name[d].spec.run == "sample"]
            result = {
                "json": step.result.json,
                "label": step.result.label,
                "paper": step.result.paper,
                "samples": str(by_name[samples[-1]].dir) if samples else None,
            }
        steps.append(
            {
                "name": step.name,
                "title": step.title,
                "command": step.command_line(),
                "torchrun": step.torchrun_line(),
                "full_scale": step.spec.full_scale,
                "status": status.state if status else "pending",
                "reason": status.reason if status else "",
                "seconds": record.get("seconds"),
                "finished": record.get("finished"),
                "dir": str(step.dir),
                "deps": list(step.deps),
                "result": result,
            }
        )
    path = pipeline.out / SUMMARY
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        path, json.dumps({"recipe": pipeline.source, "out": str(pipeline.out), "steps": steps}, indent=1) + "\n"
    )
    return path
