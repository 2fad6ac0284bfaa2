"""`--launcher slurm`: one Slurm job per step, each after the jobs of its upstream steps (`afterok`), via submitit.

Each job runs the same function as the local launcher, for its one step (`run_step_job`): it loads the recipe,
checks that the step's upstream steps are done, and calls the step's command in-process on every task of the job
(a step that trains, caches or samples gets `nodes` x `gpus_per_node` tasks, one per GPU, with torch.distributed's
environment set from Slurm's; any other step one task). Records are written by rank 0, so `vfmvae pipeline status`
follows the jobs, and a job that is cancelled or times out is simply run again: its step continues or starts over
exactly as under the local launcher.

submitit keeps its own job files (the pickled call of `run_step_job` with the recipe path, the `--set` overrides
and the step name, and the jobs' logs) in OUT/.pipeline/slurm/; nothing else of ours is pickled.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vfmvae.pipeline.recipe import Pipeline, Step, load_pipeline
from vfmvae.pipeline.status import RECORDS

__all__ = ["SlurmLauncher", "job_parameters", "run_step_job"]


def job_parameters(step: Step, dependencies: Sequence[str] = ()) -> dict[str, Any]:
    """submitit (AutoExecutor) parameters of a step's job: its resources and its `afterok` dependencies."""
    res = step.resources
    gpus = res.gpus_per_node if step.distributed else 0
    params: dict[str, Any] = {
        "name": f"vfmvae-{step.name}",
        "nodes": res.nodes if step.distributed else 1,
        "tasks_per_node": gpus if step.distributed else 1,
        "gpus_per_node": gpus,
        "timeout_min": res.time_min,
        "slurm_partition": res.partition,
        "slurm_additional_parameters": dict(res.slurm),
    }
    if res.cpus_per_task is not None:
        params["cpus_per_task"] = res.cpus_per_task
    if dependencies:
        params["slurm_additional_parameters"]["dependency"] = "afterok:" + ":".join(dependencies)
    return {k: v for k, v in params.items() if v is not None}


def run_step_job(recipe: str, overrides: list[str], name: str, requested: bool) -> dict[str, Any]:
    """The body of one step's job (every task of it): run the step in this process and return its record."""
    from vfmvae.pipeline.runner import run_pipeline

    if os.environ.get("SUBMITIT_EXECUTOR"):  # inside a submitit job (not when called directly)
        _export_torch_environment()
    pipeline = load_pipeline(recipe, overrides)
    statuses = run_pipeline(pipeline, redo=[name] if requested else [], only=name)
    status = statuses[name]
    return {"step": name, "state": status.state, "reason": status.reason}


def _export_torch_environment() -> None:
    """RANK, WORLD_SIZE, MASTER_ADDR, ... from Slurm's task layout (for the steps that run on several GPUs)."""
    import submitit

    environment = submitit.JobEnvironment()
    if environment.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


@dataclass
class SlurmLauncher:
    """Submits the steps to run, in order, each job after its upstream steps' jobs.

    `cluster`: "slurm" on a cluster (the default: submitit's choice), "local" for submitit's local executor (tests,
    a workstation): it runs each job as local processes at once and cannot hold a job back, so the launcher waits
    for a job's upstream jobs to finish before submitting it."""

    pipeline: Pipeline
    recipe: str
    overrides: list[str]
    cluster: str | None = None

    def submit(self, names: Sequence[str], requested: set[str]) -> dict[str, Any]:
        import submitit

        folder = self.pipeline.out / RECORDS / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=self.cluster)
        if self.cluster is None and executor.cluster != "slurm":
            from vfmvae.pipeline.runner import PipelineError

            raise PipelineError(
                "--launcher slurm: no Slurm on this machine (sbatch not found); run on a Slurm login node, or "
                "use --launcher local"
            )
        holds_back = executor.cluster == "slurm"
        jobs: dict[str, Any] = {}
        for name in names:
            step = self.pipeline.step(name)
            upstream = [jobs[d] for d in step.deps if d in jobs]
            if not holds_back:
                for job in upstream:
                    job.result()  # raises if that step failed: its downstream steps are not submitted
            params = job_parameters(step, [job.job_id for job in upstream] if holds_back else ())
            if not holds_back:
                params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
            executor.update_parameters(**params)
            jobs[name] = executor.submit(run_step_job, self.recipe, list(self.overrides), name, name in requested)
            print(
                f"== {name}: job {jobs[name].job_id} ({params.get('nodes', 1)} node(s) x "
                f"{params.get('tasks_per_node', 1)} task(s)); logs in {folder}",
                flush=True,
            )
        return jobs
