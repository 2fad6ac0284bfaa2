"""Where each step stands: done (skipped by `run`), stale (why), or pending (never run, or interrupted).

A step's record (OUT/.pipeline/NAME.json, written by the runner) holds the settings it ran with, the digests of
what it read (each upstream step's outputs, each external input) and of what it wrote. The step is done when the
record says it finished and all of these still match; stale when one differs (its settings, an input, an upstream
step that is itself not done or ran again since, its outputs); pending when it never finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vfmvae.checkpoint.atomic import atomic_write_text
from vfmvae.pipeline.fingerprints import InputDigests, outputs_digest
from vfmvae.pipeline.recipe import Pipeline, Step

__all__ = ["RECORDS", "StepStatus", "pipeline_status", "read_record", "write_record", "settings_changes"]

RECORDS = ".pipeline"  # under the pipeline's `out`


def record_path(pipeline: Pipeline, name: str) -> Path:
    return pipeline.out / RECORDS / f"{name}.json"


def read_record(pipeline: Pipeline, name: str) -> dict[str, Any] | None:
    path = record_path(pipeline, name)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path}: not a pipeline record (unreadable JSON); delete it to run the step again") from None


def write_record(pipeline: Pipeline, name: str, record: dict[str, Any]) -> None:
    path = record_path(pipeline, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


@dataclass(frozen=True)
class StepStatus:
    state: Literal["done", "stale", "pending"]
    reason: str
    record: dict[str, Any] | None = None
    changed: tuple[str, ...] = ()  # settings that differ from the recorded ones ("set.run.total_images", ...)
    interrupted: bool = False  # started and never finished (killed, failed)
    details: dict[str, Any] = field(default_factory=dict)


def settings_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{"options.num-samples": (old, new), ...}: the settings that differ, one entry per option or --set key."""
    changes: dict[str, tuple[Any, Any]] = {}
    for section in ("program", "run", "args"):
        if old.get(section) != new.get(section):
            changes[section] = (old.get(section), new.get(section))
    for section in ("options", "set"):
        before, after = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(before) | set(after)):
            if before.get(key, "<unset>") != after.get(key, "<unset>"):
                changes[f"{section}.{key}"] = (before.get(key, "<unset>"), after.get(key, "<unset>"))
    return changes


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    shown = "; ".join(f"{key}: {a!r} -> {b!r}" for key, (a, b) in list(changes.items())[:4])
    return shown + (f" (and {len(changes) - 4} more)" if len(changes) > 4 else "")


def input_digests(step: Step, digests: InputDigests) -> dict[str, str]:
    return {str(path): digests.digest(path) for path in step.inputs}


def pipeline_status(pipeline: Pipeline, digests: InputDigests | None = None) -> dict[str, StepStatus]:
    """The status of every step, in order (each step's depends on its upstream steps')."""
    digests = digests or InputDigests(pipeline.out / RECORDS / "inputs.json")
    statuses: dict[str, StepStatus] = {}
    for step in pipeline.steps:
        statuses[step.name] = step_status(pipeline, step, statuses, digests)
    digests.save()
    return statuses


def step_status(pipeline: Pipeline, step: Step, upstream: dict[str, StepStatus], digests: InputDigests) -> StepStatus:
    record = read_record(pipeline, step.name)
    if record is None:
        return StepStatus("pending", "not run yet")
    changes = settings_changes(record.get("settings", {}), step.settings)
    changed = tuple(changes)
    if record.get("state") != "done":
        what = "failed" if record.get("state") == "failed" else "interrupted"
        if changes:
            return StepStatus(
                "stale", f"{what}, and its settings changed since: {describe_changes(changes)}", record, changed, True
            )
        how = "continues it" if step.kind.resumes else "starts it over"
        return StepStatus("pending", f"{what} (a run {how})", record, (), True)
    if changes:
        return StepStatus("stale", f"settings changed: {describe_changes(changes)}", record, changed)
    inputs = record.get("inputs", {})
    for dep in step.deps:
        dep_status = upstream[dep]
        if dep_status.state != "done":
            return StepStatus("stale", f"upstream step {dep} is {dep_status.state}", record)
        if inputs.get("steps", {}).get(dep) != (dep_status.record or {}).get("outputs_sha256"):
            return StepStatus("stale", f"upstream step {dep} ran again after this step", record)
    recorded = inputs.get("paths", {})
    for path, digest in input_digests(step, digests).items():
        if recorded.get(path) != digest:
            what = "is missing" if digest == "missing" else "changed" if path in recorded else "is new"
            return StepStatus("stale", f"input {path} {what}", record)
    missing = [str(p) for p in step.outputs if not p.exists()]
    if missing:
        return StepStatus("stale", f"output missing: {missing[0]}", record)
    if outputs_digest(step.outputs) != record.get("outputs_sha256"):
        return StepStatus("stale", "its outputs changed after it finished", record)
    return StepStatus("done", f"finished {record.get('finished', '?')}", record)
